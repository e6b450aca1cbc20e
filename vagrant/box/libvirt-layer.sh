#!/usr/bin/env bash
# What makes the Vagrant box root filesystem (rootfs.sh + vagrant-layer.sh) a libvirt box:
#   libvirt-layer.sh ROOTFS_DIR BOX_DIR
# Adds, in ROOTFS_DIR (a copy): Debian's kernel (linux-image-amd64, its initramfs), udev,
# ifupdown and a DHCP client (a VM has real devices: Vagrant's Debian guest support configures
# ifupdown; `auto IFACE` in /etc/network/interfaces, not `allow-hotplug`), a serial console;
# then writes BOX_DIR in vagrant-libvirt's box layout: box.img (qcow2 of an ext4 filesystem made
# from the tree with `mkfs.ext4 -d`: no partition table, no bootloader, no loop device) and
# metadata.json, plus vmlinuz and initrd.img, which the Vagrantfile boots directly
# (vagrant-libvirt's `kernel`/`initrd`/`cmd_line`: root=/dev/vda, net.ifnames=0).
# Run as root inside a private mount namespace (`unshare -m`: /proc, /sys, /dev are mounted in
# the tree while packages are installed). Needs a Debian mirror (NETWEFT_DEBIAN_MIRROR).
set -euo pipefail
t=${1:?usage: libvirt-layer.sh ROOTFS BOX}
box=${2:?}
mkdir -p "$box"
debs=${NETWEFT_CACHE:-/var/cache/netweft}/debs
in_target() { chroot "$t" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin DEBIAN_FRONTEND=noninteractive "$@"; }

mount -t proc proc "$t/proc"
mount --rbind /sys "$t/sys"
mount --rbind /dev "$t/dev"
mkdir -p "$t/var/cache/apt/archives"
cp "$debs"/*.deb "$t/var/cache/apt/archives/" 2>/dev/null || true
printf '#!/bin/sh\nexit 101\n' > "$t/usr/sbin/policy-rc.d"; chmod 0755 "$t/usr/sbin/policy-rc.d"
in_target apt-get update -qq
in_target apt-get install -y -qq --no-install-recommends -o Dpkg::Options::=--force-unsafe-io \
    linux-image-amd64 initramfs-tools udev ifupdown isc-dhcp-client
cp -n "$t"/var/cache/apt/archives/*.deb "$debs/" 2>/dev/null || true
in_target apt-get clean
rm -rf "$t"/var/lib/apt/lists/* "$t/usr/sbin/policy-rc.d"
umount -R "$t/proc" "$t/sys" "$t/dev"

# The management NIC by DHCP (vagrant-libvirt's network); Vagrant writes eth1's static address.
cat > "$t/etc/network/interfaces" <<'IF'
auto lo
iface lo inet loopback

auto eth0
iface eth0 inet dhcp

source /etc/network/interfaces.d/*
IF
mkdir -p "$t/etc/network/interfaces.d"
# systemd-networkd (the lxc box's stand-in) would fight ifupdown here
chroot "$t" systemctl disable systemd-networkd.service >/dev/null 2>&1 || true
chroot "$t" systemctl unmask systemd-networkd-wait-online.service >/dev/null 2>&1 || true
chroot "$t" systemctl disable systemd-networkd-wait-online.service >/dev/null 2>&1 || true
chroot "$t" systemctl enable serial-getty@ttyS0.service >/dev/null 2>&1 || true
echo '/dev/vda / ext4 defaults 0 1' > "$t/etc/fstab"

kernel=$(ls "$t"/boot/vmlinuz-* | sort -V | tail -1)
initrd=$(ls "$t"/boot/initrd.img-* | sort -V | tail -1)
cp "$kernel" "$box/vmlinuz"
cp "$initrd" "$box/initrd.img"
used_mb=$(du -sm "$t" | cut -f1)
size_mb=$(( used_mb + 1536 ))             # room for netweft, pods, logs
mkfs.ext4 -q -F -L netweft-root -d "$t" "$box/root.raw" "${size_mb}M"
qemu-img convert -O qcow2 "$box/root.raw" "$box/box.img"
rm -f "$box/root.raw"
printf '{"provider": "libvirt", "format": "qcow2", "virtual_size": %d}\n' \
    $(( (size_mb + 1023) / 1024 )) > "$box/metadata.json"
