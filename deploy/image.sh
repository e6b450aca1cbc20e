#!/usr/bin/env bash
# The netweft image built offline (issue 11 item 4): what deploy/Containerfile makes from
# python:3.11-slim, made here without a registry from the shared Debian 12 root filesystem of the
# Vagrant boxes (vagrant/box/build.sh rootfs: debootstrap-style, with the node's apt packages and
# a wheelhouse of netweft's dependencies), with netweft installed from a wheel of this checkout
# into /opt/netweft/.venv and `netweft` on PATH.
#
#   deploy/image.sh              -> prints the path of the image's root filesystem tarball
#   deploy/image.sh --print-key  -> prints only the cache key
#
# The tarball is for `podman import` (tests/deploy/test_image.py imports it into a podman store of its
# own, and runs it with --network none in a namespace of its own):
#   podman import --change 'CMD ["netweft","daemon","--help"]' "$(deploy/image.sh)" localhost/netweft:latest
# Cached by content in
# $NETWEFT_CACHE/images/netweft-<key>.tar (default /var/cache/netweft; key = the root
# filesystem's key + this script + netweft's sources), so a warm machine builds nothing.
# Needs root and what vagrant/box/build.sh needs; the checkout's .venv (deploy/setup.sh) builds
# the wheel.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
rootfs_key=$(bash "$root/vagrant/box/build.sh" --print-key rootfs)
src_hash=$(cd "$root" && find pyproject.toml backends cni daemon ipam proxy -type f \
               -not -path '*/__pycache__/*' -not -name '*.pyc' -print0 \
           | sort -z | xargs -0 sha256sum | sha256sum | cut -c1-16)
key=$( { echo "$rootfs_key $src_hash"; cat "$here/image.sh"; } | sha256sum | cut -c1-16)
if [ "${1:-}" = --print-key ]; then echo "$key"; exit 0; fi
[ "$(id -u)" = 0 ] || { echo "image.sh: run as root" >&2; exit 1; }
cache=${NETWEFT_CACHE:-/var/cache/netweft}/images
out=$cache/netweft-$key.tar
if [ -f "$out" ]; then echo "$out"; exit 0; fi
mkdir -p "$cache"
exec 9>"$cache/.lock-$key"
flock 9
if [ -f "$out" ]; then echo "$out"; exit 0; fi
start=$(date +%s)
base=$(bash "$root/vagrant/box/build.sh" rootfs)
work=$(mktemp -d "$cache/.build-XXXXXX")
trap 'rm -rf "$work"' EXIT
python=$root/.venv/bin/python
[ -x "$python" ] || { echo "image.sh: no $python (run deploy/setup.sh first)" >&2; exit 1; }
# the wheel of this checkout, built offline with the build backend the wheelhouse carries
"$python" -m pip wheel -q --no-deps --no-index --find-links "$base/opt/netweft-wheels" \
    -w "$work/dist" "$root" >&2
# The image's tree: the shared root filesystem with this layer on top (overlayfs in a private
# mount namespace: nothing copied), packed as it is seen.
mkdir -p "$work/upper" "$work/ovl" "$work/merged"
cp "$work"/dist/netweft-*.whl "$work/"
unshare -m --propagation private bash -euo pipefail -c '
    work=$1 base=$2 t=$1/merged
    mount -t overlay overlay -o "lowerdir=$base,upperdir=$work/upper,workdir=$work/ovl" "$t"
    in_target() { chroot "$t" /usr/bin/env -i PATH=/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin "$@"; }
    rm -f "$t/.built"
    cp "$work"/netweft-*.whl "$t/tmp/"
    in_target sh -c "/opt/netweft/.venv/bin/pip install -q --no-index --find-links /opt/netweft-wheels /tmp/netweft-*.whl && rm /tmp/netweft-*.whl"
    # Debian'"'"'s libnftables binding is not on PyPI: the venv sees that one module (as
    # deploy/setup.sh does)
    site=$(in_target /opt/netweft/.venv/bin/python -c "import sysconfig; print(sysconfig.get_paths()[\"purelib\"])")
    mkdir -p "$t$site/_netweft_debian"
    ln -s /usr/lib/python3/dist-packages/nftables "$t$site/_netweft_debian/nftables"
    echo "$site/_netweft_debian" > "$t$site/netweft-debian-nftables.pth"
    ln -s /opt/netweft/.venv/bin/netweft "$t/usr/local/bin/netweft"
    in_target netweft --help >/dev/null
    in_target /opt/netweft/.venv/bin/python -c "import nftables"
    tar -C "$t" --numeric-owner --xattrs --xattrs-include="*" -cf "$work/image.tar" .
' image-layer "$work" "$base" >&2
mv "$work/image.tar" "$out"
echo "image.sh: built the image in $(( $(date +%s) - start )) s ($(du -sh "$out" | cut -f1))" >&2
echo "$out"
