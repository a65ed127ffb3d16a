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
if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv
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
