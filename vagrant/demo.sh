#!/usr/bin/env bash
# On a provisioned VM: start (or remove) a "pod" the way a container runtime does it — a network
# namespace wired by the installed CNI plugin (/opt/cni/bin/netweft, /etc/cni/net.d) — with a
# whoami server on port 8080 (it answers each connection with the client's address) and the
# label app=demo; print its address. And create the demo Service selecting those pods.
#   sudo /opt/netweft/vagrant/demo.sh add            -> demo pod 10.244.x.y
#   sudo ip netns exec demo ping -c3 <the other VM's demo pod>
#   sudo /opt/netweft/vagrant/demo.sh service        -> demo service 10.96.x.y:80 NodePort 30080
#   sudo /opt/netweft/vagrant/demo.sh del
set -euo pipefail
CMD=${1:-add}
NS=${2:-demo}
PY=/opt/netweft/.venv/bin/python
NETWEFT=/opt/netweft/.venv/bin/netweft
PORT=8080 SERVICE_PORT=80 NODE_PORT=30080
# shellcheck disable=SC1091
[ -f /etc/default/netweft ] && . /etc/default/netweft && export NETWEFT_ETCD_ENDPOINTS
CONF=$(ls /etc/cni/net.d/*.conflist 2>/dev/null | head -1)
[ -n "$CONF" ] || { echo "demo.sh: no conflist in /etc/cni/net.d (netweft cni install)" >&2; exit 1; }
PLUGIN=$(python3 -c 'import json,sys; c=json.load(open(sys.argv[1])); p=dict(c["plugins"][0]); p["name"]=c["name"]; p["cniVersion"]=c["cniVersion"]; print(json.dumps(p))' "$CONF")
TYPE=$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["type"])' "$PLUGIN")
export CNI_CONTAINERID="demo-$(hostname)-$NS" CNI_IFNAME=eth0 CNI_PATH=/opt/cni/bin
export CNI_ARGS="IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=$NS-$(hostname);NETWEFT_POD_LABELS=app=demo"
case "$CMD" in
add)
    ip netns add "$NS" 2>/dev/null || true
    ip -n "$NS" link set lo up
    out=$(CNI_COMMAND=ADD CNI_NETNS="/run/netns/$NS" "$CNI_PATH/$TYPE" <<<"$PLUGIN")
    # The pod's server, as a transient unit so it outlives this shell (ssh session).
    systemctl stop "netweft-demo-$NS.service" 2>/dev/null || true
    systemd-run --quiet --collect --unit "netweft-demo-$NS" \
        ip netns exec "$NS" "$PY" -m netweft.daemon.lab.whoami serve --port "$PORT"
    echo "$out" | python3 -c 'import json,sys; r=json.load(sys.stdin); print("demo pod", r["ips"][0]["address"].split("/")[0])'
    ;;
service)
    "$NETWEFT" service delete demo >/dev/null 2>&1 || true
    "$NETWEFT" service create demo --port "$SERVICE_PORT:$PORT/tcp" --selector app=demo \
        --type NodePort --node-port "$NODE_PORT" --json \
        | python3 -c 'import json,sys; r=json.load(sys.stdin); print("demo service", r["clusterIP"] + ":'"$SERVICE_PORT"'", "NodePort", '"$NODE_PORT"')'
    ;;
del)
    systemctl stop "netweft-demo-$NS.service" 2>/dev/null || true
    CNI_COMMAND=DEL CNI_NETNS="/run/netns/$NS" "$CNI_PATH/$TYPE" <<<"$PLUGIN" || true
    ip netns delete "$NS" 2>/dev/null || true
    ;;
*) echo "usage: demo.sh add|service|del [NAME]" >&2; exit 2 ;;
esac
