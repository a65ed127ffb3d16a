#!/usr/bin/env bash
# Builds the sandboxes' root filesystem once (idempotent: instant when this recipe's tree exists):
# Debian bookworm minbase + python3, python3-pip, ca-certificates, by debootstrap from Debian's
# packages, into /var/cache/tako-vm/rootfs/<recipe hash> (outside the checkout, shared by every checkout
# of the same recipe on this machine). The recipe and the build are shim/tako_shim/local/rootfs.py;
# its sha256 is the <recipe hash>, so changing it builds a new tree. See docs/sandbox.md.
# Arguments go to `rootfs.py build` (--dest DIR, --mirror URL; env TAKO_VM_ROOTFS_MIRROR).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
say() { echo "build-rootfs: $*"; }
if [ "$(id -u)" != 0 ]; then
    say "must run as root (debootstrap, and the local executor itself, need root)" >&2
    exit 1
fi
export PATH="$PATH:/usr/sbin:/sbin"
if ! command -v debootstrap >/dev/null 2>&1; then
    if ! command -v apt-get >/dev/null 2>&1; then
        say "debootstrap not found and no apt-get to install it: install debootstrap, or build a root" >&2
        say "filesystem yourself and set rootfs_path (TAKO_VM_ROOTFS_PATH); see docs/sandbox.md" >&2
        exit 1
    fi
    say "apt-get install debootstrap"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null
fi
python=/usr/bin/python3
[ -x "$python" ] || python="$(command -v python3)"
exec "$python" "$root/shim/tako_shim/local/rootfs.py" build "$@"
