#!/usr/bin/env bash
# Make a Debian 12 root filesystem for a netweft Vagrant box from debootstrap, offline-ready:
#   rootfs.sh TARGET_DIR WHEELHOUSE_DIR PACKAGE...
# Installs the packages (a two-stage debootstrap, with a policy-rc.d in the target so that no
# service starts during the build), a `vagrant` user with Vagrant's well-known insecure key and
# password-less sudo, and copies the wheelhouse (netweft's Python dependencies) to
# /opt/netweft-wheels. Run it inside a private mount namespace (`unshare -m`): debootstrap mounts
# /proc and /sys inside the target. Mirror: NETWEFT_DEBIAN_MIRROR (default deb.debian.org).
set -euo pipefail
target=${1:?usage: rootfs.sh TARGET WHEELHOUSE PACKAGE...}
wheels=${2:?}
shift 2
mirror=${NETWEFT_DEBIAN_MIRROR:-http://deb.debian.org/debian}
include=$(IFS=,; echo "$*")

# Downloaded .debs are kept in $NETWEFT_CACHE/debs: a box rebuilt after a change downloads
# only what is new.
debs=${NETWEFT_CACHE:-/var/cache/netweft}/debs
mkdir -p "$debs"
debootstrap --foreign --variant=minbase --arch=amd64 --include="$include" --cache-dir="$debs" \
    bookworm "$target" "$mirror" >&2
# No service may start while packages are configured (etcd-server's postinst would start etcd
# in the build's network namespace).
printf '#!/bin/sh\nexit 101\n' > "$target/usr/sbin/policy-rc.d"
chmod 0755 "$target/usr/sbin/policy-rc.d"
# No fsync per unpacked file: the tree is packed into a tarball right after (2-3x faster here).
mkdir -p "$target/etc/dpkg/dpkg.cfg.d"
echo force-unsafe-io > "$target/etc/dpkg/dpkg.cfg.d/netweft-build"
chroot "$target" /debootstrap/debootstrap --second-stage >&2
rm -f "$target/etc/dpkg/dpkg.cfg.d/netweft-build"

in_target() { chroot "$target" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin "$@"; }

# The vagrant user: Vagrant logs in with its insecure key and replaces it on first `up`.
pub=$(ls /usr/share/rubygems-integration/all/gems/vagrant-*/keys/vagrant.pub 2>/dev/null | head -1)
[ -n "$pub" ] || { echo "rootfs.sh: Vagrant's insecure key (vagrant.pub) not found; install vagrant" >&2; exit 1; }
in_target useradd --create-home --shell /bin/bash vagrant
install -d -m 0700 "$target/home/vagrant/.ssh"
install -m 0600 "$pub" "$target/home/vagrant/.ssh/authorized_keys"
in_target chown -R vagrant:vagrant /home/vagrant/.ssh
echo 'vagrant ALL=(ALL) NOPASSWD: ALL' > "$target/etc/sudoers.d/vagrant"
chmod 0440 "$target/etc/sudoers.d/vagrant"

# sshd: no reverse DNS (guests have no resolver); host keys made on each guest's first boot.
echo 'UseDNS no' > "$target/etc/ssh/sshd_config.d/vagrant.conf"
rm -f "$target"/etc/ssh/ssh_host_*
mkdir -p "$target/etc/systemd/system/ssh.service.d"
printf '[Service]\nExecStartPre=\nExecStartPre=/usr/bin/ssh-keygen -A\nExecStartPre=/usr/sbin/sshd -t\n' \
    > "$target/etc/systemd/system/ssh.service.d/keygen.conf"

# Networking: the provider gives the addresses (LXC config, or ifupdown in a VM image).
# systemd-networkd runs with no .network file of its own, so it changes nothing, but Vagrant's
# Debian hostname step then restarts it instead of `ifup@IFACE.service`, whose udev device
# dependency fails without udev. Nothing waits for it (no managed link would ever be online).
in_target systemctl enable systemd-networkd.service >/dev/null 2>&1
in_target systemctl mask systemd-networkd-wait-online.service >/dev/null 2>&1
# etcd runs only where provisioning enables it (node1).
in_target systemctl disable etcd.service >/dev/null 2>&1 || true

echo netweft > "$target/etc/hostname"
printf '127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n' > "$target/etc/hosts"
: > "$target/etc/machine-id"            # a fresh machine id on every guest's first boot
: > "$target/etc/fstab"

mkdir -p "$target/opt/netweft-wheels"
cp "$wheels"/* "$target/opt/netweft-wheels/"
# netweft's virtual environment with its dependencies already in: deploy/setup.sh (run by the
# provisioning on the synced tree, which rsync leaves .venv out of) then only adds netweft itself.
in_target python3 -m venv /opt/netweft/.venv
in_target /opt/netweft/.venv/bin/pip install -q --no-index --find-links /opt/netweft-wheels \
    -r /opt/netweft-wheels/requirements.txt >&2

in_target apt-get clean
rm -rf "$target"/var/lib/apt/lists/* "$target"/var/cache/apt/*.bin "$target/debootstrap"
rm -f "$target/usr/sbin/policy-rc.d"
