"""The hand-programmed reference dataplane: the same topology as a netweft lab, wired with plain
``ip`` commands the way Flannel's documentation describes the result (a bridge ``cni0`` per
node, a veth per pod, and either a VXLAN device with static neighbour/FDB entries and onlink
routes, or host-gw routes via the peers' underlay addresses), plus masquerade for traffic leaving
the pod network. It is the yardstick of bench/dataplane.py: the kernel's own limit for this
topology, with no netweft code in the path.

Node N gets subnet ``<network>.N.0/24``-style subnets carved in order (the lab's netweft nodes
get random ones; the dataplane is the same).
"""

from __future__ import annotations

from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Interface, IPv4Network

from netweft.daemon import netns
from netweft.daemon.lab.topology import NODE_IFACE, POD_IFACE, Node, Topology
from netweft.daemon.lab.underlay import LabBuildError, ip_batch

BRIDGE = "cni0"
UNDERLAY_MTU = 1500
VXLAN_OVERHEAD = 50


@dataclass(frozen=True)
class NodePlan:
    node: Node
    subnet: IPv4Network
    vtep_mac: str

    @property
    def gateway(self) -> IPv4Interface:
        return IPv4Interface(f"{self.subnet.network_address + 1}/{self.subnet.prefixlen}")


def vxlan_device(vni: int) -> str:
    return f"flannel.{vni}"


def node_plans(topo: Topology) -> list[NodePlan]:
    subnets = topo.spec.network.subnets(new_prefix=topo.spec.subnet_len)
    next(subnets)  # Flannel skips the first subnet
    return [NodePlan(n, next(subnets), f"0e:00:00:00:{n.index // 256:02x}:{n.index % 256:02x}")
            for n in topo.nodes]


def pod_address(plan: NodePlan, index: int) -> IPv4Interface:
    return IPv4Interface(f"{plan.subnet.network_address + 1 + index}/{plan.subnet.prefixlen}")


def mtu(topo: Topology) -> int:
    return UNDERLAY_MTU - VXLAN_OVERHEAD if topo.spec.backend == "vxlan" else UNDERLAY_MTU


def peer_lines(topo: Topology, me: NodePlan,
               peers: list[NodePlan]) -> tuple[list[str], list[str]]:
    """(``ip`` lines, ``bridge`` lines) programming every peer of ``me``."""
    lines: list[str] = []
    fdb: list[str] = []
    dev = vxlan_device(topo.spec.vni)
    for peer in peers:
        if peer.node.name == me.node.name:
            continue
        if topo.spec.backend == "vxlan":
            gw = peer.subnet.network_address
            lines += [
                f"neigh replace {gw} lladdr {peer.vtep_mac} dev {dev} nud permanent",
                f"route replace {peer.subnet} via {gw} dev {dev} onlink",
            ]
            fdb.append(f"fdb append {peer.vtep_mac} dev {dev} dst {peer.node.ip} self permanent")
        else:
            lines.append(f"route replace {peer.subnet} via {peer.node.ip} dev {NODE_IFACE}")
    return lines, fdb


def program_node(topo: Topology, me: NodePlan, peers: list[NodePlan]) -> None:
    ns = me.node.netns
    lines = [
        f"link add {BRIDGE} type bridge",
        f"link set {BRIDGE} mtu {mtu(topo)}",
        f"addr add {me.gateway} dev {BRIDGE}",
        f"link set {BRIDGE} up",
    ]
    if topo.spec.backend == "vxlan":
        dev = vxlan_device(topo.spec.vni)
        lines += [
            f"link add {dev} address {me.vtep_mac} type vxlan id {topo.spec.vni} "
            f"local {me.node.ip} dev {NODE_IFACE} dstport {topo.spec.port} nolearning",
            f"addr add {me.subnet.network_address}/32 dev {dev}",
            f"link set {dev} up",
        ]
    ip_batch(ns, lines)
    routes, fdb = peer_lines(topo, me, peers)
    ip_batch(ns, fdb, tool="bridge")
    ip_batch(ns, routes)
    masquerade(topo, me)


def masquerade(topo: Topology, me: NodePlan) -> None:
    net = topo.spec.network
    rules = (f"table ip reference-nat {{\n chain postrouting {{\n"
             f"  type nat hook postrouting priority srcnat; policy accept;\n"
             f"  ip saddr {net} ip daddr != {net} masquerade\n }}\n}}\n")
    proc = netns.run(me.node.netns, ["nft", "-f", "-"], input=rules, check=False)
    if proc.returncode != 0:
        raise LabBuildError(f"nft in {me.node.netns}: {proc.stderr.strip()}")


def wire_pod(topo: Topology, me: NodePlan, pod_ns: str, index: int) -> IPv4Address:
    """A veth from the node's bridge into ``pod_ns`` with the pod's address and default route."""
    host_end = f"vethpod{index}"
    addr = pod_address(me, index)
    if not netns.exists(pod_ns):
        netns.add(pod_ns)
    ip_batch(me.node.netns, [
        f"link add {host_end} mtu {mtu(topo)} type veth peer name {POD_IFACE} netns {pod_ns}",
        f"link set {host_end} master {BRIDGE} up",
    ])
    ip_batch(pod_ns, [
        f"link set {POD_IFACE} mtu {mtu(topo)}",
        f"addr add {addr} dev {POD_IFACE}",
        f"link set {POD_IFACE} up",
        f"route add default via {me.gateway.ip} dev {POD_IFACE}",
    ])
    return addr.ip


def program(topo: Topology) -> dict[str, IPv4Address]:
    """Program every node and pod of ``topo`` by hand; returns the pod addresses."""
    plans = node_plans(topo)
    for me in plans:
        program_node(topo, me, plans)
    by_node = {p.node.name: p for p in plans}
    addresses = {}
    for node in topo.nodes:
        for k, pod in enumerate(topo.pods_on(node.name), start=1):
            addresses[pod.name] = wire_pod(topo, by_node[node.name], pod.netns, k)
    return addresses
