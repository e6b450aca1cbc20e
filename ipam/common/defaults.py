"""Defaults shared by more than one room, each defined once (issue 10 item 6).

Modules, CLI options and docs take these; a default only one module uses stays in that module.
Where a value is Flannel's, it is Flannel's default (``flanneld --help``, ``pkg/subnet/etcd``),
so a netweft node and a flanneld node agree without configuration.
"""

from __future__ import annotations

# etcd: where the network lives (Flannel's --etcd-prefix and its v3 client port).
ETCD_PREFIX = "/coreos.com/network"
ETCD_ENDPOINTS = "http://127.0.0.1:2379"

# Leases: Flannel's subnetTTL, 24 hours, in seconds.
LEASE_TTL = 24 * 3600

# Files of the node agent: Flannel's --subnet-file and its --net-config-path in kube mode; our
# state directory (node identity, status, backend state) and run directory (sockets).
SUBNET_FILE = "/run/flannel/subnet.env"
NET_CONF_PATH = "/etc/kube-flannel/net-conf.json"
STATE_DIR = "/var/lib/netweft"
RUN_DIR = "/run/netweft"

# The CNI plugin's path to the daemon: the unix socket, and the loopback TCP port of the bash
# launcher's fast path (a privileged port: only root can listen on it).
CNI_SOCKET_PATH = f"{RUN_DIR}/cni.sock"
CNI_TCP_PORT = 1019

# The CNI plugin's host-local-compatible IPAM store and libcni's cache (the runtime's).
CNI_DATA_DIR = "/var/lib/cni/networks"
CNI_CACHE_DIR = "/var/lib/cni"

# Service records in etcd (netweft's own, beside the network).
SERVICES_PREFIX = "/netweft"

# Backends' UDP ports: the Linux kernel's VXLAN port Flannel uses, WireGuard's ListenPort.
VXLAN_PORT = 8472
WIREGUARD_PORT = 51820
