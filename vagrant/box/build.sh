#!/usr/bin/env bash
# Build (or reuse) the netweft Debian 12 Vagrant box for a provider, from debootstrap:
#
#   vagrant/box/build.sh lxc              -> prints the box directory on stdout
#   vagrant/box/build.sh --print-key lxc  -> prints only the cache key
#
# The box carries every apt package netweft needs (deploy/setup.sh's list + packages.txt) and a
# wheelhouse of netweft's Python dependencies, because guests reach no package mirror.
# It is cached outside the checkout by content: $NETWEFT_CACHE/boxes/<provider>-<key> (default
# /var/cache/netweft), key = hash of these build files, the package list and the requirements;
# a warm machine builds nothing. The directory has Vagrant's box layout for the provider
# (lxc: metadata.json, rootfs.tar.gz, lxc-config), so `run.sh` links it into VAGRANT_HOME.
# Needs root, debootstrap, python3-venv, vagrant (for its insecure public key) and a Debian mirror
# (NETWEFT_DEBIAN_MIRROR) and PyPI (pip's index settings) reachable from where it runs.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
print_key=""
if [ "${1:-}" = --print-key ]; then print_key=1; shift; fi   # only print the cache key
provider=${1:?usage: vagrant/box/build.sh [--print-key] lxc}
case "$provider" in
lxc) ;;
*) echo "box/build.sh: provider must be lxc (got '$provider')" >&2; exit 2 ;;
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
key=$( { cat "$here/build.sh" "$here/rootfs.sh" "$here/lxc-config"; echo "$pkgs"; echo "$reqs"; } \
       | sha256sum | cut -c1-16)
if [ -n "$print_key" ]; then echo "$key"; exit 0; fi
[ "$(id -u)" = 0 ] || { echo "box/build.sh: run as root" >&2; exit 1; }
cache=${NETWEFT_CACHE:-/var/cache/netweft}/boxes
out=$cache/$provider-$key
if [ -f "$out/.built" ]; then echo "$out"; exit 0; fi

mkdir -p "$cache"
exec 9>"$cache/.lock-$provider-$key"
flock 9                                            # one build of a box at a time
if [ -f "$out/.built" ]; then echo "$out"; exit 0; fi
start=$(date +%s)
work=$(mktemp -d "$cache/.build-$provider-XXXXXX")
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

# The wheelhouse: binary wheels for the guest's CPython 3.11 on x86_64 (Debian 12).
printf '%s\n' "$reqs" > "$work/requirements.txt"
wheelhouse() {
    python3 -m venv "$work/venv"
    "$work/venv/bin/pip" download --only-binary=:all: --dest "$work/wheels" \
        --python-version 3.11 --implementation cp --abi cp311 \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
        --platform manylinux2014_x86_64 --platform linux_x86_64 \
        -r "$work/requirements.txt"
    cp "$work/requirements.txt" "$work/wheels/requirements.txt"
}
step "wheelhouse (PyPI)" wheelhouse
# shellcheck disable=SC2086
step "root filesystem (debootstrap)" \
    unshare -m --propagation private bash "$here/rootfs.sh" "$work/rootfs" "$work/wheels" $pkgs

mkdir -p "$work/box"
case "$provider" in
lxc)
    # vagrant-lxc's template unpacks with --strip-components=2: entries are ./rootfs/...
    # (xattrs kept: ping's file capability)
    pack() {
        tar -C "$work" --numeric-owner --xattrs --xattrs-include='*' -cf - ./rootfs \
            | gzip -1 > "$work/box/rootfs.tar.gz"
    }
    step "rootfs.tar.gz" pack
    cp "$here/lxc-config" "$work/box/lxc-config"
    printf '{"provider": "lxc", "version": "1.0.0", "built-on": "%s", "template-opts": {}}\n' \
        "$(date -u +%FT%TZ)" > "$work/box/metadata.json"
    ;;
esac
echo "$key" > "$work/box/.built"
rm -rf "$out"
mv "$work/box" "$out"
echo "box/build.sh: built the $provider box in $(( $(date +%s) - start )) s ($(du -sh "$out" | cut -f1))" >&2
echo "$out"
