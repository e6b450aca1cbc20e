#!/usr/bin/env bash
# The README's main command: install netweft (deploy/setup.sh), build a lab cluster in network
# namespaces on this machine (`netweft lab up`) and prove it (`netweft lab check`).
# The lab stays up afterwards: explore it with `netweft lab status`, `netweft lab exec node1 --
# ip route`, and remove it with `netweft lab down`. Extra arguments go to `lab up`
# (e.g. `deploy/lab.sh --nodes 4 --backend host-gw`; `deploy/lab.sh --control-plane kubernetes`
# runs the lab on the real Kubernetes control plane deploy/setup.sh builds).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" != 0 ]; then echo "lab.sh: run as root (network namespaces)" >&2; exit 1; fi
bash deploy/setup.sh
NETWEFT=.venv/bin/netweft
PREFIX=${NETWEFT_LAB_PREFIX:-nwlab}
export NETWEFT_LAB_PREFIX=$PREFIX
if ip netns list | grep -q "^${PREFIX}-"; then
    echo "lab.sh: a lab '$PREFIX' is already running; removing it first"
    "$NETWEFT" lab down
fi
"$NETWEFT" lab up "$@"
status=0
"$NETWEFT" lab check || status=$?
P=""
[ "$PREFIX" = nwlab ] || P=" --prefix $PREFIX"
echo
echo "The lab '$PREFIX' is still running:"
echo "  $NETWEFT lab status$P                 # nodes, subnets, pods, leases (or Nodes, Services from the API)"
# `netweft routes` reads the leases from etcd: on the Kubernetes control plane show the kernel's
case " $* " in
    *" --control-plane kubernetes "*|*" --control-plane=kubernetes "*) SHOW="ip route" ;;
    *) SHOW="netweft routes" ;;
esac
echo "  $NETWEFT lab exec$P node1 -- $SHOW   # run anything in a node or pod (node1-pod1)"
echo "  $NETWEFT lab down$P                   # remove every namespace, process and file"
exit $status
