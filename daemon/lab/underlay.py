"""The one builder of the "physical" network every multi-namespace setup uses: the lab
(``netweft lab``), the tests' node labs (tests/support/nodelab.py), the proxy testbed
(tests/support/proxy_testbed.py) and the benchmarks.

Shape: an underlay namespace holding bridge ``br0``; every host is a namespace with one ``eth0``
veth whose other end (``port``) is plugged into that bridge. Addresses follow the one plan in
:mod:`netweft.daemon.lab.topology` (``192.0.2.0/24``: ``.1`` the outside host and the nodes'
gateway, ``.2`` etcd, node N at ``.(10+N)``). Everything happens inside the caller's namespaces
(``ip -n <ns>``; the veth is created in the underlay namespace and its peer moved into the host's
namespace): nothing is ever added to the root namespace. Errors: :class:`LabBuildError`."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from ipaddress import IPv4Address

from netweft.daemon import netns
from netweft.daemon.lab.topology import (
    ETCD_IP,
    GATEWAY_IP,
    INTERNET_IP,
    NODE_IFACE,
    UNDERLAY,
    UNDERLAY_BRIDGE,
    Node,
    Topology,
)


class LabBuildError(RuntimeError):
    """An ``ip`` command of the lab builder failed (the message holds the command and error)."""


@dataclass(frozen=True)
class Host:
    """A namespace with one ``eth0`` on the underlay bridge (address ``ip``/24 of the plan;
    ``gateway``: its default route; ``forwarding``: ``net.ipv4.ip_forward=1``; ``mtu``: bytes on
    both veth ends, the kernel's default 1500 when None)."""

    netns: str
    port: str            # its veth end on the bridge, in the underlay namespace
    ip: IPv4Address
    gateway: IPv4Address | None = None
    forwarding: bool = False
    mtu: int | None = None


def ip_batch(ns: str, lines: list[str], tool: str = "ip") -> None:
    """Run ``ip -n ns -batch -`` (or ``bridge``) with ``lines``; one failure fails the build."""
    if not lines:
        return
    proc = subprocess.run([tool, "-n", ns, "-batch", "-"], input="\n".join(lines) + "\n",
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise LabBuildError(f"{tool} -n {ns}: {proc.stderr.strip()}")


def sysctl(ns: str, key: str, value: str) -> None:
    """``sysctl -w key=value`` inside ``ns``; :class:`LabBuildError` when it fails."""
    proc = netns.run(ns, ["sysctl", "-q", "-w", f"{key}={value}"], check=False)
    if proc.returncode != 0:
        raise LabBuildError(f"sysctl {key} in {ns}: {proc.stderr.strip()}")


def infra_hosts(topo: Topology) -> list[Host]:
    """The lab's outside host (gateway, forwarding) and etcd host, at the plan's addresses."""
    return [
        Host(topo.outside_ns, "outside", GATEWAY_IP, forwarding=True),
        Host(topo.etcd_ns, "etcd", ETCD_IP),
    ]


def node_host(node: Node) -> Host:
    """A lab node as a host: its plan address, default route via the outside host."""
    return Host(node.netns, node.underlay_port, node.ip, gateway=GATEWAY_IP, forwarding=True)


def create_underlay(underlay_ns: str) -> None:
    """Bridge ``br0`` (no STP, no forward delay) in ``underlay_ns``, created when missing."""
    if not netns.exists(underlay_ns):
        netns.add(underlay_ns)
    ip_batch(underlay_ns, [
        f"link add {UNDERLAY_BRIDGE} type bridge stp_state 0 forward_delay 0",
        f"link set {UNDERLAY_BRIDGE} up",
    ])


def attach_host(underlay_ns: str, host: Host) -> None:
    """Create ``host``'s namespace (unless it exists) and wire its ``eth0`` to the bridge of
    ``underlay_ns``."""
    if not netns.exists(host.netns):
        netns.add(host.netns)
    mtu = f" mtu {host.mtu}" if host.mtu is not None else ""
    ip_batch(underlay_ns, [
        f"link add {host.port}{mtu} type veth peer name {NODE_IFACE}{mtu} netns {host.netns}",
        f"link set {host.port} master {UNDERLAY_BRIDGE} up",
    ])
    lines = [
        f"addr add {host.ip}/{UNDERLAY.prefixlen} dev {NODE_IFACE}",
        f"link set {NODE_IFACE} up",
    ]
    if host.gateway is not None:
        lines.append(f"route add default via {host.gateway} dev {NODE_IFACE}")
    ip_batch(host.netns, lines)
    if host.forwarding:
        sysctl(host.netns, "net.ipv4.ip_forward", "1")


def build_outside_extras(topo: Topology) -> None:
    """The outside host also owns the "internet" address; it has no route to the pod network,
    so a pod only gets an answer from it when the node masquerades the pod's traffic."""
    ip_batch(topo.outside_ns, [f"addr add {INTERNET_IP}/32 dev lo"])


def build(topo: Topology) -> None:
    """Namespaces + underlay for the infra hosts and every node of ``topo``."""
    create_underlay(topo.underlay_ns)
    for host in infra_hosts(topo):
        attach_host(topo.underlay_ns, host)
    build_outside_extras(topo)
    for node in topo.nodes:
        attach_host(topo.underlay_ns, node_host(node))


def detach_node(topo: Topology, node: Node) -> None:
    """Remove a node's bridge port and namespace (deleting the port at once: a namespace's
    links go away asynchronously after ``ip netns delete``)."""
    subprocess.run(["ip", "-n", topo.underlay_ns, "link", "del", node.underlay_port],
                   capture_output=True)
    netns.delete(node.netns)
