#!/usr/bin/env bash
# Every VM: install netweft with deploy/setup.sh, install the CNI plugin, and run
# `netweft daemon` as the systemd unit netweft.service on the private-network interface
# (and `netweft proxy` as netweft-proxy.service).
#   provision-node.sh NODE_IP ETCD_ENDPOINTS BACKEND config|join
set -euo pipefail
IP=${1:?usage: provision-node.sh NODE_IP ETCD_ENDPOINTS BACKEND config|join}
ETCD=${2:?}
BACKEND=${3:-vxlan}
ROLE=${4:-join}
cd /opt/netweft
# A box built by vagrant/box/build.sh carries the apt packages and a wheelhouse: no mirror needed.
if [ -d /opt/netweft-wheels ]; then export NETWEFT_WHEELHOUSE=/opt/netweft-wheels; fi
bash deploy/setup.sh
NETWEFT=/opt/netweft/.venv/bin/netweft
ln -sfn "$NETWEFT" /usr/local/bin/netweft

# Forwarding between pods and the outside world (a node is a router for its pods).
cat > /etc/sysctl.d/90-netweft.conf <<CONF
net.ipv4.ip_forward = 1
CONF
# Only our own file: `sysctl --system` fails in a container (non-net keys are read-only there).
sysctl -q -p /etc/sysctl.d/90-netweft.conf

if [ "$ROLE" = config ]; then
    # Written once, by the node that also runs etcd; the others only read it.
    "$NETWEFT" --etcd-endpoints "$ETCD" config set --network 10.244.0.0/16 --backend "$BACKEND"
fi

# The public interface is the one holding this VM's private-network address.
IFACE=$(ip -o -4 addr show | awk -v ip="$IP" '$4 ~ "^"ip"/" {print $2; exit}')
[ -n "$IFACE" ] || { echo "provision-node.sh: no interface holds $IP" >&2; exit 1; }

# The etcd endpoints for the units and for `netweft` commands on this VM (vagrant/demo.sh).
echo "NETWEFT_ETCD_ENDPOINTS=${ETCD}" > /etc/default/netweft

cat > /etc/systemd/system/netweft.service <<UNIT
[Unit]
Description=netweft node agent (pod network overlay, Flannel-compatible)
Wants=network-online.target
After=network-online.target

[Service]
Type=simple
EnvironmentFile=/etc/default/netweft
ExecStart=${NETWEFT} daemon --iface ${IFACE}
Restart=always
RestartSec=2

[Install]
WantedBy=multi-user.target
UNIT
# The service proxy, with Services and pod records from etcd (`netweft service create ...`).
cat > /etc/systemd/system/netweft-proxy.service <<UNIT
[Unit]
Description=netweft service proxy (ClusterIP, NodePort; services from etcd)
Wants=netweft.service
After=netweft.service

[Service]
Type=simple
EnvironmentFile=/etc/default/netweft
ExecStart=${NETWEFT} proxy --source etcd --node-ip ${IP}
Restart=always
RestartSec=2

[Install]
WantedBy=multi-user.target
UNIT
systemctl daemon-reload
systemctl enable netweft.service netweft-proxy.service >/dev/null 2>&1
systemctl restart netweft.service netweft-proxy.service

# The CNI plugin for a container runtime on this VM (/opt/cni/bin, /etc/cni/net.d).
"$NETWEFT" cni install

for _ in $(seq 1 100); do
    [ -s /run/flannel/subnet.env ] && { echo "$(hostname): $(grep FLANNEL_SUBNET /run/flannel/subnet.env)"; exit 0; }
    sleep 0.2
done
echo "provision-node.sh: netweft daemon wrote no /run/flannel/subnet.env; journalctl -u netweft" >&2
exit 1
