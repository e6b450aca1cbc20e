#!/usr/bin/env bash
# Builds the real Kubernetes control plane the tests and the lab run, from published Go modules,
# cached by version outside the checkout (deploy/gobuild.sh; a warm machine rebuilds nothing):
#
#   etcd $ETCD_VERSION          go.etcd.io/etcd/server/v3 + etcdctl  (Kubernetes needs etcd >= 3.5;
#                               Debian 12 ships 3.4)
#   kubernetes $KUBE_VERSION    kube-apiserver, kube-controller-manager, kubectl, kube-proxy
#
# Each comes through a small build module of ours (deploy/gomod/*/go.mod) because both upstream
# modules replace their sibling modules with local paths, which `go install PKG@VERSION` refuses.
# Needs Go >= 1.26 (k8s.io/kubernetes v1.37 declares go 1.26) and the Go module proxy.
#
# On success writes $NETWEFT_CACHE/controlplane.env (NETWEFT_ETCD_BIN, NETWEFT_KUBE_BIN: the two
# bin directories) which the test fixture (control_plane, tests/conftest.py) reads, and prints it.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
KUBE_VERSION=v1.37.2
ETCD_VERSION=v3.6.16
cache=${NETWEFT_CACHE:-/var/cache/netweft}
export CGO_ENABLED=0

etcd_bin=$(GOBUILD_MODFILE=$here/gomod/etcd/go.mod "$here/gobuild.sh" etcd "$ETCD_VERSION" \
    go.etcd.io/etcd/server/v3 go.etcd.io/etcd/etcdctl/v3 -- "-ldflags=-s -w")
# `go install .../server/v3` names the binary after the element before the major version suffix.
[ -x "$etcd_bin/server" ] && ln -sfn server "$etcd_bin/etcd"

minor=${KUBE_VERSION#v1.}; minor=${minor%%.*}
ver=k8s.io/component-base/version
kube_bin=$(GOBUILD_MODFILE=$here/gomod/kubernetes/go.mod "$here/gobuild.sh" kubernetes "$KUBE_VERSION" \
    k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-controller-manager \
    k8s.io/kubernetes/cmd/kubectl k8s.io/kubernetes/cmd/kube-proxy \
    -- "-ldflags=-s -w -X $ver.gitVersion=$KUBE_VERSION -X $ver.gitMajor=1 -X $ver.gitMinor=$minor -X $ver.gitTreeState=clean")

for b in "$etcd_bin/etcd" "$kube_bin/kube-apiserver" "$kube_bin/kube-controller-manager" "$kube_bin/kubectl" "$kube_bin/kube-proxy"; do
    [ -x "$b" ] || { echo "controlplane.sh: build finished without $b" >&2; exit 1; }
done
printf 'NETWEFT_ETCD_BIN=%s\nNETWEFT_KUBE_BIN=%s\nNETWEFT_KUBE_VERSION=%s\nNETWEFT_ETCD_VERSION=%s\n' \
    "$etcd_bin" "$kube_bin" "$KUBE_VERSION" "$ETCD_VERSION" > "$cache/controlplane.env.tmp"
mv "$cache/controlplane.env.tmp" "$cache/controlplane.env"
cat "$cache/controlplane.env"
