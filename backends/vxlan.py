"""The VXLAN backend in Flannel's layout: a device per VNI; a neighbour, FDB entry, route per peer.

Device ``flannel.<VNI>``: learning off, local = public IP, UDP port from the config (8472),
address ``<subnet network>/32``, MTU = underlay MTU - 50. Per peer, in this order: permanent
neighbour (peer subnet network address -> peer VTEP MAC), FDB entry (peer VTEP MAC -> peer public
IP), route ``<peer subnet> via <peer subnet network address> dev flannel.<VNI> onlink``. With
DirectRouting, a peer whose public IP is on a directly connected network of the public interface
gets a plain route ``<peer subnet> via <peer public IP>`` instead.

The VTEP MAC survives restarts and reboots: it is stored in the state directory and in the lease;
the device is given the published MAC (a MAC changed by hand is put back), so peers never hold a
stale one.
"""

from __future__ import annotations

import json
import logging
import os
import random
from collections.abc import Iterable
from dataclasses import dataclass
from ipaddress import IPv4Interface
from typing import TYPE_CHECKING

from netweft.backends.base import (
    RTPROT_NETWEFT,
    ActualState,
    Backend,
    BackendError,
    Changes,
    DesiredState,
    DeviceInfo,
    FdbEntry,
    Neighbour,
    PeerState,
    Route,
    Underlay,
    Watched,
    peers_of,
)
from netweft.backends.netlink import Known, Netlink, apply_changes
from netweft.common import defaults
from netweft.common.atomicfile import write_atomic
from netweft.ipam.lease import Lease

if TYPE_CHECKING:
    from netweft.backends.registry import BackendParams

log = logging.getLogger("netweft.vxlan")

VXLAN_OVERHEAD = 50
DEFAULT_PORT = defaults.VXLAN_PORT


def device_name(vni: int) -> str:
    """Flannel's VXLAN device name, ``flannel.<VNI>``."""
    return f"flannel.{vni}"


def random_mac() -> str:
    """A random unicast, locally administered MAC."""
    first = (random.randrange(256) & 0xFC) | 0x02
    rest = [random.randrange(256) for _ in range(5)]
    return ":".join(f"{b:02x}" for b in [first, *rest])


def _mac_file(state_dir: str, vni: int) -> str:
    return os.path.join(state_dir, f"vxlan-{vni}.json")


def load_vtep_mac(state_dir: str | None, vni: int) -> str | None:
    """The VTEP MAC stored in ``<state_dir>/vxlan-<vni>.json`` (lowercase), or None when there is no
    state dir or no readable file (no error)."""
    if not state_dir:
        return None
    try:
        with open(_mac_file(state_dir, vni), encoding="utf-8") as f:
            mac = json.load(f).get("VtepMAC")
    except (OSError, ValueError, AttributeError):
        return None
    return str(mac).lower() if mac else None


def save_vtep_mac(state_dir: str | None, vni: int, mac: str) -> None:
    """Store the VTEP MAC (atomically, mode 0600) so a restart keeps it and peers' FDB/ARP entries
    stay right; nothing when unchanged or without a state dir. Raises OSError."""
    if not state_dir or load_vtep_mac(state_dir, vni) == mac:
        return
    write_atomic(_mac_file(state_dir, vni), json.dumps({"VNI": vni, "VtepMAC": mac}), 0o600)


@dataclass(frozen=True)
class VxlanSettings:
    """The vxlan backend's options (Flannel's ``Backend`` keys): ``VNI``, UDP ``Port``,
    ``DirectRouting`` (host-gw routes to peers on our L2 segment), ``MTU`` in bytes (None: underlay
    MTU - 50)."""

    vni: int = 1
    port: int = DEFAULT_PORT
    direct_routing: bool = False
    mtu: int | None = None  # None: underlay MTU - 50


def desired_vxlan(own: Lease, leases: Iterable[Lease], dev: str, underlay: Underlay,
                  direct_routing: bool) -> DesiredState:
    """Pure: the neighbour, FDB entry and route for every peer lease."""
    peers = []
    for lease in peers_of(own, leases):
        assert lease.subnet is not None and lease.public_ip is not None
        base = PeerState(lease.subnet, lease.public_ip)
        if direct_routing and underlay.on_link(lease.public_ip):
            peers.append(PeerState(lease.subnet, lease.public_ip,
                                   route=Route(lease.subnet, lease.public_ip, underlay.iface)))
            continue
        if lease.backend_type != "vxlan":
            peers.append(PeerState(base.subnet, base.public_ip, error=(
                f"peer {lease.subnet} ({lease.public_ip}) uses backend {lease.backend_type!r}, "
                "not vxlan: skipped")))
            continue
        mac = lease.vtep_mac
        if not mac:
            peers.append(PeerState(base.subnet, base.public_ip, error=(
                f"peer {lease.subnet} ({lease.public_ip}) has no BackendData.VtepMAC: skipped")))
            continue
        gw = lease.subnet.network_address
        low = mac.lower()
        if low == mac:
            low = mac  # one string for both entries and the lease: no copies per pass
        peers.append(PeerState(
            lease.subnet, lease.public_ip,
            neighbour=Neighbour(gw, low, dev),
            fdb=FdbEntry(low, lease.public_ip, dev),
            route=Route(lease.subnet, gw, dev, onlink=True),
        ))
    return DesiredState(tuple(peers))


def from_params(params: BackendParams) -> VxlanBackend:
    """The registry's factory (``Backend.Type`` ``vxlan``)."""
    b = params.config
    previous = params.previous.vtep_mac if params.previous is not None else None
    return VxlanBackend(params.nl, params.underlay,
                        VxlanSettings(b.vni, b.port, b.direct_routing, b.mtu),
                        state_dir=params.state_dir, previous_mac=previous)


class VxlanBackend(Backend):
    """Flannel's ``vxlan`` backend: device ``flannel.<VNI>`` with learning off; per peer a route to
    its subnet via its VTEP address (the subnet's .0) onlink, a permanent ARP entry and a permanent
    FDB entry to its public IP (Flannel's ``vxlan_network.go``); the VTEP MAC is kept across
    restarts."""

    type_name = "vxlan"

    def __init__(self, nl: Netlink, underlay: Underlay, settings: VxlanSettings,
                 state_dir: str | None = None, previous_mac: str | None = None) -> None:
        self.nl = nl
        self.underlay = underlay
        self.settings = settings
        self.state_dir = state_dir
        self.dev = device_name(settings.vni)
        self.index: int | None = None
        # MAC preference: the stored one, then the previous lease's, then the existing device's.
        self.mac: str | None = load_vtep_mac(state_dir, settings.vni) or previous_mac

    def mtu(self) -> int:
        """The pod MTU in bytes: the configured ``MTU``, else the underlay's minus 50 (VXLAN over
        IPv4)."""
        return self.settings.mtu or (self.underlay.mtu - VXLAN_OVERHEAD)

    def backend_data(self) -> dict[str, object]:
        """``{"VNI": ..., "VtepMAC": ...}`` (Flannel's vxlan BackendData); picks the MAC (existing
        device's, else random) on first use."""
        if self.mac is None:
            existing = self.nl.link(self.dev)
            self.mac = existing.mac if existing and existing.kind == "vxlan" else random_mac()
        return {"VNI": self.settings.vni, "VtepMAC": self.mac}

    def _matches(self, info_vxlan: dict[str, object]) -> bool:
        return (info_vxlan.get("id") == self.settings.vni
                and str(info_vxlan.get("local")) == str(self.underlay.ip)
                and info_vxlan.get("port") == self.settings.port
                and not info_vxlan.get("learning"))

    def setup(self, lease: Lease) -> DeviceInfo:
        """Create or keep ``flannel.<VNI>`` for ``lease`` (recreated when its VNI, local address,
        port or learning differ), address = the subnet's .0/32, up, MTU; returns the device. Raises
        :class:`BackendError` when the lease has no IPv4 subnet or the kernel refuses."""
        if lease.subnet is None:
            raise BackendError("vxlan: the lease has no IPv4 subnet")
        link = self.nl.link(self.dev)
        if link is not None and (link.kind != "vxlan" or not self._matches(link.vxlan)):
            log.warning("%s exists with other settings (%s); recreating it", self.dev,
                        {k: link.vxlan.get(k) for k in ("id", "local", "port", "learning")})
            self.nl.delete_link(link.index)
            link = None
        if link is None:
            if self.mac is None:
                self.backend_data()
            log.info("creating %s (vni %d, local %s, port %d, mac %s)", self.dev,
                     self.settings.vni, self.underlay.ip, self.settings.port, self.mac)
            self.nl.create_vxlan(self.dev, self.settings.vni, self.underlay.ip,
                                         self.settings.port, self.underlay.index, self.mac,
                                         self.mtu())
            link = self.nl.link(self.dev)
            assert link is not None
        self.index = link.index
        changes: dict[str, object] = {}
        if self.mac is None:
            self.mac = link.mac
        elif link.mac != self.mac:
            # The MAC peers know (our lease's) wins: a changed device MAC is put back.
            log.warning("%s has MAC %s, not the published %s: restoring it", self.dev,
                        link.mac, self.mac)
            changes["address"] = self.mac
        assert self.mac is not None
        save_vtep_mac(self.state_dir, self.settings.vni, self.mac)
        if changes:  # the MAC (the MTU, state and address follow in ensure_device)
            self.nl.set_link(link.index, **changes)
        want = IPv4Interface(f"{lease.subnet.network_address}/32")
        self.nl.ensure_device(link, self.mtu(), want)
        return DeviceInfo(self.dev, link.index, self.mtu(), self.mac, str(want))

    def attach(self) -> None:
        """Find an existing ``flannel.<VNI>`` (index and MAC) without changing anything."""
        link = self.nl.link(self.dev)
        if link is not None and link.kind == "vxlan":
            self.index = link.index
            self.mac = link.mac

    def device_present(self) -> bool:
        """Whether our device still exists with the index we set up and is up."""
        if self.index is None:
            return False
        link = self.nl.link(self.dev)
        return link is not None and link.index == self.index and link.up

    def desired(self, own: Lease, leases: Iterable[Lease]) -> DesiredState:
        """Pure: route, ARP and FDB entry per valid peer (:func:`desired_vxlan`)."""
        return desired_vxlan(own, leases, self.dev, self.underlay, self.settings.direct_routing)

    def actual(self) -> ActualState:
        """Our routes (protocol ``RTPROT_NETWEFT``) and the device's permanent ARP and FDB entries
        (those equal to :attr:`expected`'s are its records)."""
        known = Known.of_desired(self.expected) if self.expected is not None else None
        routes = frozenset(self.nl.routes(RTPROT_NETWEFT, known))
        if self.index is None:
            return ActualState(routes=routes)
        return ActualState(routes=routes, neighbours=frozenset(self.nl.neighbours(self.dev, known)),
                           fdb=frozenset(self.nl.fdb(self.dev, known)))

    def apply(self, changes: Changes) -> list[str]:
        """Apply ``changes`` in order (neighbours and FDB before routes); one line per entry that
        failed."""
        return apply_changes(self.nl, changes)

    def teardown(self) -> None:
        """Remove our routes and the device."""
        apply_changes(self.nl, Changes(del_routes=tuple(self.nl.routes(RTPROT_NETWEFT))))
        index = self.nl.link_index(self.dev)
        if index is not None:
            self.nl.delete_link(index)
        self.index = None

    def watched(self) -> Watched:
        """The device (its neighbour/FDB entries are ours) and the public interface."""
        return Watched(self.dev, self.index, self.index, self.underlay.index)

