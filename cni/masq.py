"""``ipMasq``: masquerade traffic from pod addresses leaving the cluster network (nftables).

One table per family (``netweft-cni``); per network a named set of pod addresses and a NAT chain
hooked at postrouting with a single rule, so adding or removing a pod is a set-element change in
one transaction (rules are flushed and rewritten, never duplicated). The transactions are typed
(``netweft.backends.nft.tx``, built by the pure :func:`add_transactions` and
:func:`remove_transactions`) and applied by the one applier (``netweft.backends.nft.applier``,
``nft -f -`` in the calling thread's namespace, as the plugin always ran it); tests apply them to
the fake (tests/support/fake_nft.py).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network
from typing import Protocol

from netweft.backends.nft.applier import NftApplier, NftError
from netweft.backends.nft.tx import (
    AddChain,
    AddRules,
    AddSet,
    AddTable,
    Chain,
    Element,
    FlushChain,
    Hook,
    NftSet,
    Transaction,
)

TABLE = "netweft-cni"
SET_PREFIX = "pods-"    # + the network's ident: the pod addresses to masquerade
CHAIN_PREFIX = "post-"  # + the network's ident: the NAT chain at postrouting
POSTROUTING = Hook("nat", "postrouting", "srcnat")


class MasqError(Exception):
    """``nft`` is missing or refused the transaction; ``str(exc)`` is one line (nft's last error
    line)."""


class Applier(Protocol):
    """What applies the transactions: ``NftApplier`` (or the test fake)."""

    def apply_all(self, changes: list[Transaction]) -> int: ...


@dataclass(frozen=True)
class _Family:
    """nft's names for one IP version: table family, set type, match keyword, multicast."""

    family: str
    set_type: str
    proto: str
    multicast: str


_FAMILIES = {4: _Family("ip", "ipv4_addr", "ip", "224.0.0.0/4"),
             6: _Family("ip6", "ipv6_addr", "ip6", "ff00::/8")}


def _ident(network: str) -> str:
    return hashlib.sha256(network.encode()).hexdigest()[:10]


def set_name(network: str) -> str:
    """The set of ``network``'s pod addresses (``pods-<10 hex digits of sha256(network)>``)."""
    return SET_PREFIX + _ident(network)


def chain_name(network: str) -> str:
    """``network``'s postrouting NAT chain (``post-<10 hex digits of sha256(network)>``)."""
    return CHAIN_PREFIX + _ident(network)


def add_transactions(network: str, cluster: IPv4Network | IPv6Network,
                     pods: list[IPv4Address | IPv6Address]) -> list[Transaction]:
    """Pure: the transactions (one per family with members of ``cluster``'s version) that make
    ``pods`` masquerade when they talk to anything outside ``cluster`` (and not multicast)."""
    sets, chain = set_name(network), chain_name(network)
    out = []
    for version, fam in _FAMILIES.items():
        members = [p for p in pods if p.version == version]
        if not members or cluster.version != version:
            continue
        rule = (f"{fam.proto} saddr @{sets} {fam.proto} daddr != {cluster} "
                f"{fam.proto} daddr != {fam.multicast} masquerade")
        tx = Transaction(fam.family, TABLE)
        tx.add(AddTable()).add(AddSet(NftSet(sets, f"type {fam.set_type}")))
        tx.add(AddChain(Chain(chain, hook=POSTROUTING))).add(FlushChain(chain))
        tx.add(AddRules(chain, (rule,)))
        tx.add_elements(sets, [Element(str(p)) for p in members])
        out.append(tx)
    return out


def remove_transactions(network: str,
                        pods: list[IPv4Address | IPv6Address]) -> list[Transaction]:
    """Pure: the transactions that forget ``pods``, fine when they (or the whole table) were
    never there: add-then-delete in one transaction succeeds whether or not they existed."""
    sets = set_name(network)
    out = []
    for version, fam in _FAMILIES.items():
        members = [str(p) for p in pods if p.version == version]
        if not members:
            continue
        tx = Transaction(fam.family, TABLE)
        tx.add(AddTable()).add(AddSet(NftSet(sets, f"type {fam.set_type}")))
        tx.add_elements(sets, [Element(m) for m in members])
        tx.delete_elements(sets, members)
        out.append(tx)
    return out


def _apply(changes: list[Transaction], nft: Applier | None) -> None:
    if not changes:
        return
    try:
        (nft or NftApplier(use_library=False)).apply_all(changes)
    except FileNotFoundError:
        raise MasqError("ipMasq needs the nft command (nftables)") from None
    except NftError as exc:
        raise MasqError(f"nft: {exc}") from None


def add(network: str, cluster: IPv4Network | IPv6Network,
        pods: list[IPv4Address | IPv6Address], nft: Applier | None = None) -> None:
    """Masquerade ``pods`` when they talk to anything outside ``cluster`` (and not multicast).
    Raises MasqError."""
    _apply(add_transactions(network, cluster, pods), nft)


def remove(network: str, pods: list[IPv4Address | IPv6Address],
           nft: Applier | None = None) -> None:
    """Forget ``pods``; fine when they (or the whole table) were never there. Raises
    MasqError."""
    _apply(remove_transactions(network, pods), nft)
