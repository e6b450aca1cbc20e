"""Thin helpers over pyroute2's IPRoute: the few netlink calls the backends and the daemon use.

One :class:`Netlink` object holds one rtnetlink socket, optionally in a named network namespace
(``Netlink(netns="nwd-node1")``; the daemon itself runs inside the node namespace and passes
none). pyroute2 0.9's synchronous IPRoute drives a private event loop per call, so it must not
be called from a thread that runs an asyncio loop: the daemon calls it from one worker thread.
Dumps are filtered (by device or by our route protocol) so hot paths never decode every link.
"""

from __future__ import annotations

import errno
from collections.abc import Callable
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Interface, IPv4Network
from typing import Any

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError
from pyroute2.netlink.rtnl import ndmsg

from backends.base import RTPROT_NETWEFT, Changes, FdbEntry, Neighbour, Route

RTNH_F_ONLINK = 4
NUD_PERMANENT = ndmsg.states["permanent"]
NUD_NOARP = ndmsg.states["noarp"]
NTF_SELF = ndmsg.flags["self"]
AF_INET = 2
AF_BRIDGE = 7


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
    """rtnetlink calls in one namespace (the current one when ``netns`` is None)."""

    def __init__(self, netns: str | None = None) -> None:
        self.netns = netns
        self._ipr: IPRoute | None = None
        self._names: dict[int, str] = {}

    @property
    def ipr(self) -> IPRoute:
        if self._ipr is None:
            self._ipr = IPRoute(netns=self.netns) if self.netns else IPRoute()
        return self._ipr

    def close(self) -> None:
        if self._ipr is not None:
            self._ipr.close()
            self._ipr = None

    # --- links ------------------------------------------------------------------------------

    def link_index(self, name: str) -> int | None:
        found = self.ipr.link_lookup(ifname=name)
        return int(found[0]) if found else None

    def link_name(self, index: int) -> str | None:
        if index in self._names:
            return self._names[index]
        try:
            msg = self.ipr.link("get", index=index)[0]
        except NetlinkError:
            return None
        name = str(msg.get_attr("IFLA_IFNAME"))
        self._names[index] = name
        return name

    def forget_names(self) -> None:
        self._names.clear()

    def link(self, name: str) -> LinkInfo | None:
        try:
            msgs = self.ipr.link("get", ifname=name)
        except NetlinkError as exc:
            if exc.code in (errno.ENODEV, errno.ENOENT):
                return None
            raise
        return _link_info(msgs[0]) if msgs else None

    def links(self) -> list[LinkInfo]:
        return [_link_info(m) for m in self.ipr.link("dump")]

    def create_vxlan(self, name: str, vni: int, local: IPv4Address, port: int, parent: int,
                     mac: str | None, mtu: int) -> int:
        kwargs: dict[str, Any] = dict(
            ifname=name, kind="vxlan", vxlan_id=vni, vxlan_local=str(local), vxlan_port=port,
            vxlan_learning=0, vxlan_link=parent, mtu=mtu)
        if mac:
            kwargs["address"] = mac
        self.ipr.link("add", **kwargs)
        index = self.link_index(name)
        if index is None:  # pragma: no cover - the kernel just created it
            raise NetlinkError(errno.ENODEV, f"{name} vanished after creation")
        return index

    def set_link(self, index: int, **kwargs: Any) -> None:
        self.ipr.link("set", index=index, **kwargs)

    def delete_link(self, index: int) -> None:
        try:
            self.ipr.link("del", index=index)
        except NetlinkError as exc:
            if exc.code not in (errno.ENODEV, errno.ENOENT):
                raise
        self._names.pop(index, None)

    # --- addresses --------------------------------------------------------------------------

    def addresses(self, index: int | None = None) -> list[tuple[int, IPv4Interface]]:
        """IPv4 addresses as (ifindex, address/prefixlen)."""
        kwargs: dict[str, Any] = {"family": AF_INET}
        if index is not None:
            kwargs["index"] = index
        out = []
        for msg in self.ipr.addr("dump", **kwargs):
            if index is not None and msg["index"] != index:
                continue
            addr = msg.get_attr("IFA_ADDRESS") or msg.get_attr("IFA_LOCAL")
            if addr:
                out.append((int(msg["index"]), IPv4Interface(f"{addr}/{msg['prefixlen']}")))
        return out

    def add_address(self, index: int, addr: IPv4Interface) -> None:
        try:
            self.ipr.addr("add", index=index, address=str(addr.ip),
                          prefixlen=addr.network.prefixlen)
        except NetlinkError as exc:
            if exc.code != errno.EEXIST:
                raise

    def del_address(self, index: int, addr: IPv4Interface) -> None:
        try:
            self.ipr.addr("del", index=index, address=str(addr.ip),
                          prefixlen=addr.network.prefixlen)
        except NetlinkError as exc:
            if exc.code not in (errno.EADDRNOTAVAIL, errno.ENOENT, errno.ENODEV):
                raise

    # --- routes -----------------------------------------------------------------------------

    def routes(self, proto: int) -> list[Route]:
        """IPv4 routes in the main table carrying protocol ``proto``."""
        out = []
        for msg in self.ipr.route("dump", family=AF_INET, proto=proto, table=254):
            if msg["proto"] != proto or msg.get_attr("RTA_TABLE") not in (None, 254):
                continue
            dst = msg.get_attr("RTA_DST")
            gw = msg.get_attr("RTA_GATEWAY")
            oif = msg.get_attr("RTA_OIF")
            if dst is None or gw is None or oif is None:
                continue
            dev = self.link_name(int(oif)) or f"if{oif}"
            out.append(Route(IPv4Network(f"{dst}/{msg['dst_len']}"), IPv4Address(gw), dev,
                             bool(msg["flags"] & RTNH_F_ONLINK)))
        return out

    def replace_route(self, route: Route, oif: int, proto: int) -> None:
        self.ipr.route("replace", dst=str(route.dst), gateway=str(route.gateway), oif=oif,
                       flags=RTNH_F_ONLINK if route.onlink else 0, proto=proto, table=254)

    def delete_route(self, route: Route, proto: int) -> None:
        try:
            self.ipr.route("del", dst=str(route.dst), gateway=str(route.gateway), proto=proto,
                           table=254)
        except NetlinkError as exc:
            if exc.code not in (errno.ESRCH, errno.ENOENT):
                raise

    def route_get(self, dst: IPv4Address) -> RouteLookup | None:
        try:
            msg = self.ipr.route("get", dst=str(dst))[0]
        except NetlinkError:
            return None
        gw = msg.get_attr("RTA_GATEWAY")
        src = msg.get_attr("RTA_PREFSRC")
        return RouteLookup(int(msg.get_attr("RTA_OIF")), IPv4Address(gw) if gw else None,
                           IPv4Address(src) if src else None)

    def default_route_oif(self) -> int | None:
        """The output interface of the IPv4 default route in the main table."""
        for msg in self.ipr.route("dump", family=AF_INET, table=254):
            if msg["dst_len"] == 0 and msg.get_attr("RTA_TABLE") in (None, 254):
                oif = msg.get_attr("RTA_OIF")
                if oif is not None:
                    return int(oif)
                for hop in msg.get_attr("RTA_MULTIPATH") or []:
                    return int(hop["oif"])
        return None

    # --- neighbours and FDB -----------------------------------------------------------------

    def neighbours(self, index: int) -> list[Neighbour]:
        """Permanent IPv4 neighbours on link ``index``."""
        dev = self.link_name(index) or f"if{index}"
        out = []
        for msg in self.ipr.neigh("dump", ifindex=index, family=AF_INET):
            if msg["ifindex"] != index or not msg["state"] & NUD_PERMANENT:
                continue
            ip = msg.get_attr("NDA_DST")
            mac = msg.get_attr("NDA_LLADDR")
            if ip and mac:
                out.append(Neighbour(IPv4Address(ip), str(mac).lower(), dev))
        return out

    def replace_neighbour(self, neigh: Neighbour, index: int) -> None:
        self.ipr.neigh("replace", dst=str(neigh.ip), lladdr=neigh.mac, ifindex=index,
                       state=NUD_PERMANENT)

    def delete_neighbour(self, neigh: Neighbour, index: int) -> None:
        try:
            self.ipr.neigh("del", dst=str(neigh.ip), lladdr=neigh.mac, ifindex=index)
        except NetlinkError as exc:
            if exc.code not in (errno.ENOENT, errno.ESRCH, errno.ENODEV):
                raise

    def fdb(self, index: int) -> list[FdbEntry]:
        """Forwarding entries with a remote (``dst``) on VXLAN link ``index``."""
        dev = self.link_name(index) or f"if{index}"
        out = []
        for msg in self.ipr.fdb("dump", ifindex=index):
            if msg["ifindex"] != index:
                continue
            mac = msg.get_attr("NDA_LLADDR")
            dst = msg.get_attr("NDA_DST")
            if mac and dst and ":" not in str(dst):
                out.append(FdbEntry(str(mac).lower(), IPv4Address(dst), dev))
        return out

    def replace_fdb(self, entry: FdbEntry, index: int) -> None:
        self.ipr.fdb("replace", ifindex=index, lladdr=entry.mac, dst=str(entry.dst),
                     state=NUD_PERMANENT | NUD_NOARP, flags=NTF_SELF)

    def delete_fdb(self, entry: FdbEntry, index: int) -> None:
        try:
            self.ipr.fdb("del", ifindex=index, lladdr=entry.mac, dst=str(entry.dst))
        except NetlinkError as exc:
            if exc.code not in (errno.ENOENT, errno.ESRCH, errno.ENODEV):
                raise


def apply_changes(nl: Netlink, changes: Changes, index_of: Callable[[str], int]) -> list[str]:
    """Apply in Flannel's order (neighbour, FDB, route; removal in reverse); per-entry errors."""
    errors: list[str] = []

    def attempt(what: str, fn, *args) -> None:  # type: ignore[no-untyped-def]
        try:
            fn(*args)
        except Exception as exc:  # noqa: BLE001 - reported per entry, reconcile retries
            errors.append(f"{what}: {exc}")

    for n in changes.add_neighbours:
        attempt(f"neighbour {n.describe()}", lambda n=n: nl.replace_neighbour(n, index_of(n.dev)))
    for f in changes.add_fdb:
        attempt(f"fdb {f.describe()}", lambda f=f: nl.replace_fdb(f, index_of(f.dev)))
    for r in changes.add_routes:
        attempt(f"route {r.describe()}",
                lambda r=r: nl.replace_route(r, index_of(r.dev), RTPROT_NETWEFT))
    for r in changes.del_routes:
        attempt(f"delete route {r.describe()}", lambda r=r: nl.delete_route(r, RTPROT_NETWEFT))
    for f in changes.del_fdb:
        attempt(f"delete fdb {f.describe()}", lambda f=f: nl.delete_fdb(f, index_of(f.dev)))
    for n in changes.del_neighbours:
        attempt(f"delete neighbour {n.describe()}",
                lambda n=n: nl.delete_neighbour(n, index_of(n.dev)))
    return errors


def _link_info(msg: Any) -> LinkInfo:
    kind = None
    vxlan: dict[str, Any] = {}
    info = msg.get_attr("IFLA_LINKINFO")
    if info is not None:
        kind = info.get_attr("IFLA_INFO_KIND")
        data = info.get_attr("IFLA_INFO_DATA")
        if kind == "vxlan" and data is not None:
            for key, value in data["attrs"]:
                if key.startswith("IFLA_VXLAN_"):
                    vxlan[key[len("IFLA_VXLAN_"):].lower()] = value
    mac = msg.get_attr("IFLA_ADDRESS")
    return LinkInfo(
        index=int(msg["index"]), name=str(msg.get_attr("IFLA_IFNAME")), kind=kind,
        mtu=int(msg.get_attr("IFLA_MTU") or 0), mac=str(mac).lower() if mac else None,
        up=bool(msg["flags"] & 1), vxlan=vxlan,
    )
