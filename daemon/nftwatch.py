"""Notices of nftables ruleset changes (``NFNLGRP_NFTABLES`` on ``NETLINK_NETFILTER``), so the
daemon's firewall rules come back as soon as someone removes them instead of at the next check.

``nft monitor`` reads the same multicast group. Each notice names the table it concerns (first
attribute of table, chain, rule, set, element, object and flowtable messages) and its family;
the firewall keeper is poked when one of its own tables is touched. iptables-nft (Debian's
default) changes ``ip nat`` / ``ip filter`` the same way; legacy iptables sends no notices (the
periodic check covers it).
"""

from __future__ import annotations

import socket
import struct
from collections.abc import Callable, Collection

from netweft.daemon.nlwatch import SocketWatcher, attributes, messages, multicast_socket

NETLINK_NETFILTER = 12
NFNLGRP_NFTABLES = 7
NFNL_SUBSYS_NFTABLES = 10
NFT_MSG_NEWGEN = 15  # linux/netfilter/nf_tables.h: NEWTABLE 0 ... DELSETELEM 14, NEWGEN 15
NFGENMSG = struct.Struct("=BBH")  # family, version, resource id (big endian, unused)
NFTA_TABLE = 1  # NFTA_TABLE_NAME, NFTA_CHAIN_TABLE, NFTA_RULE_TABLE, NFTA_SET_TABLE, ...

Table = tuple[int, str]  # (NFPROTO family, table name)


def parse(data: bytes) -> list[Table]:
    """The (family, table) each nftables notice in one datagram concerns. Pure; generation
    notices and other subsystems are skipped, truncated input ends the list."""
    out: list[Table] = []
    for kind, body, end in messages(data):
        if kind >> 8 != NFNL_SUBSYS_NFTABLES or kind & 0xFF == NFT_MSG_NEWGEN \
                or body + NFGENMSG.size > end:
            continue
        family = NFGENMSG.unpack_from(data, body)[0]
        first = next(attributes(data, body + NFGENMSG.size, end), None)
        if first is not None and first[0] == NFTA_TABLE:
            out.append((family, first[1].rstrip(b"\0").decode(errors="replace")))
    return out


def open_socket(netns: str | None = None) -> socket.socket:
    """A socket receiving every nftables change notice of the (given) namespace."""
    return multicast_socket(NETLINK_NETFILTER, 1 << (NFNLGRP_NFTABLES - 1), netns)


class NftWatcher(SocketWatcher):
    """Pokes when one of ``tables`` is created, changed or deleted."""

    def __init__(self, netns: str | None, tables: Collection[Table],
                 poke: Callable[[], None]) -> None:
        wanted = frozenset(tables)

        def wants(datagrams: list[bytes]) -> bool:
            return any(t in wanted for data in datagrams for t in parse(data))

        super().__init__("nftables-events", lambda: open_socket(netns), wants, poke)
