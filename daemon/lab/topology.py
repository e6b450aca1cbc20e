"""The lab's shape as data: which namespaces, addresses and paths an N-node lab has.

Pure functions only: :func:`plan` turns a :class:`LabSpec` into a :class:`Topology`; the
builder (``daemon.lab.underlay``) and the runtime side (``daemon.lab.runtime``) apply it.

Addressing (all inside the lab's own namespaces):

- underlay ``192.0.2.0/24`` (TEST-NET-1): ``.1`` is the outside host (the nodes' gateway),
  ``.2`` the etcd host, node N is ``.(10+N)``;
- the "internet" is ``198.51.100.1`` (TEST-NET-2), an address on the outside host only:
  pods reach it through masquerade, and it has no route back to the pod network.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network
from typing import Any

from netweft.common import defaults
from netweft.ipam.config import ConfigError
from netweft.ipam.config import from_dict as config_from_dict

UNDERLAY = IPv4Network("192.0.2.0/24")
GATEWAY_IP = IPv4Address("192.0.2.1")
ETCD_IP = IPv4Address("192.0.2.2")
FIRST_NODE_HOST = 10
INTERNET_IP = IPv4Address("198.51.100.1")
WHOAMI_PORT = 8080
SERVICE_NAME = "lab-whoami"
SERVICE_PORT = 80
SERVICE_NODE_PORT = 30080
ETCD_CLIENT_PORT = 2379
DEFAULT_PREFIX = "nwlab"
DEFAULT_NETWORK = IPv4Network("10.244.0.0/16")
DEFAULT_ETCD_PREFIX = defaults.ETCD_PREFIX
STATE_ROOT = "/run/netweft-lab"
BACKENDS = ("vxlan", "host-gw", "wireguard")
DATAPLANES = ("netweft", "reference")
PROXY_MODES = ("nftables", "iptables")
CONTROL_PLANES = ("etcd", "kubernetes")
# Kubernetes mode (daemon/lab/kube.py): deploy/kubernetes/10-rbac.yaml's names, PID file names
SYSTEM_NAMESPACE = "netweft-system"
DAEMON_ACCOUNT = "netweft"               # the node agent's service account
PROXY_ACCOUNT = "netweft-proxy"          # the proxy's
KUBE_PROCESSES = ("kube-etcd", "kube-apiserver", "kube-controller-manager")
MAX_NODES = 200
UNDERLAY_BRIDGE = "br0"
NODE_IFACE = "eth0"
POD_IFACE = "eth0"
CNI_NETWORK_NAME = "netweft"

_PREFIX_RE = re.compile(r"^[a-z][a-z0-9]{1,11}$")


class LabSpecError(ValueError):
    """A lab option is out of range (the message names the option)."""


@dataclass(frozen=True)
class LabSpec:
    """What the user asked for (``netweft lab up`` options)."""

    prefix: str = DEFAULT_PREFIX
    nodes: int = 3
    pods_per_node: int = 2
    backend: str = "vxlan"
    vni: int = 1
    port: int = defaults.VXLAN_PORT
    network: IPv4Network = DEFAULT_NETWORK
    subnet_len: int = 24
    etcd_prefix: str = DEFAULT_ETCD_PREFIX
    state_root: str = STATE_ROOT
    dataplane: str = "netweft"   # "reference": hand-programmed, no daemons (bench/dataplane.py)
    proxy: bool = True           # run `netweft proxy` on every node and a NodePort service
    proxy_mode: str = "nftables"  # `netweft proxy --mode`
    flannel_nodes: int = 0       # the first K nodes run the real flanneld (daemon/lab/flannel.py)
    control_plane: str = "etcd"  # "kubernetes": a real apiserver, Nodes, Pods (daemon/lab/kube.py)

    @property
    def kube(self) -> bool:
        return self.control_plane == "kubernetes"

    def validate(self) -> None:
        if not _PREFIX_RE.match(self.prefix):
            raise LabSpecError(
                f"--prefix: {self.prefix!r} must be 2-12 lowercase letters/digits, starting "
                "with a letter")
        if not 1 <= self.nodes <= MAX_NODES:
            raise LabSpecError(f"--nodes: {self.nodes} is out of range 1-{MAX_NODES}")
        if not 0 <= self.pods_per_node <= 50:
            raise LabSpecError(f"--pods-per-node: {self.pods_per_node} is out of range 0-50")
        if self.backend not in BACKENDS:
            raise LabSpecError(f"--backend: {self.backend!r} is not one of {', '.join(BACKENDS)}")
        if not 0 <= self.vni < 2**24:
            raise LabSpecError(f"--vni: {self.vni} is out of range 0-16777215")
        if self.dataplane not in DATAPLANES:
            raise LabSpecError(
                f"dataplane: {self.dataplane!r} is not one of {', '.join(DATAPLANES)}")
        if self.dataplane == "reference" and self.backend == "wireguard":
            raise LabSpecError("--dataplane reference: hand-programmed labs are vxlan or host-gw "
                               "only (bench/dataplane.py measures wireguard against them)")
        if self.proxy_mode not in PROXY_MODES:
            raise LabSpecError(
                f"--proxy-mode: {self.proxy_mode!r} is not one of {', '.join(PROXY_MODES)}")
        if self.control_plane not in CONTROL_PLANES:
            raise LabSpecError(f"--control-plane: {self.control_plane!r} is not one of "
                               f"{', '.join(CONTROL_PLANES)}")
        if self.kube and self.dataplane != "netweft":
            raise LabSpecError("--control-plane kubernetes: needs --dataplane netweft")
        if not 0 <= self.flannel_nodes <= self.nodes:
            raise LabSpecError(f"--flannel-nodes: {self.flannel_nodes} is out of range "
                               f"0-{self.nodes} (--nodes)")
        if self.flannel_nodes and (self.dataplane != "netweft" or self.backend == "wireguard"):
            raise LabSpecError("--flannel-nodes: flanneld nodes need --dataplane netweft and "
                               "--backend vxlan or host-gw")
        if not 1 <= self.port <= 65535:
            raise LabSpecError(f"--port: {self.port} is out of range 1-65535")
        try:  # the network config's own (Flannel's) rules, so the daemons accept it
            config_from_dict({"Network": str(self.network), "SubnetLen": self.subnet_len})
        except ConfigError as exc:
            raise LabSpecError(f"--subnet-len: {exc}") from None

    def to_dict(self) -> dict[str, Any]:
        return {
            "prefix": self.prefix, "nodes": self.nodes, "pods_per_node": self.pods_per_node,
            "backend": self.backend, "vni": self.vni, "port": self.port,
            "network": str(self.network), "subnet_len": self.subnet_len,
            "etcd_prefix": self.etcd_prefix, "state_root": self.state_root,
            "dataplane": self.dataplane, "proxy": self.proxy, "proxy_mode": self.proxy_mode,
            "flannel_nodes": self.flannel_nodes, "control_plane": self.control_plane,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> LabSpec:
        return cls(
            prefix=d["prefix"], nodes=int(d["nodes"]), pods_per_node=int(d["pods_per_node"]),
            backend=d["backend"], vni=int(d["vni"]), port=int(d["port"]),
            network=IPv4Network(d["network"]), subnet_len=int(d["subnet_len"]),
            etcd_prefix=d["etcd_prefix"], state_root=d["state_root"],
            dataplane=d.get("dataplane", "netweft"), proxy=bool(d.get("proxy", True)),
            proxy_mode=d.get("proxy_mode", "nftables"),
            flannel_nodes=int(d.get("flannel_nodes", 0)),
            control_plane=d.get("control_plane", "etcd"),
        )


@dataclass(frozen=True)
class Node:
    """One lab node: a namespace with ``eth0`` on the underlay, running ``netweft daemon``."""

    name: str                 # "node1"
    index: int                # 1-based
    netns: str                # "<prefix>-node1"
    ip: IPv4Address           # underlay address
    state_dir: str            # per-node files (subnet.env, CNI dirs, logs, socket)

    @property
    def underlay_port(self) -> str:
        """Name of the node's veth end on the underlay bridge (in the underlay namespace)."""
        return self.name

    @property
    def wireguard_key_file(self) -> str:
        """The node's WireGuard private key (the daemon reads ``$WIREGUARD_KEY_FILE``)."""
        return os.path.join(self.state_dir, "wgkey")

    @property
    def subnet_env(self) -> str:
        return os.path.join(self.state_dir, "subnet.env")

    @property
    def cni_bin_dir(self) -> str:
        return os.path.join(self.state_dir, "cni", "bin")

    @property
    def cni_conf_dir(self) -> str:
        return os.path.join(self.state_dir, "cni", "net.d")

    @property
    def cni_data_dir(self) -> str:
        return os.path.join(self.state_dir, "cni", "data")

    @property
    def daemon_state_dir(self) -> str:
        return os.path.join(self.state_dir, "daemon")

    @property
    def cni_socket(self) -> str:
        return os.path.join(self.state_dir, "cni.sock")

    @property
    def cni_log(self) -> str:
        return os.path.join(self.state_dir, "cni.log")

    @property
    def daemon_log(self) -> str:
        return os.path.join(self.state_dir, "daemon.log")

    @property
    def proxy_log(self) -> str:
        return os.path.join(self.state_dir, "proxy.log")

    @property
    def conflist_path(self) -> str:
        return os.path.join(self.cni_conf_dir, f"10-{CNI_NETWORK_NAME}.conflist")


@dataclass(frozen=True)
class Pod:
    """One lab pod: a namespace wired by the CNI plugin run inside its node's namespace."""

    name: str                 # "node1-pod1"
    node: str                 # "node1"
    netns: str                # "<prefix>-node1-pod1"
    container_id: str
    labels: dict[str, str] = field(default_factory=dict)

    @property
    def netns_path(self) -> str:
        return f"/run/netns/{self.netns}"


@dataclass(frozen=True)
class Topology:
    spec: LabSpec
    nodes: tuple[Node, ...]
    pods: tuple[Pod, ...]

    @property
    def prefix(self) -> str:
        return self.spec.prefix

    @property
    def state_dir(self) -> str:
        return lab_state_dir(self.spec.state_root, self.spec.prefix)

    @property
    def underlay_ns(self) -> str:
        return f"{self.prefix}-underlay"

    @property
    def etcd_ns(self) -> str:
        return f"{self.prefix}-etcd"

    @property
    def outside_ns(self) -> str:
        return f"{self.prefix}-outside"

    @property
    def etcd_endpoint(self) -> str:
        return f"http://{ETCD_IP}:{ETCD_CLIENT_PORT}"

    def node(self, name: str) -> Node:
        for node in self.nodes:
            if node.name == name:
                return node
        raise KeyError(name)

    def pods_on(self, node: str) -> list[Pod]:
        return [p for p in self.pods if p.node == node]

    def infra_namespaces(self) -> list[str]:
        return [self.underlay_ns, self.etcd_ns, self.outside_ns]


@dataclass(frozen=True)
class KubePaths:
    """Where a lab's control plane lives: ``port`` of the apiserver on ``192.0.2.2`` and on the
    control-plane namespace's loopback; ``workdir`` = ``<lab state>/kube`` (PKI, etcd data,
    logs, kubeconfigs, net-conf.json)."""

    workdir: str
    port: int

    @property
    def server(self) -> str:
        """The apiserver's URL as the nodes use it (over the underlay)."""
        return f"https://{ETCD_IP}:{self.port}"

    @property
    def ca_cert(self) -> str:
        return os.path.join(self.workdir, "pki", "ca.crt")

    @property
    def admin_kubeconfig(self) -> str:
        """The admin's kubeconfig (``https://127.0.0.1:<port>``: valid in the control-plane
        namespace, where :class:`KubeApi` makes its calls)."""
        return os.path.join(self.workdir, "admin.kubeconfig")

    @property
    def daemon_kubeconfig(self) -> str:
        return os.path.join(self.workdir, f"{DAEMON_ACCOUNT}.kubeconfig")

    @property
    def proxy_kubeconfig(self) -> str:
        return os.path.join(self.workdir, f"{PROXY_ACCOUNT}.kubeconfig")

    @property
    def net_conf(self) -> str:
        """Flannel's ``net-conf.json`` (what kube-flannel mounts from its ConfigMap)."""
        return os.path.join(self.workdir, "net-conf.json")

    def to_dict(self) -> dict[str, Any]:
        return {"workdir": self.workdir, "port": self.port}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> KubePaths:
        return cls(str(d["workdir"]), int(d["port"]))


def lab_state_dir(state_root: str, prefix: str) -> str:
    return os.path.join(state_root, prefix)


def node_ip(index: int) -> IPv4Address:
    """The underlay address of node ``index`` (``.(10+index)``; the lab counts from 1, the
    tests' node labs from 0). The one address plan of every topology netweft builds."""
    return UNDERLAY.network_address + FIRST_NODE_HOST + index


def make_node(spec: LabSpec, index: int) -> Node:
    name = f"node{index}"
    return Node(
        name=name, index=index, netns=f"{spec.prefix}-{name}", ip=node_ip(index),
        state_dir=os.path.join(lab_state_dir(spec.state_root, spec.prefix), "nodes", name),
    )


def make_pod(spec: LabSpec, node: Node, index: int, labels: dict[str, str] | None = None) -> Pod:
    name = f"{node.name}-pod{index}"
    return Pod(
        name=name, node=node.name, netns=f"{spec.prefix}-{name}",
        container_id=f"{spec.prefix}{node.index:03d}{index:04d}".ljust(32, "0"),
        labels=labels if labels is not None else {"app": f"pod{index}", "lab": spec.prefix},
    )


def plan(spec: LabSpec) -> Topology:
    """The namespaces, addresses and paths of the lab ``spec`` describes."""
    spec.validate()
    nodes = tuple(make_node(spec, i) for i in range(1, spec.nodes + 1))
    pods = tuple(make_pod(spec, n, k) for n in nodes for k in range(1, spec.pods_per_node + 1))
    return Topology(spec=spec, nodes=nodes, pods=pods)


def network_config(spec: LabSpec) -> dict[str, Any]:
    """The Flannel network config the lab writes to ``<etcd prefix>/config``."""
    backend: dict[str, Any] = {"Type": spec.backend}
    if spec.backend == "vxlan":
        backend.update({"VNI": spec.vni, "Port": spec.port})
    if spec.backend == "wireguard":
        backend.update({"PersistentKeepaliveInterval": 25})
    return {"Network": str(spec.network), "SubnetLen": spec.subnet_len, "Backend": backend}


def cni_install_args(node: Node) -> list[str]:
    """``netweft cni install`` options for ``node``: every path is per node (lab nodes share one
    filesystem), so each node gets its own executable, conflist, IPAM dir, socket and log."""
    return [
        "--bin-dir", node.cni_bin_dir,
        "--conf-dir", node.cni_conf_dir,
        "--subnet-file", node.subnet_env,
        "--data-dir", node.cni_data_dir,
        "--socket-path", node.cni_socket,
        "--log-file", node.cni_log,
    ]


def cni_args(pod: Pod) -> str:
    """``CNI_ARGS`` as a kubelet-style runtime sends them, plus the pod's labels as
    ``NETWEFT_POD_LABELS=k=v,k2=v2`` (the plugin's convention)."""
    parts = [
        "IgnoreUnknown=1",
        "K8S_POD_NAMESPACE=default",
        f"K8S_POD_NAME={pod.name}",
        f"K8S_POD_INFRA_CONTAINER_ID={pod.container_id}",
    ]
    if pod.labels:
        labels = ",".join(f"{k}={v}" for k, v in sorted(pod.labels.items()))
        parts.append(f"NETWEFT_POD_LABELS={labels}")
    return ";".join(parts)
