#!/usr/bin/env bash
# Installs everything netweft needs on a Debian/Ubuntu machine, as root, idempotently:
# the apt packages (etcd, nftables, iptables, iproute2, iperf3, conntrack, the reference
# CNI plugins used by the benchmarks and chained as portmap/loopback), the real container
# runtimes the CNI tests drive (podman, containerd, runc, conmon, busybox-static for an
# offline image; crictl and containerd 2.x are built by deploy/runtimes.sh), mmdebstrap and
# eatmydata (the Debian 12 root filesystem of netweft's offline image, deploy/image.sh) and a virtual
# environment with netweft at ./.venv, and the Kubernetes control plane built from its Go
# modules (deploy/controlplane.sh; needs Go >= 1.26).
# NETWEFT_WHEELHOUSE=DIR: an offline node install (a Vagrant box): netweft's runtime
# dependencies from DIR without an index, and none of the test-only tools.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" != 0 ]; then echo "setup.sh: run as root" >&2; exit 1; fi

# PKGS: what a node needs (vagrant/box/build.sh puts exactly these in its boxes);
# TEST_PKGS: the real container runtimes the tests drive.
PKGS="etcd-server etcd-client openssl nftables iptables iproute2 iperf3 iputils-ping conntrack containernetworking-plugins python3-venv python3-nftables tcpdump wireguard-tools wireguard-go"
TEST_PKGS="podman containerd runc conmon busybox-static mmdebstrap eatmydata"
[ -n "${NETWEFT_WHEELHOUSE:-}" ] || PKGS="$PKGS $TEST_PKGS"
missing=""
for p in $PKGS; do dpkg -s "$p" >/dev/null 2>&1 || missing="$missing $p"; done
if [ -n "$missing" ]; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    # shellcheck disable=SC2086
    apt-get install -y -qq --no-install-recommends $missing >/dev/null
fi

PY=${NETWEFT_PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PY" -m venv .venv
fi
if [ -n "${NETWEFT_WHEELHOUSE:-}" ]; then
    # Offline (a Vagrant box, vagrant/box/build.sh): the runtime dependencies from the wheelhouse.
    .venv/bin/python -m pip install -q --no-index --find-links "$NETWEFT_WHEELHOUSE" -e .
else
    .venv/bin/python -m pip install -q --upgrade pip >/dev/null 2>&1 || true
    .venv/bin/python -m pip install -q -e '.[test]'
fi
# Debian's libnftables binding (python3-nftables) is not on PyPI: let the venv see that one module.
site=$(.venv/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
if [ -d /usr/lib/python3/dist-packages/nftables ]; then
    mkdir -p "$site/_netweft_debian"
    ln -sfn /usr/lib/python3/dist-packages/nftables "$site/_netweft_debian/nftables"
    echo "$site/_netweft_debian" > "$site/netweft-debian-nftables.pth"
fi
if [ -z "${NETWEFT_WHEELHOUSE:-}" ]; then
    bash deploy/runtimes.sh  # crictl, containerd 2.x (tests)
    bash deploy/flannel.sh   # flanneld v0.28 + current reference CNI plugins (interop tests)
    # The real Kubernetes control plane (etcd 3.6, kube-apiserver, kube-controller-manager,
    # kubectl, kube-proxy) built from its Go modules, cached by version under
    # /var/cache/netweft/go: the Kubernetes tests run it. Cold: ~31 CPU-minutes (92 min wall on
    # a 2-core machine shared with other builds); warm: nothing is rebuilt (deploy/README.md).
    bash deploy/controlplane.sh >/dev/null
fi
echo "netweft installed in $(pwd)/.venv"
