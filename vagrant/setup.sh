#!/usr/bin/env bash
# Installs what `vagrant/run.sh` needs on the host, as root, idempotently (Debian 12's packages):
#   lxc route:      vagrant vagrant-lxc lxc mmdebstrap eatmydata rsync openssh-client sudo
#   libvirt route:  vagrant vagrant-libvirt libvirt-daemon-system qemu-system-x86 qemu-utils
#                   dnsmasq-base e2fsprogs (+ the same box tools)
# Services are never started by the install (a policy-rc.d refuses them while apt runs, unless the
# machine already has one): lxc-net would otherwise make lxcbr0 in the root network namespace,
# libvirtd its default network (virbr0, NAT rules).
# Everything run.sh starts, it starts inside its own network namespace.
set -euo pipefail
if [ "$(id -u)" != 0 ]; then echo "vagrant/setup.sh: run as root" >&2; exit 1; fi
provider=${1:-lxc}
case "$provider" in
lxc) PKGS="vagrant vagrant-lxc lxc mmdebstrap eatmydata rsync openssh-client sudo python3-venv iproute2" ;;
libvirt) PKGS="vagrant vagrant-libvirt libvirt-daemon-system qemu-system-x86 qemu-utils dnsmasq-base e2fsprogs mmdebstrap eatmydata rsync openssh-client sudo python3-venv iproute2" ;;
*) echo "vagrant/setup.sh: provider must be lxc or libvirt (got '$provider')" >&2; exit 2 ;;
esac
missing=""
for p in $PKGS; do dpkg -s "$p" >/dev/null 2>&1 || missing="$missing $p"; done
[ -n "$missing" ] || exit 0
policy=/usr/sbin/policy-rc.d
made_policy=""
if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' > "$policy"; chmod 0755 "$policy"; made_policy=1
fi
trap '[ -z "$made_policy" ] || rm -f "$policy"' EXIT
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
# shellcheck disable=SC2086
apt-get install -y -qq --no-install-recommends $missing >/dev/null
