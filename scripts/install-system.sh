#!/usr/bin/env bash
# Installs the system pieces the project needs on a fresh Debian 12 machine (idempotent, fast when
# everything is already there: no network access at all on a second run):
#   - gVisor's runsc: the 2024 build from Debian trixie (systrap platform, ~20x faster than ptrace on
#     syscall-heavy code) into .tools/bin/runsc, taken with a private apt list dir so the system's apt
#     sources are never changed; Debian bookworm's runsc (2022, ptrace only) as the fallback;
#   - python3 with venv (python3-venv) for the project's .venv (scripts/bootstrap.sh), and debootstrap.
#     Sandboxes never use the host's Python or /usr: they bind the project's own root filesystem, which
#     scripts/build-rootfs.sh builds (Debian bookworm + python3, python3-pip; see docs/sandbox.md).
# Environment: TAKO_RUNSC_RETRY=1 retries the trixie download when a previous run fell back to bookworm.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
tools="$root/.tools"
mkdir -p "$tools/bin"
say() { echo "install-system: $*"; }

if ! command -v apt-get >/dev/null 2>&1; then
    say "apt-get not found: this script supports Debian/Ubuntu. Install runsc (gVisor) and python3 with pip" >&2
    say "yourself and put runsc on PATH (or set TAKO_VM_RUNSC)." >&2
    exit 1
fi

need_apt=()
[ -x /usr/bin/python3 ] || need_apt+=(python3)
has_venv='import importlib.util, sys; sys.exit(importlib.util.find_spec("ensurepip") is None)'
python3 -c "$has_venv" >/dev/null 2>&1 || need_apt+=(python3-venv)
[ -x /usr/bin/runsc ] || need_apt+=(runsc)
[ -x /usr/sbin/debootstrap ] || need_apt+=(debootstrap)
if [ ${#need_apt[@]} -gt 0 ]; then
    say "apt-get install ${need_apt[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

have_trixie_runsc() {
    [ -x "$tools/bin/runsc" ] && [ ! -L "$tools/bin/runsc" ] && "$tools/bin/runsc" --version >/dev/null 2>&1
}

if ! have_trixie_runsc && { [ ! -e "$tools/bin/runsc" ] || [ "${TAKO_RUNSC_RETRY:-0}" = 1 ]; }; then
    work="$tools/trixie"
    rm -rf "$work"
    mkdir -p "$work/lists/partial" "$work/cache/archives/partial" "$work/x"
    echo 'deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian trixie main' \
        > "$work/sources.list"
    # apt verifies the package against the signed trixie index (debian-archive-keyring).
    opts=(-o "Dir::Etc::SourceList=$work/sources.list" -o Dir::Etc::SourceParts=/nonexistent
          -o "Dir::State::Lists=$work/lists" -o "Dir::Cache=$work/cache")
    if apt-get "${opts[@]}" update -qq >/dev/null 2>&1 \
        && (cd "$work" && apt-get "${opts[@]}" download runsc >/dev/null 2>&1) \
        && dpkg -x "$work"/runsc_*.deb "$work/x" \
        && "$work/x/usr/bin/runsc" --version >/dev/null 2>&1; then
        rm -f "$tools/bin/runsc"
        install -m 0755 "$work/x/usr/bin/runsc" "$tools/bin/runsc"
        say "runsc (Debian trixie build, systrap) -> $tools/bin/runsc"
    else
        say "trixie runsc unavailable; using Debian bookworm's /usr/bin/runsc (ptrace platform, slower)" >&2
        ln -sfn /usr/bin/runsc "$tools/bin/runsc"
    fi
    rm -rf "$work"
fi

version="$("$tools/bin/runsc" --version 2>&1)" || { say "runsc at $tools/bin/runsc does not run" >&2; exit 1; }
say "${version%%$'\n'*}"
if [ ! -d /sys/fs/cgroup/memory ]; then
    say "WARNING: no cgroup v1 memory controller at /sys/fs/cgroup/memory; the local executor's memory" >&2
    say "limits and OOM detection need it (cgroup v2-only hosts are not supported yet)" >&2
fi
