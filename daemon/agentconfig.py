"""The node agent's configuration: ``netweft daemon``'s options as one record."""

from __future__ import annotations

from dataclasses import dataclass, field

from netweft.common import defaults
from netweft.daemon import iface
from netweft.ipam import subnetenv
from netweft.kv.etcd import EtcdSettings


@dataclass(frozen=True)
class AgentConfig:
    """``netweft daemon``'s options (seconds for every interval, TTL and margin)."""

    etcd: EtcdSettings
    iface: iface.IfaceOptions = field(default_factory=iface.IfaceOptions)
    netns: str | None = None  # run netlink/firewall in this namespace (tests); None: current
    subnet_file: str = subnetenv.DEFAULT_PATH
    state_dir: str = defaults.STATE_DIR
    ip_masq: bool = True
    firewall: str = "nftables"  # "nftables" | "iptables" | "none"
    lease_ttl: int = defaults.LEASE_TTL
    renew_margin: int = 3600
    reconcile_interval: float = 10.0
    firewall_interval: float = 5.0  # Flannel's; removals are also noticed at once
    config_retry: float = 2.0
    etcd_probe_interval: float = 5.0
    metrics_addr: str | None = None
    cni_socket: str | None = None
    cni_tcp_port: int = defaults.CNI_TCP_PORT  # the bash launcher's loopback fast path (0: off)
    cni_token_file: str | None = None  # default: next to cni_socket
    cleanup_on_exit: bool = False
    netlink_events: bool = True
    node_name: str = ""
    services_prefix: str = defaults.SERVICES_PREFIX
    pod_records: bool = True
    take_over_lease: bool = False  # the lease holding our public IP is ours, whoever wrote it
    cni_data_dir: str = defaults.CNI_DATA_DIR  # the plugin's IPAM dataDir (pod records sync)
    cni_network: str = "netweft"                 # the conflist's name
    cni_cache_dir: str = defaults.CNI_CACHE_DIR # the runtime's libcni cache directory
    pod_sync_interval: float = 10.0
    kube_subnet_mgr: bool = False  # subnets from Node objects, no etcd (daemon/kubesubnets.py)
    kubeconfig: str | None = None  # --kubeconfig-file; None: in-cluster, then $KUBECONFIG
    net_conf_path: str = defaults.NET_CONF_PATH  # the network config in kube mode
