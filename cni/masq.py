"""``ipMasq``: masquerade traffic from pod addresses leaving the cluster network (nftables).

One table per family (``netweft-cni``); per network a named set of pod addresses and a NAT chain
hooked at postrouting with a single rule, so adding or removing a pod is a set-element change in
one ``nft -f -`` transaction (rules are flushed and rewritten, never duplicated).
"""

from __future__ import annotations

import hashlib
import subprocess
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network

TABLE = "netweft-cni"


class MasqError(Exception):
    """``nft`` is missing or refused the transaction; ``str(exc)`` is one line (nft's last error
    line)."""


def _ident(network: str) -> str:
    return hashlib.sha256(network.encode()).hexdigest()[:10]


def _family(version: int) -> tuple[str, str, str, str]:
    if version == 4:
        return "ip", "ipv4_addr", "ip", "224.0.0.0/4"
    return "ip6", "ipv6_addr", "ip6", "ff00::/8"


def _run(script: str) -> None:
    try:
        proc = subprocess.run(["nft", "-f", "-"], input=script, text=True, capture_output=True,
                              timeout=30)
    except FileNotFoundError:
        raise MasqError("ipMasq needs the nft command (nftables)") from None
    if proc.returncode != 0:
        raise MasqError(f"nft: {proc.stderr.strip().splitlines()[-1] if proc.stderr else '?'}")


def add(network: str, cluster: IPv4Network | IPv6Network,
        pods: list[IPv4Address | IPv6Address]) -> None:
    """Masquerade ``pods`` when they talk to anything outside ``cluster`` (and not multicast)."""
    ident = _ident(network)
    lines = []
    for version in (4, 6):
        members = [p for p in pods if p.version == version]
        if not members or cluster.version != version:
            continue
        fam, settype, proto, mcast = _family(version)
        lines += [
            f"add table {fam} {TABLE}",
            f"add set {fam} {TABLE} pods-{ident} {{ type {settype}; }}",
            f"add chain {fam} {TABLE} post-{ident} "
            "{ type nat hook postrouting priority srcnat; }",
            f"flush chain {fam} {TABLE} post-{ident}",
            f"add rule {fam} {TABLE} post-{ident} {proto} saddr @pods-{ident} "
            f"{proto} daddr != {cluster} {proto} daddr != {mcast} masquerade",
            f"add element {fam} {TABLE} pods-{ident} {{ {', '.join(map(str, members))} }}",
        ]
    if lines:
        _run("\n".join(lines) + "\n")


def remove(network: str, pods: list[IPv4Address | IPv6Address]) -> None:
    """Forget ``pods``; fine when they (or the whole table) were never there."""
    ident = _ident(network)
    lines = []
    for version in (4, 6):
        members = [p for p in pods if p.version == version]
        if not members:
            continue
        fam, settype, _, _ = _family(version)
        elems = ", ".join(map(str, members))
        # add-then-delete in one transaction: succeeds whether or not the element existed
        lines += [
            f"add table {fam} {TABLE}",
            f"add set {fam} {TABLE} pods-{ident} {{ type {settype}; }}",
            f"add element {fam} {TABLE} pods-{ident} {{ {elems} }}",
            f"delete element {fam} {TABLE} pods-{ident} {{ {elems} }}",
        ]
    if lines:
        _run("\n".join(lines) + "\n")
