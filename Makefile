# The two commands a newcomer needs (see README.md):
#   make server   install runsc and a venv with the server's runtime extra, start `tako-vm server`
#                 (127.0.0.1:8000; make server PORT=8080 HOST=127.0.0.1)
#   make test     install everything plus the dev extra and run the whole suite (lint, types, import contracts, tests)
#   make test-vm  the pre-release proof on a fresh Debian 12 VM (systemd, cgroup v2); docs/sandbox.md
.PHONY: setup server test lint unit bench test-vm reference-setup

PY := .venv/bin
export PATH := $(CURDIR)/.tools/bin:$(PATH)

# Extras installed into .venv: the server's runtime only (`make server EXTRAS=all` adds the kubernetes backend's).
EXTRAS ?= server
PORT ?=
HOST ?=
SERVER_FLAGS := $(if $(PORT),--port $(PORT)) $(if $(HOST),--host $(HOST))
# On a cgroup v2 host under systemd, the server (and the test suite, which starts sandboxes itself) runs in a
# scope of its own with its cgroup delegated (docs/sandbox.md); elsewhere it runs as is.
OWN_CGROUP := $(shell if [ -f /sys/fs/cgroup/cgroup.controllers ] && [ -d /run/systemd/system ] \
	&& [ "$$(id -u)" = 0 ] && command -v systemd-run >/dev/null 2>&1; then \
	echo "systemd-run --scope --quiet --collect -p Delegate=yes --"; fi)

setup:
	bash scripts/install-system.sh
	bash scripts/bootstrap.sh $(EXTRAS)
	bash scripts/build-rootfs.sh

server: setup
	$(OWN_CGROUP) $(PY)/tako-vm server $(SERVER_FLAGS)

lint:
	$(PY)/ruff check .
	$(PY)/ruff format --check .
	$(PY)/mypy
	$(PY)/lint-imports

# The real-API-server tier (tests/unit/test_crd_apiserver.py) needs apiextensions-apiserver: built once
# from Debian's Go source packages by scripts/apiserver.sh and cached outside the tree (docs/crds.md).
# A failed build leaves the variable empty: the tier then skips, or fails under CI=true.
test: EXTRAS = all,dev
test: setup lint
	bash scripts/install-browser.sh
	TAKO_APIEXTENSIONS_APISERVER="$$(bash scripts/apiserver.sh | tail -n 1)" $(OWN_CGROUP) $(PY)/pytest -q -ra

bench: EXTRAS = all,dev
bench: setup  # make bench BENCH_ARGS=--quick (or --only queue ...)
	$(OWN_CGROUP) $(PY)/python -m bench $(BENCH_ARGS)

# The reference Tako VM 0.3.0 (podman + runsc, PostgreSQL) for `python -m bench --only reference`
# (bench/reference.py); as root, idempotent; docs/performance.md.
reference-setup: setup
	bash scripts/setup-reference.sh

test-vm:  # as root; boots a fresh Debian 12 guest under QEMU and runs the cgroup v2 checks in it
	bash scripts/test-in-fresh-vm.sh
