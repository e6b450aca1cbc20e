#!/usr/bin/env bash
# Builds the container-runtime programs the tests drive that Debian 12 does not ship, from their
# published Go modules (deploy/gobuild.sh: cached by version under /var/cache/netweft/go):
#   crictl v1.37.0 (CRI client for containerd)        cold ~1-2 min, warm 0 s
#   containerd v2.4.2 + its runc shim + ctr           cold ~10 min (module downloads), warm 0 s
# podman 4.3.1, containerd 1.6.20, runc, conmon and busybox-static come from apt (setup.sh).
# Prints nothing on success but the gobuild lines on stderr.
set -euo pipefail
cd "$(dirname "$0")/.."
bash deploy/gobuild.sh crictl v1.37.0 sigs.k8s.io/cri-tools/cmd/crictl@v1.37.0 >/dev/null
v=v2.4.2
bash deploy/gobuild.sh containerd "$v" \
    "github.com/containerd/containerd/v2/cmd/containerd@$v" \
    "github.com/containerd/containerd/v2/cmd/containerd-shim-runc-v2@$v" \
    "github.com/containerd/containerd/v2/cmd/ctr@$v" >/dev/null
