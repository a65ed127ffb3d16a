#!/usr/bin/env bash
# The recipe of the fresh Debian 12 guest that scripts/test-in-fresh-vm.sh boots (its sha256 is the
# cache key: change this file and the next run rebuilds the image). Builds, as root, into OUT:
#   base.qcow2   ext4 root filesystem (debootstrap --variant=minbase bookworm from Debian's mirror)
#   vmlinuz      Debian's linux-image-amd64 kernel and its initrd, taken out of that root (the kernel
#   initrd.img   package is installed into the debootstrap root only, never on this host)
# What is in the root: what a fresh Debian 12 server has before the README's two commands (systemd as
# PID 1, udev, python3, ca-certificates) plus make and git, which the README's commands need to exist.
# Deliberately NOT in it: runsc, python3-pip, python3-venv, a venv, the project: `make server` inside
# the guest has to install those itself, exactly as for a user.
# Guest plumbing: systemd-networkd DHCP on QEMU's user-mode network (resolver 10.0.2.3), the 9p share
# `tako` mounted at /mnt/tako, and tako-vm-test.service, a oneshot that runs /mnt/tako/guest-run.sh
# (Type=exec, so multi-user.target is reached and
# timed while it runs) and powers the VM off however it ends.
# Usage: build-base-image.sh OUT_DIR   (OUT_DIR must not exist; it is created complete or not at all)
set -euo pipefail
out="${1:?usage: build-base-image.sh OUT_DIR}"
suite=bookworm
mirror=http://deb.debian.org/debian
disk_size=12G
packages=systemd-sysv,udev,kmod,linux-image-amd64,python3,ca-certificates,make,git,procps,iproute2

[ ! -e "$out" ] || { echo "build-base-image: $out exists" >&2; exit 1; }
work="$out.partial.$$"
trap 'rm -rf "$work"' EXIT
mkdir -p "$work"
root="$work/root"

start=$(date +%s)
debootstrap --variant=minbase --include="$packages" "$suite" "$root" "$mirror" > "$work/debootstrap.log" 2>&1 \
    || { tail -20 "$work/debootstrap.log" >&2; exit 1; }
after_debootstrap=$(date +%s)

cat > "$root/etc/apt/sources.list" <<EOF
deb $mirror $suite main
deb $mirror $suite-updates main
deb http://deb.debian.org/debian-security $suite-security main
EOF
echo tako-vm-test > "$root/etc/hostname"
printf '127.0.0.1 localhost\n127.0.1.1 tako-vm-test\n::1 localhost ip6-localhost ip6-loopback\n' > "$root/etc/hosts"
cat > "$root/etc/fstab" <<'EOF'
/dev/vda / ext4 rw,errors=remount-ro 0 1
tako /mnt/tako 9p trans=virtio,version=9p2000.L,msize=524288,nofail 0 0
EOF
mkdir -p "$root/mnt/tako"
: > "$root/etc/machine-id"  # systemd generates one on each (fresh) boot
echo 'nameserver 10.0.2.3' > "$root/etc/resolv.conf"  # QEMU user-mode networking's DNS forwarder
cat > "$root/etc/systemd/network/10-qemu-user.network" <<'EOF'
[Match]
Name=en* eth*

[Network]
DHCP=ipv4
EOF
cat > "$root/etc/systemd/system/tako-vm-test.service" <<'EOF'
[Unit]
Description=Tako VM fresh-VM test run (scripts/test-in-fresh-vm.sh)
Wants=network-online.target
After=network-online.target
RequiresMountsFor=/mnt/tako
ConditionPathExists=/mnt/tako/guest-run.sh

[Service]
Type=exec
ExecStart=/bin/bash /mnt/tako/guest-run.sh
StandardOutput=journal+console
StandardError=journal+console
TimeoutStartSec=infinity
SuccessAction=poweroff-force
FailureAction=poweroff-force

[Install]
WantedBy=default.target
EOF
chroot "$root" systemctl enable systemd-networkd.service systemd-networkd-wait-online.service \
    tako-vm-test.service > /dev/null 2>&1
chroot "$root" apt-get clean

kernel="$(basename "$root"/boot/vmlinuz-*)"
echo "${kernel#vmlinuz-}" > "$work/kernel-version"
cp "$root"/boot/vmlinuz-* "$work/vmlinuz"
cp "$root"/boot/initrd.img-* "$work/initrd.img"
mkfs.ext4 -q -L tako-root -d "$root" "$work/base.raw" "$disk_size"
qemu-img convert -f raw -O qcow2 "$work/base.raw" "$work/base.qcow2"
rm -rf "$root" "$work/base.raw"
end=$(date +%s)
{
    echo "debootstrap_seconds=$((after_debootstrap - start))"
    echo "image_seconds=$((end - after_debootstrap))"
    echo "total_seconds=$((end - start))"
} > "$work/build-times"
mv "$work" "$out"
trap - EXIT
