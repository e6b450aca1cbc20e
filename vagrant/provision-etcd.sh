#!/usr/bin/env bash
# node1 only: Debian's etcd-server listening on the private network (and loopback), as a
# systemd unit (the package's own etcd.service, configured through /etc/default/etcd).
set -euo pipefail
IP=${1:?usage: provision-etcd.sh LISTEN_IP}
export DEBIAN_FRONTEND=noninteractive
dpkg -s etcd-server >/dev/null 2>&1 || { apt-get update -qq; apt-get install -y -qq etcd-server etcd-client >/dev/null; }
cat > /etc/default/etcd <<CONF
ETCD_NAME="node1"
ETCD_DATA_DIR="/var/lib/etcd/default"
ETCD_LISTEN_CLIENT_URLS="http://${IP}:2379,http://127.0.0.1:2379"
ETCD_ADVERTISE_CLIENT_URLS="http://${IP}:2379"
ETCD_LISTEN_PEER_URLS="http://127.0.0.1:2380"
ETCD_INITIAL_ADVERTISE_PEER_URLS="http://127.0.0.1:2380"
ETCD_INITIAL_CLUSTER="node1=http://127.0.0.1:2380"
CONF
systemctl enable etcd >/dev/null 2>&1
systemctl restart etcd
for _ in $(seq 1 50); do
    ETCDCTL_API=3 etcdctl --endpoints "http://${IP}:2379" endpoint health >/dev/null 2>&1 && exit 0
    sleep 0.2
done
echo "provision-etcd.sh: etcd did not come up on ${IP}:2379" >&2
exit 1
