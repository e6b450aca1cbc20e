#!/usr/bin/env bash
# Build (or reuse) netweft's Debian 12 root filesystem and the Vagrant boxes made from it:
#
#   vagrant/box/build.sh lxc|libvirt      -> prints the box directory on stdout
#   vagrant/box/build.sh rootfs           -> prints the shared root filesystem's directory
#   vagrant/box/build.sh --print-key NAME -> prints only the cache key
#
# The root filesystem (rootfs.sh: mmdebstrap) carries every apt package netweft needs
# (deploy/setup.sh's PKGS + packages.txt) and a wheelhouse of netweft's Python dependencies,
# because guests reach no package mirror. It is built once and shared: the lxc box, the libvirt
# box and the offline container image (deploy/image.sh) are layers on top of it.
# Everything is cached outside the checkout by content under $NETWEFT_CACHE (default
# /var/cache/netweft): boxes/rootfs-<key> (key = hash of rootfs.sh, the package list and the
# requirements) and boxes/<provider>-<key> (key = the rootfs key, this file, the layer's files);
# a warm machine builds nothing. A box directory has Vagrant's layout for its provider
# (lxc: metadata.json, rootfs.tar.gz, lxc-config; libvirt: metadata.json, box.img, Vagrantfile,
# plus the kernel and initrd it boots directly), so `run.sh` links it into VAGRANT_HOME.
# Needs root, mmdebstrap, eatmydata, vagrant (its insecure public key), for libvirt also
# qemu-utils and e2fsprogs, and a Debian mirror (NETWEFT_DEBIAN_MIRROR) and PyPI reachable.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
print_key=""
if [ "${1:-}" = --print-key ]; then print_key=1; shift; fi   # only print the cache key
what=${1:?usage: vagrant/box/build.sh [--print-key] lxc|libvirt|rootfs}
case "$what" in
lxc|libvirt|rootfs) ;;
*) echo "box/build.sh: provider must be lxc or libvirt (got '$what')" >&2; exit 2 ;;
esac

# apt packages: deploy/setup.sh's PKGS (what netweft needs on a node) + the box's own.
setup_pkgs=$(sed -n 's/^PKGS="\(.*\)"$/\1/p' "$root/deploy/setup.sh")
[ -n "$setup_pkgs" ] || { echo "box/build.sh: no PKGS=\"...\" line in deploy/setup.sh" >&2; exit 1; }
pkgs=$( { tr ' ' '\n' <<<"$setup_pkgs"; sed 's/#.*//' "$here/packages.txt"; } | awk 'NF' | sort -u | tr '\n' ' ')
# Python requirements: netweft's dependencies and its build backend (pyproject.toml).
reqs=$(python3 - "$root/pyproject.toml" <<'PY'
import sys
import tomllib

data = tomllib.load(open(sys.argv[1], "rb"))
print("\n".join([*data["build-system"]["requires"], *data["project"]["dependencies"], "wheel"]))
PY
)
rootfs_key=$( { cat "$here/rootfs.sh"; echo "$pkgs"; echo "$reqs"; } | sha256sum | cut -c1-16)
case "$what" in
rootfs) key=$rootfs_key ;;
lxc) key=$( { echo "$rootfs_key"; cat "$here/build.sh" "$here/vagrant-layer.sh" "$here/lxc-config"; } | sha256sum | cut -c1-16) ;;
libvirt) key=$( { echo "$rootfs_key"; cat "$here/build.sh" "$here/vagrant-layer.sh" "$here/libvirt-layer.sh"; } | sha256sum | cut -c1-16) ;;
esac
if [ -n "$print_key" ]; then echo "$key"; exit 0; fi
[ "$(id -u)" = 0 ] || { echo "box/build.sh: run as root" >&2; exit 1; }
cache=${NETWEFT_CACHE:-/var/cache/netweft}/boxes
out=$cache/$what-$key
if [ -f "$out/.built" ]; then echo "$out"; exit 0; fi

mkdir -p "$cache"
exec 9>"$cache/.lock-$what-$key"
flock 9                                            # one build of a thing at a time
if [ -f "$out/.built" ]; then echo "$out"; exit 0; fi
start=$(date +%s)
work=$(mktemp -d "$cache/.build-$what-XXXXXX")
trap 'rm -rf "$work"' EXIT
# Each step's output goes to a log, shown only when the step fails; each step's time to stderr.
step() {
    local name=$1 t
    shift
    t=$(date +%s)
    if ! "$@" >>"$work/build.log" 2>&1; then
        tail -30 "$work/build.log" >&2
        echo "box/build.sh: $name failed (above)" >&2
        exit 1
    fi
    echo "box/build.sh: $name: $(( $(date +%s) - t )) s" >&2
}

if [ "$what" = rootfs ]; then
    printf '%s\n' "$reqs" > "$work/requirements.txt"
    # shellcheck disable=SC2086
    step "root filesystem (mmdebstrap, $(wc -w <<<"$pkgs") packages + dependencies; wheelhouse)" \
        unshare -m --propagation private bash "$here/rootfs.sh" "$work/box" "$work/requirements.txt" $pkgs
else
    base=$(bash "$here/build.sh" rootfs)
    mkdir -p "$work/box" "$work/upper" "$work/ovl" "$work/rootfs"
    # The box's tree: the shared root filesystem with the box's layers on top (overlayfs in a
    # private mount namespace: nothing copied), packed as it is seen (xattrs kept: ping's file
    # capability).
    layers() {
        unshare -m --propagation private bash -euo pipefail -c '
            here=$1 work=$2 base=$3 what=$4 t=$2/rootfs
            mount -t overlay overlay -o "lowerdir=$base,upperdir=$work/upper,workdir=$work/ovl" "$t"
            rm -f "$t/.built"
            bash "$here/vagrant-layer.sh" "$t"
            case "$what" in
            lxc)
                # vagrant-lxc'"'"'s template unpacks with --strip-components=2: ./rootfs/...
                tar -C "$work" --numeric-owner --xattrs --xattrs-include="*" -cf - ./rootfs \
                    | gzip -1 > "$work/box/rootfs.tar.gz" ;;
            libvirt) bash "$here/libvirt-layer.sh" "$t" "$work/box" ;;
            esac
        ' layers "$here" "$work" "$base" "$what"
    }
    case "$what" in
    lxc)
        step "vagrant layer, rootfs.tar.gz" layers
        cp "$here/lxc-config" "$work/box/lxc-config"
        printf '{"provider": "lxc", "version": "1.0.0", "built-on": "%s", "template-opts": {}}\n' \
            "$(date -u +%FT%TZ)" > "$work/box/metadata.json"
        ;;
    libvirt)
        step "vagrant layer, libvirt layer (kernel, initrd, ext4 image, qcow2)" layers
        ;;
    esac
fi
echo "$key" > "$work/box/.built"
rm -rf "$out"
mv "$work/box" "$out"
echo "box/build.sh: built $what in $(( $(date +%s) - start )) s ($(du -sh "$out" | cut -f1))" >&2
echo "$out"
