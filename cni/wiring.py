"""Pod wiring in the kernel: bridge, veth pair, pod addresses and routes (and their removal).

The node side runs in the calling thread's namespace (the node's); the pod side through a netlink
socket opened inside the pod's namespace (:mod:`cni.nsenter`). One veth request creates the pair:
the pod end (``eth0``: MTU, MAC, up) is placed in the pod namespace by the same message that
creates the host end (enslaved to the bridge, up), so no interface ever appears under a temporary
name in the wrong namespace. Everything created is removed again when a later step fails.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
from dataclasses import dataclass, field
from ipaddress import (
    IPv4Address,
    IPv4Interface,
    IPv6Address,
    IPv6Interface,
    ip_interface,
)
from typing import Any

from netweft.cni import nsenter
from netweft.cni.rtnl import Link, RawRtnl, RtnlError
from netweft.cni.spec import (
    ERR_BRIDGE_ADDRESS,
    ERR_CHECK_FAILED,
    ERR_INTERNAL,
    ERR_INVALID_CONFIG,
    ERR_INVALID_ENV,
    CniError,
)

HOST_VETH_PREFIX = "nw"


def host_veth_name(container_id: str, ifname: str) -> str:
    """Stable host-side name: ``nw`` + 12 hex digits of sha256(container id, ifname)."""
    digest = hashlib.sha256(f"{container_id}\0{ifname}".encode()).hexdigest()
    return HOST_VETH_PREFIX + digest[:12]


OWNER_ALIAS_PREFIX = "netweft:"


def owner_alias(network: str) -> str:
    """The ifalias recording which CNI network owns a host veth (GC deletes only its own)."""
    return (OWNER_ALIAS_PREFIX + network).encode()[:255].decode(errors="ignore")


def attached(container_id: str, ifname: str) -> bool:
    """Does the node already have the host veth of (container, ifname)? One netlink request."""
    with RawRtnl() as rt:
        return rt.link(host_veth_name(container_id, ifname)) is not None


def is_host_veth_name(name: str) -> bool:
    """Whether ``name`` has the form of our host veths (``nw`` + 12 lowercase hex digits, see
    :func:`host_veth_name`)."""
    rest = name[len(HOST_VETH_PREFIX):]
    return (name.startswith(HOST_VETH_PREFIX) and len(rest) == 12
            and all(c in "0123456789abcdef" for c in rest))


def pod_mac(addresses: list[IPv4Interface | IPv6Interface], seed: str) -> str:
    """``0a:58:`` + the pod's IPv4 address (kubenet's convention), else 4 bytes of a hash."""
    v4 = next((a for a in addresses if a.version == 4), None)
    tail = v4.ip.packed if v4 is not None else hashlib.sha256(seed.encode()).digest()[:4]
    return "0a:58:" + ":".join(f"{b:02x}" for b in tail)


@dataclass(frozen=True)
class PodRoute:
    """A route to set in the pod: destination CIDR and gateway (None: on-link)."""

    dst: str
    gw: IPv4Address | IPv6Address | None


@dataclass
class PodPlan:
    """Desired state of one attachment, computed from config + subnet.env + IPAM."""

    container_id: str
    ifname: str
    netns: str
    bridge: str
    mtu: int
    addresses: list[IPv4Interface | IPv6Interface]
    routes: list[PodRoute] = field(default_factory=list)
    hairpin: bool = True
    caller_pid: int = 0  # open ``netns`` as this process sees it (0: as we do; cni/callerns.py)
    network: str = ""  # the CNI network name, recorded on the host veth (owner_alias)

    @property
    def host_veth(self) -> str:
        """The host-side veth name (:func:`host_veth_name`)."""
        return host_veth_name(self.container_id, self.ifname)

    @property
    def mac(self) -> str:
        """The pod interface's MAC (:func:`pod_mac`)."""
        return pod_mac(self.addresses, f"{self.container_id}/{self.ifname}")


@dataclass(frozen=True)
class Wired:
    """The host veth and the pod's interface as the kernel reports them after wiring."""

    host_veth: Link
    pod_link: Link


@dataclass
class BridgeState:
    """The node bridge as verified: name, ifindex, MAC, gateway addresses (CIDR strings), and
    whether this request created it (undone on failure)."""

    name: str
    index: int
    mac: str
    gateways: tuple[str, ...]
    created: bool = False


def _write_sysctl(path: str, value: str) -> None:
    with contextlib.suppress(FileNotFoundError), open(path, "r+") as f:
        if f.read().strip() != value:
            f.seek(0)
            f.write(value)


def enable_forwarding(families: set[int]) -> None:
    """The node forwards pod traffic (what the reference bridge plugin does for a gateway)."""
    if 4 in families:
        _write_sysctl("/proc/sys/net/ipv4/ip_forward", "1")
    if 6 in families:
        _write_sysctl("/proc/sys/net/ipv6/conf/all/forwarding", "1")


def bridge_ready(name: str, gateways: list[IPv4Interface | IPv6Interface]) -> BridgeState | None:
    """The bridge's state when it already is what we want (a bridge, up, holding every gateway
    address): two raw netlink requests, no pyroute2. None means :func:`ensure_bridge` must act."""
    with RawRtnl() as rt:
        link = rt.link(name)
        if link is None or link.kind != "bridge" or not link.up:
            return None
        have = set(rt.addresses(link.index))
    if any((str(g.ip), g.network.prefixlen) not in have for g in gateways):
        return None
    return BridgeState(name, link.index, link.mac, tuple(str(g) for g in gateways))


def ensure_bridge(name: str, gateways: list[IPv4Interface | IPv6Interface], mtu: int,
                  force_address: bool) -> BridgeState:
    """Create the bridge if absent, give it the gateway addresses, bring it up with ``mtu``
    (bytes) (the reference bridge plugin's ``isGateway``), over raw netlink requests: the
    daemon hosting the CNI server then never loads pyroute2 (~10 MiB of its RSS, issue 12).

    A bridge holding another address of the same family is an error (code 102) unless
    ``force_address``, which replaces it."""
    created = False
    with RawRtnl() as rt:
        link = rt.link(name)
        if link is None:
            # a fixed MAC: otherwise the bridge takes its ports' MACs and changes with them
            mac = pod_mac(gateways, name) if gateways else ""
            try:
                rt.call(RawRtnl.newlink_msg(name, "bridge", mtu, mac))
                created = True
            except RtnlError as exc:
                if exc.errno != errno.EEXIST:
                    raise
            link = rt.link(name)
            if link is None:
                raise CniError(ERR_INTERNAL, f"bridge: {name} vanished while creating it")
        if link.kind != "bridge":
            raise CniError(ERR_INVALID_CONFIG,
                           f"bridge: {name} exists and is a {link.kind or 'device'}, not a bridge")
        have = [ip_interface(f"{addr}/{plen}") for addr, plen in rt.addresses(link.index)]
        for gw in gateways:
            if gw in have:
                continue
            others = [a for a in have if a.version == gw.version and not a.ip.is_link_local]
            if others and not force_address:
                raise CniError(
                    ERR_BRIDGE_ADDRESS,
                    f"bridge {name} has address {others[0]}, expected {gw} "
                    "(set forceAddress to replace it)")
            for other in others:
                with contextlib.suppress(RtnlError):
                    rt.call(RawRtnl.deladdr_msg(link.index, other))
            # IPv6 without DAD: a tentative gateway would drop pod traffic
            rt.batch([RawRtnl.addr_msg(link.index, gw)], ignore=(errno.EEXIST,))
        rt.call(RawRtnl.setlink_msg(link.index, up=True))
    return BridgeState(name, link.index, link.mac, tuple(str(g) for g in gateways), created)


def delete_bridge_if_unused(state: BridgeState) -> None:
    """Rollback of a bridge this ADD created, only while no port uses it."""
    with RawRtnl() as rt:
        if not any(link.master == state.index for link in rt.links()):
            with contextlib.suppress(OSError):
                rt.call(RawRtnl.dellink_index_msg(state.index))


def wire_pod(plan: PodPlan, bridge_index: int) -> Wired:
    """Create and configure the veth pair for ``plan``; on failure remove what was created."""
    try:
        pod_fd = nsenter.open_netns(plan.netns, plan.caller_pid)
    except nsenter.NetnsGone as exc:
        raise CniError(ERR_INVALID_ENV, f"CNI_NETNS: {exc.strerror}") from None
    host = RawRtnl()
    created = False
    try:
        veth = RawRtnl.veth_msg(plan.host_veth, plan.ifname, pod_fd, plan.mtu, bridge_index,
                             plan.mac)
        get = RawRtnl.getlink_msg(plan.host_veth)
        try:
            replies = host.batch([veth, get])
        except RtnlError as exc:
            if exc.errno == errno.EEXIST:
                raise CniError(ERR_INTERNAL,
                               f"interface {plan.ifname} already exists in {plan.netns} "
                               f"(or {plan.host_veth} on the node)") from None
            raise
        created = True
        host_link = RawRtnl.parse_link(replies[get[0]])
        owner = [RawRtnl.alias_msg(host_link.index, owner_alias(plan.network))]
        host.batch(owner + ([RawRtnl.hairpin_msg(host_link.index)] if plan.hairpin else []))
        with nsenter.entered(pod_fd):
            pod = RawRtnl()
            _write_sysctl(f"/proc/sys/net/ipv6/conf/{plan.ifname}/accept_dad", "0")
        try:
            pod_link = pod.link(plan.ifname)
            if pod_link is None:
                raise CniError(ERR_INTERNAL, f"{plan.ifname} vanished from {plan.netns}")
            msgs = [RawRtnl.setlink_msg(pod_link.index, up=True)]
            msgs += [RawRtnl.addr_msg(pod_link.index, a) for a in plan.addresses]
            pod.batch(msgs)
            # a route the pod already has (its default and cluster routes through eth0 when
            # this is a second interface) stays where it is: never moved to this one, so a
            # DEL of this interface cannot take them away (the reference bridge plugin's
            # behaviour)
            pod.batch([RawRtnl.route_msg(r.dst, r.gw, pod_link.index) for r in plan.routes],
                      ignore=(errno.EEXIST,))
        finally:
            pod.close()
        return Wired(host_link, pod_link)
    except BaseException:
        if created:
            with contextlib.suppress(OSError):
                host.batch([RawRtnl.dellink_msg(plan.host_veth)], ignore=(errno.ENODEV,))
        raise
    finally:
        host.close()
        os.close(pod_fd)


def unwire_pod(container_id: str, ifname: str, netns: str) -> bool:
    """Delete the pair (removing the host end removes the pod end); True if it existed.

    Works whether or not the pod namespace still exists."""
    name = host_veth_name(container_id, ifname)
    with RawRtnl() as host:
        try:
            host.batch([RawRtnl.dellink_msg(name)])
            return True
        except RtnlError as exc:
            if exc.errno != errno.ENODEV:
                raise
    return False


def delete_links(names: list[str]) -> None:
    """Delete the host links named ``names`` (a missing one is no error). Raises
    :class:`netweft.cni.rtnl.RtnlError` for other failures."""
    if not names:
        return
    with RawRtnl() as host:
        host.batch([RawRtnl.dellink_msg(n) for n in names], ignore=(errno.ENODEV,))


def bridge_ports(bridge: str) -> dict[str, str]:
    """``{name: ifalias}`` of the links enslaved to ``bridge`` in the node namespace (one link
    dump; "" when a link has no alias)."""
    with RawRtnl() as rt:
        links = rt.links()
    index = next((link.index for link in links if link.name == bridge), None)
    if index is None:
        return {}
    return {link.name: link.alias for link in links if link.master == index}


def _fail(msg: str) -> CniError:
    return CniError(ERR_CHECK_FAILED, msg)


def check_pod(container_id: str, ifname: str, netns: str, bridge: str, mac: str,
              addresses: list[Any], routes: list[tuple[str, str]], caller_pid: int = 0,
              mtu: int = 0) -> None:
    """Compare the kernel with a previous result (pyroute2); raise code 103 on a difference
    (code 4 when ``netns`` is not a network namespace). ``caller_pid``: open ``netns`` as that
    process sees it (see :mod:`cni.callerns`); ``mtu``: the MTU in bytes both ends must have
    (0: not checked)."""
    from pyroute2 import IPRoute

    name = host_veth_name(container_id, ifname)
    with IPRoute() as ipr:
        host = ipr.link_lookup(ifname=name)
        if not host:
            raise _fail(f"host interface {name} of {container_id}/{ifname} is missing")
        br = ipr.link_lookup(ifname=bridge)
        link = ipr.link("get", index=host[0])[0]
        if not br or link.get_attr("IFLA_MASTER") != br[0]:
            raise _fail(f"host interface {name} is not attached to bridge {bridge}")
        if not link["flags"] & 1:
            raise _fail(f"host interface {name} is down")
        if mtu and link.get_attr("IFLA_MTU") != mtu:
            raise _fail(f"host interface {name} has MTU {link.get_attr('IFLA_MTU')}, "
                        f"expected {mtu}")
    try:
        fd = nsenter.open_netns(netns, caller_pid)
    except nsenter.NotNetns as exc:
        raise CniError(ERR_INVALID_ENV, f"CNI_NETNS: {exc.strerror}") from None
    except nsenter.NetnsGone as exc:
        raise _fail(f"network namespace {netns}: {exc.strerror}") from None
    try:
        with nsenter.entered(fd):
            ipr = IPRoute()
    finally:
        os.close(fd)
    with ipr:
        found = ipr.link_lookup(ifname=ifname)
        if not found:
            raise _fail(f"{ifname} is missing in {netns}")
        link = ipr.link("get", index=found[0])[0]
        if mac and (link.get_attr("IFLA_ADDRESS") or "").lower() != mac.lower():
            raise _fail(f"{ifname} has MAC {link.get_attr('IFLA_ADDRESS')}, expected {mac}")
        if not link["flags"] & 1:
            raise _fail(f"{ifname} in {netns} is down")
        if mtu and link.get_attr("IFLA_MTU") != mtu:
            raise _fail(f"{ifname} in {netns} has MTU {link.get_attr('IFLA_MTU')}, "
                        f"expected {mtu}")
        have = {f"{a.get_attr('IFA_ADDRESS')}/{a['prefixlen']}"
                for a in ipr.get_addr(index=found[0])}
        for addr in addresses:
            if str(addr) not in have:
                raise _fail(f"{ifname} in {netns} lacks address {addr}")
        table = set()
        for family in (2, 10):
            for r in ipr.get_routes(family=family, table=254):
                dst = r.get_attr("RTA_DST")
                dst = f"{dst}/{r['dst_len']}" if dst else ("0.0.0.0/0" if family == 2 else "::/0")
                table.add((dst, r.get_attr("RTA_GATEWAY") or ""))
        for dst, gw in routes:
            if (dst, gw) not in table:
                raise _fail(f"{netns} lacks route {dst}" + (f" via {gw}" if gw else ""))
