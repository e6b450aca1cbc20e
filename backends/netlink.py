"""The few rtnetlink calls the backends and the daemon use, over netweft.cni.rtnl's
struct-coded socket (linux/rtnetlink.h, linux/neighbour.h, linux/if_link.h layouts).

One :class:`Netlink` object holds one rtnetlink socket, optionally in a named network namespace
(``Netlink(netns="nwd-node1")``, opened through pyroute2's ``netns.create_socket``; the daemon
itself runs inside the node namespace and passes none). Not thread-safe: the daemon calls it
from one worker thread. Errors are :class:`NetlinkError` (an OSError carrying the kernel's
errno, also as ``code``).

Why not pyroute2's IPRoute (issue 12, measured on this 2-core machine under load): its 0.9
release drives an event loop per call (a link lookup 10-18 ms, a neighbour 2-4 ms, encoding a
message ~0.5 ms) and importing it takes ~1.6 s and ~20 MiB of the daemon's RSS; ``ip -batch``
costs a process start (~7 ms) per group. These requests take ~0.05 ms each.
"""

from __future__ import annotations

import errno
import os
import socket
import struct
import subprocess
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Interface, IPv4Network
from typing import Any

from netweft.backends.base import (
    RTPROT_NETWEFT,
    Changes,
    DesiredState,
    FdbEntry,
    Neighbour,
    Route,
)
from netweft.cni.rtnl import (
    AF_BRIDGE,
    IFA_ADDRESS,
    IFA_LOCAL,
    IFADDRMSG,
    IFINFOMSG,
    IFLA_INFO_DATA,
    IFLA_LINKINFO,
    NDA_DST,
    NDA_LLADDR,
    NDMSG,
    NUD_PERMANENT,
    RT_TABLE_MAIN,
    RTA_DST,
    RTA_GATEWAY,
    RTA_MULTIPATH,
    RTA_OIF,
    RTA_PREFSRC,
    RTA_TABLE,
    RTM_GETADDR,
    RTM_GETLINK,
    RTM_GETNEIGH,
    RTM_GETROUTE,
    RTMSG,
    WINDOW,
    RawRtnl,
    RtnlError,
    format_mac,
    parse_attrs,
)

RTNH_F_ONLINK = 4
AF_INET = 2
RTNEXTHOP = struct.Struct("=HBBi")


@dataclass(frozen=True)
class Known:
    """Records the kernel is expected to hold, by their wire form (the bytes a dump carries):
    a dumped entry equal to one of them is answered with that record, not a new one (see
    ``Backend.actual_against``). Built per pass, dropped after it."""

    routes: dict[bytes, Route]          # dst (4) + prefix length (1) + gateway (4 or 0)
    neighbours: dict[bytes, Neighbour]  # ip (4) + mac (6)
    fdb: dict[bytes, FdbEntry]          # mac (6) + dst (4)

    @classmethod
    def of(cls, routes: Iterable[Route], neighbours: Iterable[Neighbour] = (),
           fdb: Iterable[FdbEntry] = ()) -> Known:
        return cls(
            {r.dst.network_address.packed + bytes((r.dst.prefixlen,))
             + (r.gateway.packed if r.gateway is not None else b""): r for r in routes},
            {n.ip.packed + _mac_bytes(n.mac): n for n in neighbours},
            {_mac_bytes(f.mac) + f.dst.packed: f for f in fdb})


    @classmethod
    def of_desired(cls, desired: DesiredState) -> Known:
        """The routes, neighbours and FDB entries of ``desired``'s peers."""
        peers = desired.peers
        return cls.of((p.route for p in peers if p.route is not None),
                      (p.neighbour for p in peers if p.neighbour is not None),
                      (p.fdb for p in peers if p.fdb is not None))


def _mac_bytes(mac: str) -> bytes:
    return bytes.fromhex(mac.replace(":", ""))


class NetlinkError(OSError):
    """A netlink request failed: ``code`` (also ``errno``) is the kernel's error number."""

    @property
    def code(self) -> int:
        return int(self.errno or 0)


@dataclass(frozen=True)
class LinkInfo:
    """The attributes of one link we care about."""

    index: int
    name: str
    kind: str | None
    mtu: int
    mac: str | None
    up: bool
    vxlan: dict[str, Any]


@dataclass(frozen=True)
class RouteLookup:
    """``ip route get <dst>``: the interface and gateway the kernel would use."""

    oif: int
    gateway: IPv4Address | None
    prefsrc: IPv4Address | None


class Netlink:
    """The backends' and the daemon's typed rtnetlink calls (links, routes, neighbours, FDB
    entries as dataclasses) in one namespace (the current one when ``netns`` is None), built on
    the raw message layer ``cni.rtnl.RawRtnl``, which the CNI plugin uses directly."""

    def __init__(self, netns: str | None = None) -> None:
        self.netns = netns
        self._rtnl: RawRtnl | None = None

    @property
    def rtnl(self) -> RawRtnl:
        """The hot path's socket (:mod:`netweft.cni.rtnl`), opened in ``netns`` when given."""
        if self._rtnl is None:
            sock = None
            if self.netns:  # tests and `netweft inspect`; the daemon runs inside its namespace
                from pyroute2.netns import create_socket

                sock = create_socket(self.netns, socket.AF_NETLINK, socket.SOCK_RAW,
                                     socket.NETLINK_ROUTE)
            self._rtnl = RawRtnl(sock)
        return self._rtnl

    def rtnl_index(self, name: str) -> int | None:
        """The index of link ``name`` (None when there is none), through :attr:`rtnl`."""
        link = self.rtnl.link(name)
        return link.index if link else None

    def _call(self, message: tuple[int, bytes], ignore: tuple[int, ...] = ()) -> bytes | None:
        """One request; its reply body, if any. Raises :class:`NetlinkError`."""
        try:
            return self.rtnl.call(message, ignore)
        except RtnlError as exc:
            raise NetlinkError(exc.errno or errno.EIO, exc.strerror or str(exc)) from None

    def close(self) -> None:
        if self._rtnl is not None:
            self._rtnl.close()
            self._rtnl = None

    # --- links ------------------------------------------------------------------------------

    def link_index(self, name: str) -> int | None:
        return self.rtnl_index(name)

    def link(self, name: str) -> LinkInfo | None:
        """Link ``name`` (None when there is none); one struct-coded RTM_GETLINK (pyroute2
        took 10-18 ms per call on this machine under load, and a full pass made several)."""
        seq, msg = RawRtnl.getlink_msg(name)
        try:
            body = self.rtnl.batch([(seq, msg)]).get(seq)
        except RtnlError as exc:
            if exc.errno in (errno.ENODEV, errno.ENOENT):
                return None
            raise
        return _parse_link_info(body) if body else None

    def links(self) -> list[LinkInfo]:
        return [_parse_link_info(body) for body in self.rtnl.dump(
            RTM_GETLINK, IFINFOMSG.pack(0, 0, 0, 0, 0))]

    def _created(self, name: str) -> int:
        index = self.link_index(name)
        if index is None:  # pragma: no cover - the kernel just created it
            raise NetlinkError(errno.ENODEV, f"{name} vanished after creation")
        return index

    def create_vxlan(self, name: str, vni: int, local: IPv4Address, port: int, parent: int,
                     mac: str | None, mtu: int) -> int:
        """``ip link add <name> [address <mac>] mtu <mtu> type vxlan id <vni> local <local>
        dstport <port> dev <parent> nolearning``; its index. Raises NetlinkError."""
        self._call(RawRtnl.newlink_msg(name, "vxlan", mtu, mac or "",
                                    RawRtnl.vxlan_data(vni, local, port, parent)))
        return self._created(name)

    def create_wireguard(self, name: str, mtu: int) -> int:
        """``ip link add <name> type wireguard`` (the kernel's device). Raises NetlinkError
        (EOPNOTSUPP, "Unknown device type") where the kernel has no WireGuard."""
        self._call(RawRtnl.newlink_msg(name, "wireguard", mtu))
        return self._created(name)

    def set_link(self, index: int, state: str | None = None, mtu: int | None = None,
                 address: str | None = None) -> None:
        """``ip link set <index> [up|down] [mtu N] [address MAC]``. Raises NetlinkError."""
        self._call(RawRtnl.setlink_msg(index, None if state is None else state == "up", None,
                                    mtu, address))

    def delete_link(self, index: int) -> None:
        self._call(RawRtnl.dellink_index_msg(index), ignore=(errno.ENODEV, errno.ENOENT))

    def ensure_device(self, link: LinkInfo, mtu: int, address: IPv4Interface) -> None:
        """Make ``link`` up, with ``mtu`` and ``address`` as its only IPv4 address (changes
        only what differs)."""
        changes: dict[str, object] = {}
        if link.mtu != mtu:
            changes["mtu"] = mtu
        if not link.up:
            changes["state"] = "up"
        if changes:
            self.set_link(link.index, **changes)
        have = [a for _, a in self.addresses(link.index)]
        for addr in have:
            if addr != address:
                self.del_address(link.index, addr)
        if address not in have:
            self.add_address(link.index, address)

    # --- addresses --------------------------------------------------------------------------

    def addresses(self, index: int | None = None) -> list[tuple[int, IPv4Interface]]:
        """IPv4 addresses as (ifindex, address/prefixlen) (one struct-coded dump)."""
        out = []
        for body in self.rtnl.dump(RTM_GETADDR, IFADDRMSG.pack(AF_INET, 0, 0, 0, 0)):
            _family, plen, _flags, _scope, ifindex = IFADDRMSG.unpack_from(body, 0)
            if index is not None and ifindex != index:
                continue
            attrs = parse_attrs(body, IFADDRMSG.size)
            raw = attrs.get(IFA_LOCAL) or attrs.get(IFA_ADDRESS)
            if raw:
                out.append((ifindex, IPv4Interface((raw, plen))))
        return out

    def add_address(self, index: int, addr: IPv4Interface) -> None:
        self._call(RawRtnl.addr_msg(index, addr), ignore=(errno.EEXIST,))

    def del_address(self, index: int, addr: IPv4Interface) -> None:
        self._call(RawRtnl.deladdr_msg(index, addr),
                   ignore=(errno.EADDRNOTAVAIL, errno.ENOENT, errno.ENODEV))

    # --- our routes, neighbours and FDB entries: struct-coded netlink (netweft.cni.rtnl) -----
    #
    # Measured with 1,000 peers: pyroute2 decodes a dump at ~0.2 ms per message (routes 290 ms,
    # neighbours 180 ms, FDB 170 ms) and applies ~0.8 ms per entry (3,000 entries: 2.3 s);
    # `ip -j ... show` / `ip -batch` cost a process start each (~7 ms, more under load), which
    # was most of a lease event's latency. Dumps and changes go through netweft.cni.rtnl's
    # socket; `ip -batch` is kept only for the rare unreachable route.

    def _cmd(self, tool: str) -> list[str]:
        return [tool, *(["-n", self.netns] if self.netns else [])]

    def routes(self, proto: int, known: Known | None = None) -> list[Route]:
        """IPv4 routes in the main table carrying protocol ``proto`` that go out of a device
        (an ``unreachable`` route has none and is never listed). Each reply is decoded as it
        arrives, the header checked before the attributes (:meth:`RawRtnl.dump_each`); one
        equal to a route of ``known`` is that route object."""
        names = self.rtnl.link_names()
        reuse = known.routes if known is not None else {}

        def parse(body: bytes) -> Route | None:
            _fam, dst_len, _src, _tos, table, protocol, _scope, _type, flags = \
                RTMSG.unpack_from(body, 0)
            if protocol != proto or not dst_len:
                return None
            attrs = parse_attrs(body, RTMSG.size)
            if RTA_TABLE in attrs:
                table = struct.unpack("=I", attrs[RTA_TABLE])[0]
            oif = struct.unpack("=I", attrs[RTA_OIF])[0] if RTA_OIF in attrs else 0
            if table != RT_TABLE_MAIN or not oif or oif not in names:
                return None
            gw = attrs.get(RTA_GATEWAY)
            raw_dst = attrs.get(RTA_DST, bytes(4))
            onlink = bool(flags & RTNH_F_ONLINK)
            same = reuse.get(raw_dst + bytes((dst_len,)) + (gw or b""))
            if same is not None and same.dev == names[oif] and same.onlink == onlink:
                return same
            return Route(IPv4Network((raw_dst, dst_len)), IPv4Address(gw) if gw else None,
                         names[oif], onlink)

        return self.rtnl.dump_each(RTM_GETROUTE, RTMSG.pack(AF_INET, 0, 0, 0, 0, 0, 0, 0, 0),
                                   parse)

    def _neighbours(self, family: int, index: int | None,
                    make: Callable[[bytes, bytes], Any]) -> list[Any]:
        """``make(NDA_DST, NDA_LLADDR)`` (None: left out) for each ``family`` neighbour entry on
        link ``index`` that carries both (AF_INET: permanent entries only; AF_BRIDGE: the
        forwarding database), decoded as it arrives."""

        def parse(body: bytes) -> Any:
            fam, ifindex, state, _flags, _type = NDMSG.unpack_from(body, 0)
            if fam != family or ifindex != index or (family == AF_INET
                                                     and not state & NUD_PERMANENT):
                return None
            attrs = parse_attrs(body, NDMSG.size)
            dst, mac = attrs.get(NDA_DST), attrs.get(NDA_LLADDR)
            return make(dst, mac) if dst and mac else None

        return self.rtnl.dump_each(RTM_GETNEIGH, NDMSG.pack(family, 0, 0, 0, 0), parse)

    def neighbours(self, dev: str, known: Known | None = None) -> list[Neighbour]:
        """Permanent IPv4 neighbours on ``dev`` (one equal to a neighbour of ``known`` is that
        object)."""
        reuse = known.neighbours if known is not None else {}

        def make(dst: bytes, mac: bytes) -> Neighbour:
            same = reuse.get(dst + mac)
            if same is not None and same.dev == dev:
                return same
            return Neighbour(IPv4Address(dst), format_mac(mac), dev)

        return self._neighbours(AF_INET, self.rtnl_index(dev), make)

    def fdb(self, dev: str, known: Known | None = None) -> list[FdbEntry]:
        """Forwarding entries with an IPv4 remote (``dst``) on VXLAN device ``dev`` (one equal
        to an entry of ``known`` is that object)."""
        reuse = known.fdb if known is not None else {}

        def make(dst: bytes, mac: bytes) -> FdbEntry | None:
            if len(dst) != 4:
                return None
            same = reuse.get(mac + dst)
            if same is not None and same.dev == dev:
                return same
            return FdbEntry(format_mac(mac), IPv4Address(dst), dev)

        return self._neighbours(AF_BRIDGE, self.rtnl_index(dev), make)

    def batch(self, tool: str, lines: list[str], benign: tuple[str, ...] = ()) -> list[str]:
        """Run ``tool -force -batch -``; one error string per failed line (``benign`` errors,
        e.g. deleting what is already gone, are not errors)."""
        if not lines:
            return []
        proc = subprocess.run([*self._cmd(tool), "-force", "-batch", "-"],
                              input="\n".join(lines) + "\n", capture_output=True, text=True,
                              timeout=300)
        if proc.returncode == 0:
            return []
        errors: list[str] = []
        last = ""
        failed = 0
        for line in proc.stderr.splitlines():
            if line.startswith("Command failed -:"):
                failed += 1
                try:
                    number = int(line.rsplit(":", 1)[1])
                except ValueError:
                    number = 0
                what = lines[number - 1] if 0 < number <= len(lines) else "?"
                if not any(b in last for b in benign):
                    errors.append(f"{tool} {what}: {last or 'failed'}")
                last = ""
            elif line.strip():
                last = line.strip()
        if not failed and not (last and any(b in last for b in benign)):
            errors.append(f"{tool} batch failed: {last or proc.returncode}")
        return errors

    def ensure_unreachable(self, dst: IPv4Network, metric: int) -> None:
        """``ip route replace unreachable <dst> metric <metric> proto 78`` (a fallback that
        more specific routes override). :meth:`routes` never lists it (it has no device)."""
        self._unreachable("replace", dst, metric)

    def remove_unreachable(self, dst: IPv4Network, metric: int) -> None:
        self._unreachable("del", dst, metric, benign=True)

    def _unreachable(self, op: str, dst: IPv4Network, metric: int, benign: bool = False) -> None:
        errors = self.batch("ip", [f"route {op} unreachable {dst} metric {metric} "
                                   f"proto {RTPROT_NETWEFT}"], benign=GONE if benign else ())
        if errors:
            raise NetlinkError(errno.EIO, errors[0])

    def route_get(self, dst: IPv4Address) -> RouteLookup | None:
        try:
            body = self._call(RawRtnl.getroute_msg(dst))
        except NetlinkError:
            return None
        if not body:
            return None
        attrs = parse_attrs(body, RTMSG.size)
        if RTA_OIF not in attrs:
            return None
        gw, src = attrs.get(RTA_GATEWAY), attrs.get(RTA_PREFSRC)
        return RouteLookup(struct.unpack("=I", attrs[RTA_OIF])[0],
                           IPv4Address(gw) if gw else None, IPv4Address(src) if src else None)

    def default_route_oif(self) -> int | None:
        """The output interface of the IPv4 default route in the main table."""
        for fields, attrs in self.rtnl.routes(AF_INET):
            table = (struct.unpack("=I", attrs[RTA_TABLE])[0] if RTA_TABLE in attrs
                     else fields[4])
            if fields[1] != 0 or table != RT_TABLE_MAIN:
                continue
            if RTA_OIF in attrs:
                return int(struct.unpack("=I", attrs[RTA_OIF])[0])
            hops = attrs.get(RTA_MULTIPATH, b"")
            if len(hops) >= RTNEXTHOP.size:  # struct rtnexthop: len, flags, hops, ifindex
                return int(RTNEXTHOP.unpack_from(hops, 0)[3])
        return None


GONE = ("No such process", "No such file or directory", "Cannot find device")


GONE_ERRNOS = (errno.ESRCH, errno.ENOENT, errno.ENODEV)


def apply_changes(nl: Netlink, changes: Changes) -> list[str]:
    """Apply in Flannel's order (neighbours, FDB entries, routes; removal in reverse) as
    netlink requests, :data:`~netweft.cni.rtnl.WINDOW` per write (each acked); returns one line
    per entry that failed (reconcile retries them). Deleting what is already gone is not an
    error.

    Messages are built a window at a time and an entry's description only when it failed: a
    first pass over 5,000 peers built all 15,000 messages and descriptions up front, ~4.5 MiB of
    small objects whose pools stayed in the daemon's RSS (issue 12).

    Measured on this 2-core machine under load: one ``ip -batch`` costs a process start
    (~7 ms) per group, a pyroute2 call 2-4 ms, these requests ~0.05 ms each."""
    p = RTPROT_NETWEFT
    indexes: dict[str, int | None] = {}
    errors: list[str] = []
    window: list[tuple[int, bytes]] = []
    pending: dict[int, tuple[Any, Callable[[Any], str], bool]] = {}  # seq -> entry, what, del?

    def flush() -> None:
        for seq, code in nl.rtnl.send_all(window).items():
            entry, what, delete = pending[seq]
            if not (delete and code in GONE_ERRNOS):
                errors.append(f"{what(entry)}: {os.strerror(code)}")
        window.clear()
        pending.clear()

    groups: tuple[tuple[tuple[Any, ...], Callable[[Any, int], tuple[int, bytes]],
                        Callable[[Any], str], bool], ...] = (
        (changes.add_neighbours, lambda n, i: RawRtnl.neigh_msg(True, n.ip, i, n.mac),
         lambda n: f"ip neigh replace {n.describe()}", False),
        (changes.add_fdb, lambda f, i: RawRtnl.fdb_msg(True, f.mac, i, f.dst),
         lambda f: f"bridge fdb replace {f.describe()}", False),
        (changes.add_routes,
         lambda r, i: RawRtnl.peer_route_msg(True, r.dst, r.gateway, i, r.onlink, p),
         lambda r: f"ip route replace {r.describe()} proto {p}", False),
        (changes.del_routes,
         lambda r, i: RawRtnl.peer_route_msg(False, r.dst, r.gateway, i, False, p),
         lambda r: f"ip route del {r.describe()} proto {p}", True),
        (changes.del_fdb, lambda f, i: RawRtnl.fdb_msg(False, f.mac, i, f.dst),
         lambda f: f"bridge fdb del {f.describe()}", True),
        (changes.del_neighbours, lambda n, i: RawRtnl.neigh_msg(False, n.ip, i),
         lambda n: f"ip neigh del {n.ip} dev {n.dev}", True),
    )
    for entries, build, what, delete in groups:
        for entry in entries:
            dev = entry.dev
            if dev not in indexes:
                indexes[dev] = nl.rtnl_index(dev)
            ifindex = indexes[dev]
            if not ifindex:
                if not delete:  # a device that is gone has none of its entries left
                    errors.append(f"{what(entry)}: {os.strerror(errno.ENODEV)}")
                continue
            message = build(entry, ifindex)
            window.append(message)
            pending[message[0]] = (entry, what, delete)
            if len(window) >= WINDOW:
                flush()
    if window:
        flush()
    return errors


# linux/if_link.h IFLA_VXLAN_* attributes read back (the names pyroute2 gives them, lowercased)
_VXLAN_U32 = {1: "id", 3: "link", 8: "ageing"}
_VXLAN_U8 = {5: "ttl", 6: "tos", 7: "learning", 11: "proxy", 12: "rsc", 13: "l2miss",
             14: "l3miss", 18: "udp_csum"}
IFLA_VXLAN_LOCAL, IFLA_VXLAN_PORT = 4, 15


def _vxlan_info(data: bytes) -> dict[str, Any]:
    """IFLA_INFO_DATA of a vxlan link as {name: value}: ``local`` a dotted IPv4 string,
    ``port`` in host order."""
    out: dict[str, Any] = {}
    for kind, raw in parse_attrs(data, 0).items():
        if kind in _VXLAN_U32 and len(raw) >= 4:
            out[_VXLAN_U32[kind]] = struct.unpack("=I", raw[:4])[0]
        elif kind in _VXLAN_U8 and raw:
            out[_VXLAN_U8[kind]] = raw[0]
        elif kind == IFLA_VXLAN_LOCAL and len(raw) == 4:
            out["local"] = str(IPv4Address(raw))
        elif kind == IFLA_VXLAN_PORT and len(raw) >= 2:
            out["port"] = struct.unpack("!H", raw[:2])[0]
    return out


def _parse_link_info(body: bytes) -> LinkInfo:
    """A RTM_NEWLINK body (ifinfomsg + attributes) as :class:`LinkInfo`."""
    link = RawRtnl.parse_link(body)
    vxlan: dict[str, Any] = {}
    if link.kind == "vxlan":
        info = parse_attrs(parse_attrs(body, IFINFOMSG.size).get(IFLA_LINKINFO, b""), 0)
        vxlan = _vxlan_info(info.get(IFLA_INFO_DATA, b""))
    return LinkInfo(index=link.index, name=link.name, kind=link.kind or None, mtu=link.mtu,
                    mac=link.mac or None, up=link.up, vxlan=vxlan)
