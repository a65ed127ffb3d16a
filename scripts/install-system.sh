#!/usr/bin/env bash
# Installs the system pieces the project needs on a fresh Debian 12 machine (idempotent, fast when
# everything is already there: no network access at all on a second run):
#   - gVisor's runsc: the 2024 build from Debian trixie (systrap platform, ~20x faster than ptrace on
#     syscall-heavy code) into .tools/bin/runsc, taken with a private apt list dir so the system's apt
#     sources are never changed; Debian bookworm's runsc (2022, ptrace only) as the fallback;
#   - python3 with venv (python3-venv) for the project's .venv (scripts/bootstrap.sh), debootstrap, make, git.
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
command -v make >/dev/null 2>&1 || need_apt+=(make)  # a minimal Debian 12 has neither make nor git
command -v git >/dev/null 2>&1 || need_apt+=(git)
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
# cgroups: the local executor puts every sandbox in a cgroup with memory, pids and cpu limits
# (shim/tako_shim/backends/local/cgroups.py). Check what the host offers; the server repeats this check at start-up.
cgroup_fs="$(stat -f -c %T /sys/fs/cgroup 2>/dev/null || echo none)"
if [ "$cgroup_fs" = cgroup2fs ]; then
    offered="$(cat /sys/fs/cgroup/cgroup.controllers 2>/dev/null || true)"
    missing=""
    for controller in memory pids cpu; do
        case " $offered " in *" $controller "*) ;; *) missing="$missing $controller" ;; esac
    done
    if [ -n "$missing" ]; then
        say "WARNING: cgroup v2 without the${missing} controller(s) (cgroup.controllers: ${offered:-empty});" >&2
        say "the local executor needs memory, pids and cpu (strict mode refuses to start without them)" >&2
    elif [ -d /run/systemd/system ] && ! command -v systemd-run >/dev/null 2>&1; then
        say "WARNING: cgroup v2 under systemd but no systemd-run: run the server with" >&2
        say "packaging/systemd/tako-vm.service (Delegate=yes) so that it has a cgroup of its own" >&2
    else
        say "cgroups: v2 (unified) with memory, pids and cpu; the server runs in a delegated cgroup" \
            "(make server: systemd-run --scope -p Delegate=yes; or packaging/systemd/tako-vm.service)"
    fi
else
    missing=""
    for controller in memory pids cpu; do
        [ -d "/sys/fs/cgroup/$controller" ] || missing="$missing $controller"
    done
    kind=v1
    [ "$(stat -f -c %T /sys/fs/cgroup/unified 2>/dev/null || true)" = cgroup2fs ] && kind=hybrid
    if [ -n "$missing" ]; then
        say "WARNING: no cgroup v1 controller(s)${missing} under /sys/fs/cgroup (filesystem: $cgroup_fs);" >&2
        say "the local executor needs memory, pids and cpu (strict mode refuses to start without them)" >&2
    else
        say "cgroups: $kind with memory, pids and cpu"
    fi
fi
