"""Choosing the public interface and IP, as Flannel does.

Order: ``--iface`` (names or IPs, first one present wins), ``--iface-regex`` (matched against
interface names and IPv4 addresses), ``--iface-can-reach IP`` (the interface the kernel routes
that IP through), else the interface of the IPv4 default route. ``--public-ip`` overrides the IP
other nodes use to reach this one (the lease's PublicIP); the interface address stays the VXLAN
source.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Interface

from netweft.backends.base import Underlay
from netweft.backends.netlink import Netlink


class IfaceError(Exception):
    """No usable public interface (one line naming the option)."""


@dataclass(frozen=True)
class IfaceOptions:
    ifaces: tuple[str, ...] = ()
    regexes: tuple[str, ...] = ()
    can_reach: IPv4Address | None = None
    public_ip: IPv4Address | None = None


@dataclass(frozen=True)
class PublicSide:
    underlay: Underlay
    public_ip: IPv4Address  # what goes into the lease


def _addresses_by_index(nl: Netlink) -> dict[int, list[IPv4Interface]]:
    out: dict[int, list[IPv4Interface]] = {}
    for index, addr in nl.addresses():
        out.setdefault(index, []).append(addr)
    return out


def select(nl: Netlink, opts: IfaceOptions) -> PublicSide:
    links = {link.index: link for link in nl.links()}
    addrs = _addresses_by_index(nl)
    chosen: tuple[int, IPv4Interface] | None = None

    def first_addr(index: int) -> IPv4Interface | None:
        usable = [a for a in addrs.get(index, []) if not a.ip.is_loopback]
        return usable[0] if usable else None

    if opts.ifaces:
        for want in opts.ifaces:
            try:
                ip = IPv4Address(want)
            except ValueError:
                ip = None
            for index, link in links.items():
                if ip is not None:
                    match = [a for a in addrs.get(index, []) if a.ip == ip]
                    if match:
                        chosen = (index, match[0])
                        break
                elif link.name == want:
                    addr = first_addr(index)
                    if addr is None:
                        raise IfaceError(f"--iface {want}: the interface has no IPv4 address")
                    chosen = (index, addr)
                    break
            if chosen:
                break
        if chosen is None:
            raise IfaceError(f"--iface: none of {', '.join(opts.ifaces)} exists here")
    elif opts.regexes:
        for pattern in opts.regexes:
            try:
                rx = re.compile(pattern)
            except re.error as exc:
                raise IfaceError(f"--iface-regex {pattern!r}: {exc}") from None
            for index in sorted(links):
                link = links[index]
                for addr in addrs.get(index, []):
                    if addr.ip.is_loopback:
                        continue
                    if rx.search(str(addr.ip)) or rx.search(link.name):
                        chosen = (index, addr)
                        break
                if chosen:
                    break
            if chosen:
                break
        if chosen is None:
            raise IfaceError(f"--iface-regex: no interface or IPv4 address matches "
                             f"{', '.join(opts.regexes)}")
    elif opts.can_reach is not None:
        found = nl.route_get(opts.can_reach)
        if found is None:
            raise IfaceError(f"--iface-can-reach {opts.can_reach}: no route to it")
        addr = None
        if found.prefsrc is not None:
            addr = next((a for a in addrs.get(found.oif, []) if a.ip == found.prefsrc), None)
        addr = addr or first_addr(found.oif)
        if addr is None:
            raise IfaceError(f"--iface-can-reach {opts.can_reach}: interface "
                             f"{links[found.oif].name} has no IPv4 address")
        chosen = (found.oif, addr)
    else:
        oif = nl.default_route_oif()
        if oif is None:
            raise IfaceError("no default route: choose the public interface with --iface")
        addr = first_addr(oif)
        if addr is None:
            raise IfaceError(f"default route interface {links[oif].name} has no IPv4 address: "
                             "choose one with --iface")
        chosen = (oif, addr)

    index, addr = chosen
    link = links[index]
    networks = tuple(sorted({a.network for a in addrs.get(index, []) if a.network.prefixlen < 32}))
    underlay = Underlay(iface=link.name, index=index, ip=addr.ip, mtu=link.mtu, networks=networks)
    return PublicSide(underlay, opts.public_ip or addr.ip)


def parse_options(ifaces: Sequence[str], regexes: Sequence[str], can_reach: str | None,
                  public_ip: str | None) -> IfaceOptions:
    try:
        reach = IPv4Address(can_reach) if can_reach else None
    except ValueError:
        raise IfaceError(f"--iface-can-reach: {can_reach!r} is not an IPv4 address") from None
    try:
        pub = IPv4Address(public_ip) if public_ip else None
    except ValueError:
        raise IfaceError(f"--public-ip: {public_ip!r} is not an IPv4 address") from None
    return IfaceOptions(tuple(ifaces), tuple(regexes), reach, pub)
