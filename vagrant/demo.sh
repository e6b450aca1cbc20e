#!/usr/bin/env bash
# On a provisioned VM: start (or remove) a "pod" the way a container runtime does it — a network
# namespace wired by the installed CNI plugin (/opt/cni/bin/netweft, /etc/cni/net.d) — and print
# its address. Run it on two VMs and ping one pod from the other:
#   sudo /opt/netweft/vagrant/demo.sh add            -> demo pod 10.244.x.y
#   sudo ip netns exec demo ping -c3 <the other VM's demo pod>
#   sudo /opt/netweft/vagrant/demo.sh del
set -euo pipefail
CMD=${1:-add}
NS=${2:-demo}
CONF=$(ls /etc/cni/net.d/*.conflist 2>/dev/null | head -1)
[ -n "$CONF" ] || { echo "demo.sh: no conflist in /etc/cni/net.d (netweft cni install)" >&2; exit 1; }
PLUGIN=$(python3 -c 'import json,sys; c=json.load(open(sys.argv[1])); p=dict(c["plugins"][0]); p["name"]=c["name"]; p["cniVersion"]=c["cniVersion"]; print(json.dumps(p))' "$CONF")
TYPE=$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["type"])' "$PLUGIN")
export CNI_CONTAINERID="demo-$(hostname)-$NS" CNI_IFNAME=eth0 CNI_PATH=/opt/cni/bin
export CNI_ARGS="IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=$NS"
case "$CMD" in
add)
    ip netns add "$NS" 2>/dev/null || true
    ip -n "$NS" link set lo up
    out=$(CNI_COMMAND=ADD CNI_NETNS="/run/netns/$NS" "$CNI_PATH/$TYPE" <<<"$PLUGIN")
    echo "$out" | python3 -c 'import json,sys; r=json.load(sys.stdin); print("demo pod", r["ips"][0]["address"].split("/")[0])'
    ;;
del)
    CNI_COMMAND=DEL CNI_NETNS="/run/netns/$NS" "$CNI_PATH/$TYPE" <<<"$PLUGIN" || true
    ip netns delete "$NS" 2>/dev/null || true
    ;;
*) echo "usage: demo.sh add|del [NAME]" >&2; exit 2 ;;
esac
