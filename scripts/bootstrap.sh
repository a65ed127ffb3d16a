#!/usr/bin/env bash
# Creates .venv with the project and its pinned dependencies (constraints.txt). Idempotent.
#   bash scripts/bootstrap.sh [EXTRAS]     EXTRAS: comma-separated extras of pyproject.toml,
#                                          default all,dev (what the tests need); `make server` passes server.
# The extras installed so far are remembered in .venv/.installed: asking for more (e.g. `make test` after
# `make server`) installs the union; asking for fewer never removes anything.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
wanted="${1:-all,dev}"
case "$wanted" in
    *[!a-z0-9,_-]*|"") echo "bootstrap.sh: extras must be a comma-separated list of names, got '$wanted'" >&2; exit 2 ;;
esac
# A .venv whose pip does not run (e.g. `python3 -m venv` failed half-way for want of python3-venv, or the
# python it points at is gone) is made again, not reused: its stamp would otherwise skip the install.
if [ -e .venv ] && ! .venv/bin/python -m pip --version >/dev/null 2>&1; then
    echo "bootstrap.sh: .venv is broken (.venv/bin/python -m pip --version fails); recreating it" >&2
    rm -rf .venv
fi
if [ ! -e .venv ]; then
    if ! python3 -m venv .venv; then
        rm -rf .venv
        echo "bootstrap.sh: python3 -m venv failed; install python3-venv (apt-get install python3-venv," \
            "or run scripts/install-system.sh) and try again" >&2
        exit 1
    fi
fi
stamp=.venv/.installed
have=""
if [ -f "$stamp" ]; then
    have="$(head -n1 "$stamp")"
    have="${have:-all,dev}"  # an empty stamp: written by the bootstrap.sh that always installed all,dev
fi
union="$(printf '%s\n' ${have//,/ } ${wanted//,/ } | sort -u | paste -sd, -)"
if [ ! -f "$stamp" ] || [ "$union" != "$have" ] || [ pyproject.toml -nt "$stamp" ] || [ constraints.txt -nt "$stamp" ]; then
    .venv/bin/python -m pip install -q --upgrade pip
    .venv/bin/python -m pip install -q -c constraints.txt -e ".[$union]"
    echo "$union" > "$stamp"
fi
