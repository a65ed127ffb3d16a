#!/usr/bin/env bash
# Builds the sandboxes' root filesystem once (idempotent: instant, no network, when this recipe's tree
# exists): Debian bookworm minbase + python3, python3-pip, ca-certificates, by debootstrap from Debian's
# packages (signatures checked against debian-archive-keyring), into /var/cache/tako-vm/rootfs/<recipe
# hash>, outside the checkout and shared by every checkout of the same recipe on this machine. The recipe
# and the build are shim/tako_shim/backends/local/rootfs.py; its sha256 is the <recipe hash>, so changing it builds
# a new tree. Installs debootstrap and debian-archive-keyring with apt-get when missing. docs/sandbox.md.
# Arguments go to `rootfs.py build` (--dest DIR, --mirror URL; env TAKO_VM_ROOTFS_MIRROR).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
recipe="$root/shim/tako_shim/backends/local/rootfs.py"
say() { echo "build-rootfs: $*"; }
if [ "$(id -u)" != 0 ]; then
    say "must run as root (debootstrap, and the local executor itself, need root)" >&2
    exit 1
fi
export PATH="$PATH:/usr/sbin:/sbin"
python=/usr/bin/python3
[ -x "$python" ] || python="$(command -v python3)"
if [ $# -eq 0 ] && [ -f "$("$python" "$recipe" path)/tako-rootfs.json" ]; then
    exec "$python" "$recipe" build  # already built: says so, touches nothing
fi
need=()
command -v debootstrap >/dev/null 2>&1 || need+=(debootstrap)
[ -f /usr/share/keyrings/debian-archive-keyring.gpg ] || need+=(debian-archive-keyring)  # e.g. on Ubuntu
if [ ${#need[@]} -gt 0 ]; then
    if ! command -v apt-get >/dev/null 2>&1; then
        say "${need[*]} not found and no apt-get to install it: install it, or build a root filesystem" >&2
        say "yourself and set rootfs_path (TAKO_VM_ROOTFS_PATH); see docs/sandbox.md" >&2
        exit 1
    fi
    say "apt-get install ${need[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi
exec "$python" "$recipe" build "$@"
