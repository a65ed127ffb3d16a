#!/usr/bin/env bash
# `make test-vm`: proves the local server on a genuinely fresh Debian 12 host with systemd as PID 1 and
# the cgroup v2 unified hierarchy (what users have; the build machines are cgroup v1 without systemd).
# Boots a QEMU guest (TCG emulation: KVM hangs here under nested virtualisation) from Debian's own
# packages, runs scripts/vm/guest-run.sh in it as root on a git clone of this tree's HEAD (the README's
# `make server`, print(6*7) through the SDK, the memory / fork-bomb / timeout attacks, the sandbox test
# tier and the cgroup unit tests), powers it off, prints a short summary and exits non-zero on any
# failure. See docs/sandbox.md "Proof on a cgroup v2 host" for what it runs and how long it takes.
#
# Run as root on Debian/Ubuntu. Installs qemu-system-x86, qemu-utils, debootstrap and e2fsprogs with
# apt when missing. The guest's kernel (linux-image-amd64) goes into the guest's root only.
# The base image is built once and cached in $TAKO_VM_TEST_CACHE (default /var/cache/tako-vm-test),
# keyed by the sha256 of scripts/vm/build-base-image.sh; every run boots a fresh qcow2 overlay of it.
# Environment:
#   TAKO_VM_TEST_CACHE            cache directory (base images, runs/ with each run's logs)
#   TAKO_VM_TEST_TIMEOUT_MINUTES  the host kills the guest after this long (default 150)
#   TAKO_VM_TEST_KEEP_DISK=1      keep the run's disk overlay (to inspect the guest afterwards)
# Exit: 0 every step passed; 1 a step failed, the guest died or timed out; 2 usage / host problem.
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
cache="${TAKO_VM_TEST_CACHE:-/var/cache/tako-vm-test}"
timeout_minutes="${TAKO_VM_TEST_TIMEOUT_MINUTES:-150}"
say() { echo "test-vm: $*"; }
die() { echo "test-vm: $*" >&2; exit 2; }

[ "$(id -u)" = 0 ] || die "run as root (debootstrap and the image build need it)"
[[ "$timeout_minutes" =~ ^[1-9][0-9]*$ ]] || die "TAKO_VM_TEST_TIMEOUT_MINUTES must be a positive integer, got '$timeout_minutes'"
need=()
command -v qemu-system-x86_64 > /dev/null || need+=(qemu-system-x86)
command -v qemu-img > /dev/null || need+=(qemu-utils)
command -v debootstrap > /dev/null || need+=(debootstrap)
command -v mkfs.ext4 > /dev/null || need+=(e2fsprogs)
if [ ${#need[@]} -gt 0 ]; then
    command -v apt-get > /dev/null || die "needs ${need[*]} (apt-get not found: install them yourself)"
    say "apt-get install ${need[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" > /dev/null
fi

# --- the base image (cached by recipe hash) -------------------------------------------------------
recipe="$repo/scripts/vm/build-base-image.sh"
key="$(sha256sum "$recipe" | cut -c1-16)"
base="$cache/base-$key"
mkdir -p "$cache/runs"
exec 9> "$cache/.build.lock"
flock 9  # one build at a time; a second run waits for it, then uses the image
if [ ! -f "$base/base.qcow2" ]; then
    say "building the base image $base (debootstrap bookworm from deb.debian.org; minutes)"
    started=$(date +%s)
    bash "$recipe" "$base"
    say "base image built in $(($(date +%s) - started)) s ($(tr '\n' ' ' < "$base/build-times"))"
else
    say "base image $base (cached; built with: $(tr '\n' ' ' < "$base/build-times"))"
fi
flock -u 9

# --- this run: a fresh overlay, the tree at HEAD, the guest script ------------------------------
run="$cache/runs/$(date -u +%Y%m%dT%H%M%SZ)-$$"
mkdir -p "$run/share/results"
qemu-img create -q -f qcow2 -b "$base/base.qcow2" -F qcow2 "$run/disk.qcow2"
commit="$(git -C "$repo" rev-parse HEAD)"
git -C "$repo" bundle create "$run/share/tree.bundle" HEAD 2> /dev/null
[ -z "$(git -C "$repo" status --porcelain --untracked-files=no)" ] \
    || say "WARNING: uncommitted changes are not tested: the guest clones HEAD ($commit)"
install -m 0755 "$repo/scripts/vm/guest-run.sh" "$run/share/guest-run.sh"
say "run $run: commit ${commit:0:12}, guest log in $run/serial.log, timeout ${timeout_minutes} min"

: > "$run/serial.log"
tail -n +1 -F "$run/serial.log" 2> /dev/null | grep --line-buffered -a 'tako-vm-test: step' &
progress=$!
started=$(date +%s)
qemu-system-x86_64 \
    -accel tcg,thread=multi -cpu max -smp 2 -m 4096 \
    -display none -monitor none -serial "file:$run/serial.log" -no-reboot \
    -kernel "$base/vmlinuz" -initrd "$base/initrd.img" -append "console=ttyS0 root=/dev/vda rw" \
    -drive "file=$run/disk.qcow2,format=qcow2,if=virtio" \
    -netdev user,id=net0 -device virtio-net-pci,netdev=net0,romfile= \
    -virtfs "local,path=$run/share,mount_tag=tako,security_model=none,id=tako" \
    > "$run/qemu.log" 2>&1 &
qemu=$!
trap 'kill "$qemu" "$progress" 2> /dev/null || true' EXIT  # an interrupted run leaves no guest behind
# Wait for the guest to power off; kill it at the timeout, or 120 s after its script wrote #done (a
# guest that finished its work but hangs on the way down must not cost the whole timeout).
ended=""
done_at=""
while kill -0 "$qemu" 2> /dev/null; do
    now=$(date +%s)
    if [ -z "$done_at" ] && grep -qx '#done' "$run/share/results/results.tsv" 2> /dev/null; then done_at=$now; fi
    if [ $((now - started)) -ge $((timeout_minutes * 60)) ]; then
        ended="TIMEOUT: the guest did not finish within ${timeout_minutes} min; qemu was killed"
    elif [ -n "$done_at" ] && [ $((now - done_at)) -ge 120 ]; then
        ended="the guest finished its script but did not power off within 120 s; qemu was killed"
    fi
    if [ -n "$ended" ]; then
        kill "$qemu" 2> /dev/null || true
        sleep 10
        kill -KILL "$qemu" 2> /dev/null || true
        break
    fi
    sleep 5
done
set +e
wait "$qemu"
qemu_rc=$?
set -e
elapsed=$(($(date +%s) - started))
sleep 1
kill "$progress" 2> /dev/null || true
wait "$progress" 2> /dev/null || true
[ "${TAKO_VM_TEST_KEEP_DISK:-0}" = 1 ] || rm -f "$run/disk.qcow2"
results="$run/share/results"

say "guest ran $((elapsed / 60)) min $((elapsed % 60)) s; $(grep -h '^boot=' "$results/host.txt" 2> /dev/null || echo 'boot=?')"
if [ -n "$ended" ]; then
    say "$ended"
elif [ "$qemu_rc" != 0 ]; then
    say "qemu exited with $qemu_rc: $(tail -3 "$run/qemu.log")"
fi
set +e
python3 "$repo/scripts/vm/results.py" "$results"
verdict=$?
set -e
say "logs: $results/ (results.tsv, server.log, pytest logs, journal.log) and $run/serial.log"
# A guest killed after its script wrote #done reported everything: its results decide.
if [ -n "$ended" ] && [ -z "$done_at" ]; then verdict=1; fi
if [ -z "$ended" ] && [ "$qemu_rc" != 0 ]; then verdict=1; fi
exit $verdict
