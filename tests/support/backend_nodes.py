"""Nodes for the backends' kernel tests: namespaces on the shared underlay (support.underlay),
each with its public side selected (``eth0``), a pod-bridge stand-in at ``10.244.<i>.1/24`` and
a netlink handle; the test programs backends on them directly (no daemon)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from ipaddress import IPv4Interface, IPv4Network
from pathlib import Path

from netweft.backends.netlink import Netlink
from netweft.daemon import iface

from support import underlay


@dataclass
class BackendNode:
    ns: str
    nl: Netlink
    side: iface.PublicSide
    subnet: IPv4Network       # 10.244.<i>.0/24, i counting from 1
    state: Path               # a per-node state directory (not created here)


def build_nodes(make_ns: Callable[[str], str], count: int, state_root: Path) -> list[BackendNode]:
    """``count`` nodes on one new underlay; the caller closes each node's ``nl``."""
    built = underlay.build(make_ns("bul"), [make_ns("bn") for _ in range(count)])
    out = []
    for i, n in enumerate(built):
        nl = Netlink(netns=n.ns)
        side = iface.select(nl, iface.IfaceOptions(ifaces=("eth0",)))
        underlay.add_pod_stand_in(n.ns, IPv4Interface(f"10.244.{i + 1}.1/24"))
        out.append(BackendNode(n.ns, nl, side, IPv4Network(f"10.244.{i + 1}.0/24"),
                               state_root / f"node{i + 1}"))
    return out
