#!/usr/bin/env bash
# Builds the real Flannel and the current reference CNI plugins from their published Go modules
# (deploy/gobuild.sh: cached by version under /var/cache/netweft/go; a warm machine rebuilds
# nothing) and writes /var/cache/netweft/flannel.env naming them (daemon/lab/flannel.py reads it):
#   flanneld v0.28.10 (github.com/flannel-io/flannel, main package = module root, through the
#     build module gomod/flannel/go.mod: one dependency the module proxy does not serve is pinned
#     to one it does; see there)
#   CNI plugins v1.10.0 (github.com/containernetworking/plugins): bridge, host-local, portmap,
#     the yardstick beside Debian's 1.1.1 in bench/cni_latency.py
# The lab's flanneld nodes (`netweft lab up --flannel-nodes K`) and the interop tests use them.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
FLANNEL_VERSION=${FLANNEL_VERSION:-v0.28.10}
CNI_PLUGINS_VERSION=${CNI_PLUGINS_VERSION:-v1.10.0}
fl=github.com/flannel-io/flannel
flannel_bin=$(GOBUILD_MODFILE=$here/gomod/flannel/go.mod "$here/gobuild.sh" flanneld \
    "$FLANNEL_VERSION" "$fl" -- -ldflags "-s -w -X $fl/pkg/version.Version=$FLANNEL_VERSION")
cp=github.com/containernetworking/plugins
v=$CNI_PLUGINS_VERSION
plugins_bin=$("$here/gobuild.sh" cni-plugins "$v" "$cp/plugins/main/bridge@$v" \
    "$cp/plugins/ipam/host-local@$v" "$cp/plugins/meta/portmap@$v" \
    -- -ldflags "-s -w -X $cp/pkg/utils/buildversion.BuildVersion=$v")
env_file=${NETWEFT_CACHE:-/var/cache/netweft}/flannel.env
cat > "$env_file.tmp" <<END
FLANNELD=$flannel_bin/flannel
FLANNEL_VERSION=$FLANNEL_VERSION
CNI_PLUGINS_DIR=$plugins_bin
CNI_PLUGINS_VERSION=$CNI_PLUGINS_VERSION
END
mv "$env_file.tmp" "$env_file"
