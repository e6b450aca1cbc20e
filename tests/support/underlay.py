"""A small "physical" network of namespaces for node-level tests and benchmarks.

An underlay namespace holds a bridge; every node namespace gets an ``eth0`` veth whose other end
is plugged into that bridge (the veth is created from inside the node namespace, so nothing is
ever added to the root namespace). Optionally an "outside" namespace on the same bridge acts as
the nodes' default gateway, the stand-in for the world beyond the cluster.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Interface, IPv4Network

from netweft.daemon import netns


@dataclass(frozen=True)
class UnderlayNode:
    ns: str
    ip: IPv4Address
    iface: str = "eth0"


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True)


def build(underlay_ns: str, node_nss: list[str], outside_ns: str | None = None,
          network: IPv4Network | None = None, first_host: int = 10,
          mtu: int = 1500) -> list[UnderlayNode]:
    """Wire existing namespaces: a bridge in ``underlay_ns``, ``eth0`` in each node (addresses
    from ``first_host`` on) and, if given, ``eth0`` = .1 in ``outside_ns`` as default gateway."""
    network = network or IPv4Network("192.0.2.0/24")
    _ip("-n", underlay_ns, "link", "add", "br0", "type", "bridge")
    _ip("-n", underlay_ns, "link", "set", "br0", "up")
    gateway = network.network_address + 1
    plen = network.prefixlen
    members = list(node_nss) + ([outside_ns] if outside_ns else [])
    nodes = []
    for i, ns in enumerate(members):
        port = f"p{i}"
        _ip("-n", ns, "link", "add", "eth0", "mtu", str(mtu), "type", "veth", "peer", "name",
            port, "netns", underlay_ns)
        _ip("-n", underlay_ns, "link", "set", port, "mtu", str(mtu), "master", "br0", "up")
        addr = gateway if ns == outside_ns else network.network_address + first_host + i
        _ip("-n", ns, "addr", "add", f"{addr}/{plen}", "dev", "eth0")
        _ip("-n", ns, "link", "set", "eth0", "up")
        if ns != outside_ns:
            if outside_ns:
                _ip("-n", ns, "route", "add", "default", "via", str(gateway))
            nodes.append(UnderlayNode(ns, IPv4Address(addr)))
    return nodes


def add_pod_stand_in(ns: str, addr: IPv4Interface, name: str = "nwpod0") -> None:
    """A veth pair standing in for the pod bridge (this kernel has no ``dummy`` link type)."""
    _ip("-n", ns, "link", "add", name, "type", "veth", "peer", "name", f"{name}p")
    _ip("-n", ns, "addr", "add", str(addr), "dev", name)
    _ip("-n", ns, "link", "set", f"{name}p", "up")
    _ip("-n", ns, "link", "set", name, "up")


def ping(ns: str, dst: IPv4Address | str, src: IPv4Address | str | None = None,
         count: int = 1, timeout: int = 2) -> bool:
    cmd = ["ping", "-c", str(count), "-W", str(timeout)]
    if src is not None:
        cmd += ["-I", str(src)]
    return netns.run(ns, [*cmd, str(dst)], check=False).returncode == 0
