#!/usr/bin/env bash
# Installs the system pieces the project needs on a fresh Debian 12 machine (idempotent):
#   - gVisor's runsc: the 2024 build from Debian trixie (systrap platform) into .tools/bin/runsc,
#     without touching the system's apt sources; Debian bookworm's runsc as the fallback;
#   - the Python that sandboxes run: Debian's /usr/bin/python3 with pip (python3-pip), bound
#     read-only into every sandbox (see docs/sandbox.md).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
tools="$root/.tools"
mkdir -p "$tools/bin"

need_apt=()
[ -x /usr/bin/python3 ] || need_apt+=(python3)
/usr/bin/python3 -m pip --version >/dev/null 2>&1 || need_apt+=(python3-pip)
command -v runsc >/dev/null 2>&1 || need_apt+=(runsc)
if [ ${#need_apt[@]} -gt 0 ]; then
    echo "install-system: apt-get install ${need_apt[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

if [ ! -x "$tools/bin/runsc" ] || ! "$tools/bin/runsc" --version >/dev/null 2>&1; then
    work="$tools/trixie"
    rm -rf "$work"
    mkdir -p "$work/lists/partial" "$work/cache/archives/partial" "$work/x"
    echo 'deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian trixie main' \
        > "$work/sources.list"
    opts=(-o "Dir::Etc::SourceList=$work/sources.list" -o Dir::Etc::SourceParts=/nonexistent
          -o "Dir::State::Lists=$work/lists" -o "Dir::Cache=$work/cache")
    if apt-get "${opts[@]}" update -qq >/dev/null 2>&1 \
        && (cd "$work" && apt-get "${opts[@]}" download runsc >/dev/null 2>&1) \
        && dpkg -x "$work"/runsc_*.deb "$work/x" \
        && "$work/x/usr/bin/runsc" --version >/dev/null 2>&1; then
        cp "$work/x/usr/bin/runsc" "$tools/bin/runsc"
        echo "install-system: runsc (trixie, systrap) -> $tools/bin/runsc"
    else
        echo "install-system: trixie runsc unavailable; using Debian bookworm's /usr/bin/runsc (ptrace)" >&2
        ln -sf /usr/bin/runsc "$tools/bin/runsc"
    fi
    rm -rf "$work"
fi
"$tools/bin/runsc" --version | head -1
