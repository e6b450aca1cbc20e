"""The tests' small "physical" network: the shared builder (netweft.daemon.lab.underlay, the
lab's own) over namespaces the test made, plus the test-only pieces (a pod-bridge stand-in,
ping).

Addresses are the lab's plan (netweft.daemon.lab.topology): the outside host, when given, is
``.1`` and the nodes' default gateway; the test's nodes are numbered from 0, node N at
``.(10+N)`` (node0 = 192.0.2.10, node1 = 192.0.2.11, as the lab's node N).
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Interface

from netweft.daemon import netns
from netweft.daemon.lab import underlay as shared
from netweft.daemon.lab.topology import GATEWAY_IP, node_ip


@dataclass(frozen=True)
class UnderlayNode:
    ns: str
    ip: IPv4Address
    iface: str = "eth0"


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True)


def build(underlay_ns: str, node_nss: list[str], outside_ns: str | None = None,
          mtu: int | None = None) -> list[UnderlayNode]:
    """Wire existing namespaces: the bridge in ``underlay_ns``, ``eth0`` in each node (node i at
    ``node_ip(i)``) and, if given, ``eth0`` = the gateway address in ``outside_ns``, which then
    is the nodes' default route. ``mtu``: bytes on every veth (None: 1500). Raises
    ``LabBuildError`` when an ``ip`` command fails."""
    shared.create_underlay(underlay_ns)
    if outside_ns:
        shared.attach_host(underlay_ns, shared.Host(outside_ns, "outside", GATEWAY_IP, mtu=mtu))
    nodes = []
    for i, ns in enumerate(node_nss):
        host = shared.Host(ns, f"p{i}", node_ip(i), gateway=GATEWAY_IP if outside_ns else None,
                           mtu=mtu)
        shared.attach_host(underlay_ns, host)
        nodes.append(UnderlayNode(ns, host.ip))
    return nodes


def add_pod_stand_in(ns: str, addr: IPv4Interface, name: str = "nwpod0") -> None:
    """A veth pair standing in for the pod bridge (this kernel has no ``dummy`` link type)."""
    _ip("-n", ns, "link", "add", name, "type", "veth", "peer", "name", f"{name}p")
    _ip("-n", ns, "addr", "add", str(addr), "dev", name)
    _ip("-n", ns, "link", "set", f"{name}p", "up")
    _ip("-n", ns, "link", "set", name, "up")


def ping(ns: str, dst: IPv4Address | str, src: IPv4Address | str | None = None,
         count: int = 1, timeout: int = 2) -> bool:
    """True when ``ping -c count -W timeout(seconds)`` from ``ns`` gets an answer."""
    cmd = ["ping", "-c", str(count), "-W", str(timeout)]
    if src is not None:
        cmd += ["-I", str(src)]
    return netns.run(ns, [*cmd, str(dst)], check=False).returncode == 0
