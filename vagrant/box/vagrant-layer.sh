#!/usr/bin/env bash
# What makes the shared root filesystem (rootfs.sh) a Vagrant box:  vagrant-layer.sh TARGET_DIR
# a `vagrant` user with Vagrant's well-known insecure key (from the host's vagrant package) and
# password-less sudo; sshd without reverse DNS and with host keys made on each guest's first
# boot; systemd-networkd enabled with no config of its own (see below). Run as root.
set -euo pipefail
target=${1:?usage: vagrant-layer.sh TARGET}
in_target() { chroot "$target" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin "$@"; }

# The vagrant user: Vagrant logs in with its insecure key and replaces it on first `up`.
pub=$(ls /usr/share/rubygems-integration/all/gems/vagrant-*/keys/vagrant.pub 2>/dev/null | head -1)
[ -n "$pub" ] || { echo "vagrant-layer.sh: Vagrant's insecure key (vagrant.pub) not found; install vagrant" >&2; exit 1; }
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

# Networking: the provider gives the addresses (LXC config; a VM's ifupdown, libvirt-layer.sh).
# systemd-networkd runs with no .network file of its own, so it changes nothing, but Vagrant's
# Debian hostname step then restarts it instead of `ifup@IFACE.service`, whose udev device
# dependency fails without udev. Nothing waits for it (no managed link would ever be online).
in_target systemctl enable systemd-networkd.service >/dev/null 2>&1
in_target systemctl mask systemd-networkd-wait-online.service >/dev/null 2>&1
