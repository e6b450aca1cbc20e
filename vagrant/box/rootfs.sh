#!/usr/bin/env bash
# Make the Debian 12 root filesystem every netweft box and the offline image start from:
#   rootfs.sh TARGET_DIR REQUIREMENTS_TXT PACKAGE...
# One mmdebstrap run (apt resolves and installs everything in one dpkg pass: about 3x faster
# than debootstrap's package-by-package second stage here), under eatmydata (no fsync: the tree
# is packed right after), without man pages, docs (copyright files kept) and translations
# (dpkg path-exclude, kept in the target's /etc/dpkg/dpkg.cfg.d/99mmdebstrap); mmdebstrap keeps
# every service from starting while packages are configured (policy-rc.d during the install:
# etcd-server's postinst would start etcd). Then the wheelhouse (binary wheels of netweft's
# Python dependencies for the target's CPython 3.11, from PyPI) goes to /opt/netweft-wheels and
# /opt/netweft/.venv gets them installed.
# No Vagrant specifics here (vagrant-layer.sh adds those to a box).
# Run as root. Mirror: NETWEFT_DEBIAN_MIRROR (default deb.debian.org); downloaded .debs are kept
# in $NETWEFT_CACHE/debs (default /var/cache/netweft), so a rebuild downloads only what is new.
set -euo pipefail
target=${1:?usage: rootfs.sh TARGET REQUIREMENTS_TXT PACKAGE...}
reqs=${2:?}
shift 2
here=$(cd "$(dirname "$0")" && pwd)
mirror=${NETWEFT_DEBIAN_MIRROR:-http://deb.debian.org/debian}
include=$(IFS=,; echo "$*")
debs=${NETWEFT_CACHE:-/var/cache/netweft}/debs
mkdir -p "$debs"

mmdebstrap --variant=minbase --architectures=amd64 --include="$include" \
    --hook-dir=/usr/share/mmdebstrap/hooks/eatmydata \
    --dpkgopt='path-exclude=/usr/share/man/*' \
    --dpkgopt='path-exclude=/usr/share/doc/*' \
    --dpkgopt='path-include=/usr/share/doc/*/copyright' \
    --dpkgopt='path-exclude=/usr/share/locale/*' \
    --dpkgopt='path-include=/usr/share/locale/locale.alias' \
    --skip=essential/unlink \
    --setup-hook='mkdir -p "$1"/var/cache/apt/archives/' \
    --setup-hook="sync-in $debs /var/cache/apt/archives/" \
    --customize-hook="sync-out /var/cache/apt/archives $debs" \
    --customize-hook='rm -f "$1"/var/cache/apt/archives/*.deb' \
    bookworm "$target" "$mirror" >&2

in_target() { chroot "$target" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin "$@"; }

# etcd runs only where it is asked for (node1's provisioning enables it).
in_target systemctl disable etcd.service >/dev/null 2>&1 || true
echo netweft > "$target/etc/hostname"
printf '127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n' > "$target/etc/hosts"
: > "$target/etc/machine-id"            # a fresh machine id on every guest's first boot
: > "$target/etc/fstab"

# The wheelhouse, with the checkout's pip when there is one (a venv of its own costs a minute on
# a loaded machine).
wheels=$target/opt/netweft-wheels
pip=$here/../../.venv/bin/pip
tmpvenv=""
if [ ! -x "$pip" ]; then tmpvenv=$(mktemp -d); python3 -m venv "$tmpvenv"; pip=$tmpvenv/bin/pip; fi
"$pip" download -q --only-binary=:all: --dest "$wheels" \
    --python-version 3.11 --implementation cp --abi cp311 \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform linux_x86_64 -r "$reqs" >&2
[ -z "$tmpvenv" ] || rm -rf "$tmpvenv"
cp "$reqs" "$wheels/requirements.txt"
# netweft's virtual environment with its dependencies already in: deploy/setup.sh (run by the
# provisioning on the synced tree, which rsync leaves .venv out of) then only adds netweft itself.
in_target python3 -m venv /opt/netweft/.venv
in_target /opt/netweft/.venv/bin/pip install -q --no-index --find-links /opt/netweft-wheels \
    -r /opt/netweft-wheels/requirements.txt >&2
rm -rf "$target"/var/lib/apt/lists/* "$target"/var/cache/apt/*.bin
