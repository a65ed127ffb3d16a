# The two commands a newcomer needs (see README.md):
#   make server   install everything (runsc, venv) and start `tako-vm server` on 127.0.0.1:8000
#   make test     install everything and run the whole suite (lint, types, import contracts, tests)
#   make test-vm  the pre-release proof on a fresh Debian 12 VM (systemd, cgroup v2); docs/sandbox.md
.PHONY: setup server test lint unit bench test-vm

PY := .venv/bin
export PATH := $(CURDIR)/.tools/bin:$(PATH)

setup:
	bash scripts/install-system.sh
	bash scripts/bootstrap.sh

server: setup
	$(PY)/tako-vm server

lint:
	$(PY)/ruff check .
	$(PY)/ruff format --check .
	$(PY)/mypy
	$(PY)/lint-imports

test: setup lint
	$(PY)/pytest -q -ra

bench: setup  # make bench BENCH_ARGS=--quick (or --only queue ...)
	$(PY)/python -m bench $(BENCH_ARGS)

test-vm:  # as root; boots a fresh Debian 12 guest under QEMU and runs the cgroup v2 checks in it
	bash scripts/test-in-fresh-vm.sh
