"""A small rtnetlink codec for the CNI hot path: links, addresses and routes.

pyroute2 is the general tool (bridge management, CHECK, GC listing) but its marshalling costs
0.4-0.5 ms per message and every call goes through an event loop; the ADD/DEL path needs about a
dozen messages, so it packs them with :mod:`struct` and sends several in one ``send`` (the kernel
processes a batch in order and acknowledges each message).
"""

from __future__ import annotations

import errno
import itertools
import os
import socket
import struct
from collections.abc import Callable
from dataclasses import dataclass
from ipaddress import (
    IPv4Address,
    IPv4Interface,
    IPv4Network,
    IPv6Address,
    IPv6Interface,
    ip_network,
)
from typing import TypeVar

NLMSG_HDR = struct.Struct("=IHHII")
IFINFOMSG = struct.Struct("=BxHiII")
IFADDRMSG = struct.Struct("=BBBBI")
RTMSG = struct.Struct("=BBBBBBBBI")
NDMSG = struct.Struct("=BxxxiHBB")
NLA_HDR = struct.Struct("=HH")

NLMSG_ERROR, NLMSG_DONE = 2, 3
NLM_F_REQUEST, NLM_F_ACK, NLM_F_EXCL, NLM_F_CREATE = 0x1, 0x4, 0x200, 0x400
NLM_F_REPLACE = 0x100
RTM_NEWLINK, RTM_DELLINK, RTM_GETLINK, RTM_SETLINK = 16, 17, 18, 19
RTM_NEWADDR, RTM_GETADDR, RTM_NEWROUTE, RTM_DELROUTE = 20, 22, 24, 25
RTM_NEWNEIGH, RTM_DELNEIGH, RTM_GETNEIGH, RTM_GETROUTE = 28, 29, 30, 26
NDA_DST, NDA_LLADDR = 1, 2
NUD_PERMANENT, NTF_SELF, RTNH_F_ONLINK = 0x80, 0x02, 4
NLM_F_DUMP = 0x300
IFLA_ADDRESS, IFLA_IFNAME, IFLA_MTU, IFLA_MASTER = 1, 3, 4, 10
IFLA_PROTINFO, IFLA_LINKINFO, IFLA_NET_NS_FD, IFLA_IFALIAS = 12, 18, 28, 20
IFLA_INFO_KIND, IFLA_INFO_DATA, VETH_INFO_PEER = 1, 2, 1
IFLA_BRPORT_MODE = 4
IFA_LOCAL, IFA_ADDRESS = 2, 1
RTA_TABLE, RTA_PREFSRC, RTA_MULTIPATH = 15, 7, 9
RTM_DELADDR = 21
IFLA_VXLAN_ID, IFLA_VXLAN_LINK, IFLA_VXLAN_LOCAL, IFLA_VXLAN_LEARNING = 1, 3, 4, 7
IFLA_VXLAN_PORT = 15
IFA_F_NODAD = 0x02
IFA_FLAGS = 8
RTA_DST, RTA_OIF, RTA_GATEWAY = 1, 4, 5
NLA_F_NESTED = 0x8000
IFF_UP = 0x1
AF_BRIDGE = 7
RT_TABLE_MAIN, RTPROT_BOOT, RT_SCOPE_UNIVERSE, RT_SCOPE_LINK, RTN_UNICAST = 254, 3, 0, 253, 1
RT_SCOPE_NOWHERE = 255
WINDOW = 128  # messages per send in send_all: their acks fit the receive buffer

_seq = itertools.count(1)
T = TypeVar("T")


class RtnlError(OSError):
    """A netlink request failed; ``errno`` is the kernel's error."""


def _attr(kind: int, payload: bytes) -> bytes:
    length = NLA_HDR.size + len(payload)
    return NLA_HDR.pack(length, kind) + payload + b"\0" * ((4 - length % 4) % 4)


def _str(kind: int, value: str) -> bytes:
    return _attr(kind, value.encode() + b"\0")


def _u32(kind: int, value: int) -> bytes:
    return _attr(kind, struct.pack("=I", value))


def _mac(value: str) -> bytes:
    return bytes(int(x, 16) for x in value.split(":"))


def format_mac(raw: bytes) -> str:
    return ":".join(f"{b:02x}" for b in raw)


def _msg(kind: int, flags: int, body: bytes) -> tuple[int, bytes]:
    seq = next(_seq) & 0x7FFFFFFF
    return seq, NLMSG_HDR.pack(NLMSG_HDR.size + len(body), kind, flags, seq, 0) + body


def parse_attrs(data: bytes, offset: int) -> dict[int, bytes]:
    out: dict[int, bytes] = {}
    end = len(data)
    while offset + 4 <= end:
        length, kind = NLA_HDR.unpack_from(data, offset)
        if length < 4:
            break
        out[kind & 0x3FFF] = data[offset + 4: offset + length]
        offset += (length + 3) & ~3
    return out


@dataclass(frozen=True)
class Link:
    index: int
    name: str
    mac: str
    mtu: int
    master: int
    up: bool
    kind: str = ""
    alias: str = ""  # ifalias ("" when unset)


def _parse_link(body: bytes) -> Link:
    _family, _type, index, flags, _change = IFINFOMSG.unpack_from(body, 0)
    attrs = parse_attrs(body, IFINFOMSG.size)
    return Link(
        index=index,
        name=attrs.get(IFLA_IFNAME, b"").rstrip(b"\0").decode(),
        mac=format_mac(attrs.get(IFLA_ADDRESS, b"")),
        mtu=struct.unpack("=I", attrs[IFLA_MTU])[0] if IFLA_MTU in attrs else 0,
        master=struct.unpack("=I", attrs[IFLA_MASTER])[0] if IFLA_MASTER in attrs else 0,
        up=bool(flags & IFF_UP),
        kind=parse_attrs(attrs.get(IFLA_LINKINFO, b""), 0).get(IFLA_INFO_KIND, b"")
        .rstrip(b"\0").decode(),
        alias=attrs.get(IFLA_IFALIAS, b"").rstrip(b"\0").decode(errors="replace"),
    )


class RawRtnl:
    """One raw NETLINK_ROUTE socket in the namespace current when it was opened; messages are
    packed with :mod:`struct` and sent in batches (the CNI hot path). The typed layer over it
    that the daemon and the backends use is ``backends.netlink.Netlink``."""

    def __init__(self, sock: socket.socket | None = None) -> None:
        """``sock``: a NETLINK_ROUTE socket opened elsewhere (e.g. in another namespace)."""
        self.sock = sock if sock is not None else socket.socket(
            socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, socket.NETLINK_ROUTE)
        self.sock.bind((0, 0))

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> RawRtnl:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def batch(self, messages: list[tuple[int, bytes]],
              ignore: tuple[int, ...] = ()) -> dict[int, bytes]:
        """Send messages in one write; return {seq: reply body} for non-ack replies.

        Raises the first error (by message order) whose errno is not in ``ignore``."""
        self.sock.send(b"".join(m for _, m in messages))
        pending = {seq for seq, _ in messages}
        order = [seq for seq, _ in messages]
        replies: dict[int, bytes] = {}
        errors: dict[int, int] = {}
        while pending:
            data = self.sock.recv(65536)
            offset = 0
            while offset + NLMSG_HDR.size <= len(data):
                length, kind, _flags, seq, _pid = NLMSG_HDR.unpack_from(data, offset)
                body = data[offset + NLMSG_HDR.size: offset + length]
                offset += (length + 3) & ~3
                if seq not in pending:
                    continue
                if kind == NLMSG_ERROR:
                    code = -struct.unpack_from("=i", body, 0)[0]
                    if code:
                        errors[seq] = code
                    pending.discard(seq)
                elif kind == NLMSG_DONE:
                    pending.discard(seq)
                else:
                    replies[seq] = body
        for seq in order:
            code = errors.get(seq)
            if code and code not in ignore:
                raise RtnlError(code, os.strerror(code))
        return replies

    def send_all(self, messages: list[tuple[int, bytes]], window: int = WINDOW) -> dict[int, int]:
        """Send requests that want only an ack, ``window`` per write (the kernel handles a
        write's messages in order, each acked; a window's acks fit the receive buffer), and
        return {seq: errno} for those that failed. Any number of messages."""
        errors: dict[int, int] = {}
        for start in range(0, len(messages), window):
            chunk = messages[start:start + window]
            self.sock.send(b"".join(m for _, m in chunk))
            pending = {seq for seq, _ in chunk}
            while pending:
                data = self.sock.recv(65536)
                offset = 0
                while offset + NLMSG_HDR.size <= len(data):
                    length, kind, _flags, seq, _pid = NLMSG_HDR.unpack_from(data, offset)
                    if kind == NLMSG_ERROR and seq in pending:
                        code = -struct.unpack_from("=i", data, offset + NLMSG_HDR.size)[0]
                        if code:
                            errors[seq] = code
                        pending.discard(seq)
                    offset += (length + 3) & ~3
        return errors

    def call(self, message: tuple[int, bytes], ignore: tuple[int, ...] = ()) -> bytes | None:
        return self.batch([message], ignore).get(message[0])

    # -- requests -----------------------------------------------------------------------------
    @staticmethod
    def getlink_msg(name: str) -> tuple[int, bytes]:
        return _msg(RTM_GETLINK, NLM_F_REQUEST | NLM_F_ACK,
                    IFINFOMSG.pack(0, 0, 0, 0, 0) + _str(IFLA_IFNAME, name))

    def link(self, name: str) -> Link | None:
        seq, msg = self.getlink_msg(name)
        try:
            body = self.batch([(seq, msg)]).get(seq)
        except RtnlError as exc:
            if exc.errno == errno.ENODEV:
                return None
            raise
        return _parse_link(body) if body else None

    def dump(self, kind: int, body: bytes) -> list[bytes]:
        """The bodies of every message a ``kind`` dump request (``body``: its header, e.g. an
        ndmsg carrying the family) answers. Raises RtnlError."""
        return self.dump_each(kind, body, lambda part: part)

    def dump_each(self, kind: int, body: bytes, parse: Callable[[bytes], T | None]) -> list[T]:
        """``parse(reply body)`` for every message a ``kind`` dump answers, as each arrives,
        the Nones left out: no list of raw replies or of their attribute dicts is ever held
        (for the daemon's 15,000 peer entries those were ~8 MiB of small objects at every
        full pass, issue 12). The dump is read to its end even when ``parse`` raises. Raises
        RtnlError."""
        seq, msg = _msg(kind, NLM_F_REQUEST | NLM_F_DUMP, body)
        self.sock.send(msg)
        out: list[T] = []
        failure: BaseException | None = None
        while True:
            data = self.sock.recv(1 << 17)
            offset = 0
            while offset + NLMSG_HDR.size <= len(data):
                length, rkind, _flags, rseq, _pid = NLMSG_HDR.unpack_from(data, offset)
                start, offset = offset, offset + ((length + 3) & ~3)
                if rseq != seq:
                    continue
                if rkind == NLMSG_DONE:
                    if failure is not None:
                        raise failure
                    return out
                part = data[start + NLMSG_HDR.size: start + length]
                if rkind == NLMSG_ERROR:
                    code = -struct.unpack_from("=i", part, 0)[0]
                    if code:
                        raise RtnlError(code, os.strerror(code))
                    if failure is not None:
                        raise failure
                    return out
                if failure is None:
                    try:
                        item = parse(part)
                    except Exception as exc:  # noqa: BLE001 - raised once the dump is read
                        failure = exc
                        continue
                    if item is not None:
                        out.append(item)

    def addresses(self, index: int) -> list[tuple[str, int]]:
        """(address, prefix length) of every address on link ``index`` (one dump)."""
        out: list[tuple[str, int]] = []
        for body in self.dump(RTM_GETADDR, IFADDRMSG.pack(socket.AF_UNSPEC, 0, 0, 0, 0)):
            family, plen, _f, _scope, ifindex = IFADDRMSG.unpack_from(body, 0)
            if ifindex != index:
                continue
            attrs = parse_attrs(body, IFADDRMSG.size)
            raw = attrs.get(IFA_LOCAL) or attrs.get(IFA_ADDRESS)
            if raw:
                out.append((socket.inet_ntop(family, raw), plen))
        return out

    def links(self) -> list[Link]:
        """Every link of this namespace (one dump)."""
        return [_parse_link(body) for body in self.dump(RTM_GETLINK, IFINFOMSG.pack(0, 0, 0, 0, 0))]

    def link_names(self) -> dict[int, str]:
        """{index: name} of every link (one dump)."""
        out: dict[int, str] = {}
        for body in self.dump(RTM_GETLINK, IFINFOMSG.pack(0, 0, 0, 0, 0)):
            index = IFINFOMSG.unpack_from(body, 0)[2]
            out[index] = parse_attrs(body, IFINFOMSG.size).get(IFLA_IFNAME, b"").rstrip(
                b"\0").decode()
        return out

    def neighbours(self, family: int) -> list[tuple[int, int, int, dict[int, bytes]]]:
        """(ifindex, state, flags, attributes) of every neighbour entry of ``family``
        (AF_INET: ARP entries; AF_BRIDGE: forwarding database entries)."""
        out = []
        for body in self.dump(RTM_GETNEIGH, NDMSG.pack(family, 0, 0, 0, 0)):
            fam, index, state, flags, _type = NDMSG.unpack_from(body, 0)
            if fam == family:
                out.append((index, state, flags, parse_attrs(body, NDMSG.size)))
        return out

    def routes(self, family: int) -> list[tuple[tuple[int, ...], dict[int, bytes]]]:
        """(rtmsg fields: family, dst_len, src_len, tos, table, protocol, scope, type, flags;
        attributes) of every route of ``family``, all tables."""
        out = []
        for body in self.dump(RTM_GETROUTE, RTMSG.pack(family, 0, 0, 0, 0, 0, 0, 0, 0)):
            out.append((RTMSG.unpack_from(body, 0), parse_attrs(body, RTMSG.size)))
        return out

    @staticmethod
    def veth_msg(name: str, peer: str, peer_netns_fd: int, mtu: int, master: int,
                 peer_mac: str, up: bool = True) -> tuple[int, bytes]:
        """veth ``name`` here (enslaved to ``master``, up), its ``peer`` created (down) in
        another netns: a veth cannot come up before its peer exists (the kernel answers
        ENOTCONN), so the peer is brought up by its own namespace's socket afterwards."""
        peer_body = (IFINFOMSG.pack(0, 0, 0, 0, 0)
                     + _str(IFLA_IFNAME, peer) + _u32(IFLA_MTU, mtu)
                     + _u32(IFLA_NET_NS_FD, peer_netns_fd))
        if peer_mac:
            peer_body += _attr(IFLA_ADDRESS, _mac(peer_mac))
        info = _str(IFLA_INFO_KIND, "veth") + _attr(
            IFLA_INFO_DATA | NLA_F_NESTED, _attr(VETH_INFO_PEER | NLA_F_NESTED, peer_body))
        body = (IFINFOMSG.pack(0, 0, 0, IFF_UP if up else 0, IFF_UP) + _str(IFLA_IFNAME, name)
                + _u32(IFLA_MTU, mtu) + _attr(IFLA_LINKINFO | NLA_F_NESTED, info))
        if master:
            body += _u32(IFLA_MASTER, master)
        return _msg(RTM_NEWLINK, NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL, body)

    @staticmethod
    def hairpin_msg(index: int, on: bool = True) -> tuple[int, bytes]:
        body = IFINFOMSG.pack(AF_BRIDGE, 0, index, 0, 0) + _attr(
            IFLA_PROTINFO | NLA_F_NESTED, _attr(IFLA_BRPORT_MODE, bytes([1 if on else 0])))
        return _msg(RTM_SETLINK, NLM_F_REQUEST | NLM_F_ACK, body)

    @staticmethod
    def alias_msg(index: int, alias: str) -> tuple[int, bytes]:
        """Set link ``index``'s ifalias (``ip link set ... alias``; at most 255 bytes)."""
        return _msg(RTM_SETLINK, NLM_F_REQUEST | NLM_F_ACK,
                    IFINFOMSG.pack(0, 0, index, 0, 0) + _str(IFLA_IFALIAS, alias))

    @staticmethod
    def dellink_msg(name: str) -> tuple[int, bytes]:
        return _msg(RTM_DELLINK, NLM_F_REQUEST | NLM_F_ACK,
                    IFINFOMSG.pack(0, 0, 0, 0, 0) + _str(IFLA_IFNAME, name))

    @staticmethod
    def setlink_msg(index: int, up: bool | None = None, master: int | None = None,
                    mtu: int | None = None, mac: str | None = None) -> tuple[int, bytes]:
        """``ip link set <index> [up|down] [master N] [mtu N] [address MAC]``."""
        flags = change = 0
        if up is not None:
            flags, change = (IFF_UP if up else 0), IFF_UP
        body = IFINFOMSG.pack(0, 0, index, flags, change)
        if master is not None:
            body += _u32(IFLA_MASTER, master)
        if mtu is not None:
            body += _u32(IFLA_MTU, mtu)
        if mac:
            body += _attr(IFLA_ADDRESS, _mac(mac))
        return _msg(RTM_NEWLINK, NLM_F_REQUEST | NLM_F_ACK, body)

    @staticmethod
    def addr_msg(index: int, address: IPv4Interface | IPv6Interface) -> tuple[int, bytes]:
        family = socket.AF_INET if address.version == 4 else socket.AF_INET6
        raw = address.ip.packed
        body = IFADDRMSG.pack(family, address.network.prefixlen,
                              IFA_F_NODAD if address.version == 6 else 0, RT_SCOPE_UNIVERSE, index)
        body += _attr(IFA_LOCAL, raw) + _attr(IFA_ADDRESS, raw)
        if address.version == 6:
            body += _u32(IFA_FLAGS, IFA_F_NODAD)
        return _msg(RTM_NEWADDR, NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL, body)

    @staticmethod
    def route_msg(dst: str, gateway: IPv4Address | IPv6Address | None,
                  oif: int) -> tuple[int, bytes]:
        """Add a route that must not exist yet (EEXIST when one with the same destination and
        metric exists, e.g. through another interface of the pod: it is never replaced)."""
        net = ip_network(dst, strict=False)
        family = socket.AF_INET if net.version == 4 else socket.AF_INET6
        scope = RT_SCOPE_UNIVERSE if gateway is not None else RT_SCOPE_LINK
        body = RTMSG.pack(family, net.prefixlen, 0, 0, RT_TABLE_MAIN, RTPROT_BOOT, scope,
                          RTN_UNICAST, 0)
        if net.prefixlen:
            body += _attr(RTA_DST, net.network_address.packed)
        if gateway is not None:
            body += _attr(RTA_GATEWAY, gateway.packed)
        body += _u32(RTA_OIF, oif)
        return _msg(RTM_NEWROUTE, NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL, body)

    # -- peer entries (``ip neigh``/``bridge fdb``/``ip route`` replace and del) ---------------
    @staticmethod
    def neigh_msg(add: bool, ip: IPv4Address, index: int, mac: str = "") -> tuple[int, bytes]:
        """``ip neigh replace <ip> lladdr <mac> dev <index> nud permanent`` (``add``) or
        ``ip neigh del <ip> dev <index>``."""
        body = NDMSG.pack(socket.AF_INET, index, NUD_PERMANENT, 0, 0) + _attr(NDA_DST, ip.packed)
        if add:
            body += _attr(NDA_LLADDR, _mac(mac))
            return _msg(RTM_NEWNEIGH, NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_REPLACE,
                        body)
        return _msg(RTM_DELNEIGH, NLM_F_REQUEST | NLM_F_ACK, body)

    @staticmethod
    def fdb_msg(add: bool, mac: str, index: int, dst: IPv4Address) -> tuple[int, bytes]:
        """``bridge fdb replace <mac> dev <index> dst <dst> self permanent`` (``add``) or
        ``bridge fdb del <mac> dev <index> dst <dst> self``."""
        body = (NDMSG.pack(AF_BRIDGE, index, NUD_PERMANENT, NTF_SELF, 0)
                + _attr(NDA_LLADDR, _mac(mac)) + _attr(NDA_DST, dst.packed))
        if add:
            return _msg(RTM_NEWNEIGH, NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_REPLACE,
                        body)
        return _msg(RTM_DELNEIGH, NLM_F_REQUEST | NLM_F_ACK, body)

    @staticmethod
    def peer_route_msg(add: bool, dst: IPv4Network, gateway: IPv4Address | None, oif: int,
                       onlink: bool, proto: int) -> tuple[int, bytes]:
        """``ip route replace <dst> [via <gw>] dev <oif> [onlink] proto <proto>`` (``add``;
        scope link without a gateway) or the matching ``ip route del`` (any scope and type,
        as iproute2 asks)."""
        if add:
            scope = RT_SCOPE_UNIVERSE if gateway is not None else RT_SCOPE_LINK
            head = RTMSG.pack(socket.AF_INET, dst.prefixlen, 0, 0, RT_TABLE_MAIN, proto, scope,
                              RTN_UNICAST, RTNH_F_ONLINK if onlink else 0)
            kind, flags = RTM_NEWROUTE, NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_REPLACE
        else:
            head = RTMSG.pack(socket.AF_INET, dst.prefixlen, 0, 0, RT_TABLE_MAIN, proto,
                              RT_SCOPE_NOWHERE, 0, 0)
            kind, flags = RTM_DELROUTE, NLM_F_REQUEST | NLM_F_ACK
        body = head + _attr(RTA_DST, dst.network_address.packed)
        if gateway is not None:
            body += _attr(RTA_GATEWAY, gateway.packed)
        if oif:
            body += _u32(RTA_OIF, oif)
        return _msg(kind, flags, body)

    # -- overlay devices (``ip link add ... type vxlan|wireguard``, ``ip route get``) ----------
    @staticmethod
    def newlink_msg(name: str, kind: str, mtu: int, mac: str = "",
                    info_data: bytes = b"") -> tuple[int, bytes]:
        """Create link ``name`` of ``kind`` (must not exist); ``info_data``: its
        IFLA_INFO_DATA attributes (e.g. :meth:`vxlan_data`)."""
        info = _str(IFLA_INFO_KIND, kind)
        if info_data:
            info += _attr(IFLA_INFO_DATA | NLA_F_NESTED, info_data)
        body = (IFINFOMSG.pack(0, 0, 0, 0, 0) + _str(IFLA_IFNAME, name) + _u32(IFLA_MTU, mtu)
                + _attr(IFLA_LINKINFO | NLA_F_NESTED, info))
        if mac:
            body += _attr(IFLA_ADDRESS, _mac(mac))
        return _msg(RTM_NEWLINK, NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL, body)

    @staticmethod
    def vxlan_data(vni: int, local: IPv4Address, port: int, parent: int) -> bytes:
        """IFLA_INFO_DATA of ``type vxlan id <vni> local <local> dstport <port> dev <parent>
        nolearning`` (linux/if_link.h IFLA_VXLAN_*)."""
        return (_u32(IFLA_VXLAN_ID, vni) + _attr(IFLA_VXLAN_LOCAL, local.packed)
                + _attr(IFLA_VXLAN_PORT, struct.pack("!H", port))
                + _attr(IFLA_VXLAN_LEARNING, b"\0") + _u32(IFLA_VXLAN_LINK, parent))

    @staticmethod
    def dellink_index_msg(index: int) -> tuple[int, bytes]:
        return _msg(RTM_DELLINK, NLM_F_REQUEST | NLM_F_ACK, IFINFOMSG.pack(0, 0, index, 0, 0))

    @staticmethod
    def deladdr_msg(index: int, address: IPv4Interface | IPv6Interface) -> tuple[int, bytes]:
        """``ip addr del <address> dev <index>``."""
        raw = address.ip.packed
        family = socket.AF_INET if address.version == 4 else socket.AF_INET6
        body = (IFADDRMSG.pack(family, address.network.prefixlen, 0, 0, index)
                + _attr(IFA_LOCAL, raw) + _attr(IFA_ADDRESS, raw))
        return _msg(RTM_DELADDR, NLM_F_REQUEST | NLM_F_ACK, body)

    @staticmethod
    def getroute_msg(dst: IPv4Address) -> tuple[int, bytes]:
        """``ip route get <dst>`` (the reply is one RTM_NEWROUTE)."""
        body = (RTMSG.pack(socket.AF_INET, 32, 0, 0, 0, 0, 0, 0, 0)
                + _attr(RTA_DST, dst.packed))
        return _msg(RTM_GETROUTE, NLM_F_REQUEST | NLM_F_ACK, body)

    @staticmethod
    def parse_link(body: bytes) -> Link:
        return _parse_link(body)


__all__ = ["Link", "RawRtnl", "RtnlError", "format_mac", "parse_attrs", "IPv6Address"]
