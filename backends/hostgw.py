"""The host-gw backend: ``<peer subnet> via <peer public IP> dev <public iface>`` per peer.

It needs every node on one L2 segment: a peer whose public IP is not on a directly connected
network of the public interface cannot be reached this way. At start-up such a peer makes the
daemon refuse to start with a clear message; one appearing later is reported and skipped.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from netweft.backends.base import (
    RTPROT_NETWEFT,
    ActualState,
    Backend,
    BackendError,
    Changes,
    DesiredState,
    DeviceInfo,
    PeerState,
    Route,
    Underlay,
    Watched,
    peers_of,
)
from netweft.backends.netlink import Known, Netlink, apply_changes
from netweft.ipam.lease import Lease

if TYPE_CHECKING:
    from netweft.backends.registry import BackendParams


def not_on_link_message(lease: Lease, underlay: Underlay) -> str:
    """The error for a peer whose public IP is not on a network the public interface is connected to
    (host-gw needs one L2 segment, as Flannel's host-gw)."""
    nets = ", ".join(str(n) for n in underlay.networks) or "none"
    return (f"host-gw: peer {lease.subnet} at {lease.public_ip} is not directly reachable from "
            f"{underlay.iface} (connected networks: {nets}); host-gw needs all nodes on one L2 "
            "segment, use the vxlan backend instead")


def desired_hostgw(own: Lease, leases: Iterable[Lease], underlay: Underlay) -> DesiredState:
    """Pure: one gateway route per on-link peer; off-link peers carry an error."""
    peers = []
    for lease in peers_of(own, leases):
        assert lease.subnet is not None and lease.public_ip is not None
        if not underlay.on_link(lease.public_ip):
            peers.append(PeerState(lease.subnet, lease.public_ip,
                                   error=not_on_link_message(lease, underlay)))
            continue
        peers.append(PeerState(lease.subnet, lease.public_ip,
                               route=Route(lease.subnet, lease.public_ip, underlay.iface)))
    return DesiredState(tuple(peers))


def from_params(params: BackendParams) -> HostGwBackend:
    """The registry's factory (``Backend.Type`` ``host-gw``)."""
    return HostGwBackend(params.nl, params.underlay, params.config.mtu)


class HostGwBackend(Backend):
    """Flannel's ``host-gw``: a route to every peer subnet via the peer's public IP on the public
    interface; no device of its own, no encapsulation, MTU = the interface's."""

    type_name = "host-gw"

    def __init__(self, nl: Netlink, underlay: Underlay, mtu: int | None = None) -> None:
        self.nl = nl
        self.underlay = underlay
        self._mtu = mtu

    def mtu(self) -> int:
        """The pod MTU in bytes: the configured ``MTU``, else the public interface's."""
        return self._mtu or self.underlay.mtu

    def backend_data(self) -> dict[str, object]:
        """host-gw leases carry no BackendData (Flannel's)."""
        return {}

    def check_peers(self, own: Lease, leases: Iterable[Lease]) -> None:
        """Refuse (BackendError) when a peer is not on a directly connected network."""
        errors = self.desired(own, leases).errors
        if errors:
            raise BackendError(errors[0] + (f" (and {len(errors) - 1} more)"
                                            if len(errors) > 1 else ""))

    def setup(self, lease: Lease) -> DeviceInfo:
        """Check the public interface still exists and describe it. Raises :class:`BackendError`
        when it is gone."""
        link = self.nl.link(self.underlay.iface)
        if link is None:
            raise BackendError(f"host-gw: public interface {self.underlay.iface} is gone")
        return DeviceInfo(link.name, link.index, self.mtu(), link.mac, str(self.underlay.ip))

    def device_present(self) -> bool:
        """Whether the public interface still has the index we set up with."""
        return self.nl.link_index(self.underlay.iface) == self.underlay.index

    def desired(self, own: Lease, leases: Iterable[Lease]) -> DesiredState:
        """Pure: a route per valid peer (:func:`desired_hostgw`)."""
        return desired_hostgw(own, leases, self.underlay)

    def actual(self) -> ActualState:
        """Our routes in the kernel (protocol ``RTPROT_NETWEFT``; those equal to
        :attr:`expected`'s are its records)."""
        known = Known.of_desired(self.expected) if self.expected is not None else None
        return ActualState(routes=frozenset(self.nl.routes(RTPROT_NETWEFT, known)))

    def apply(self, changes: Changes) -> list[str]:
        """Apply ``changes`` (routes only); one line per entry that failed."""
        return apply_changes(self.nl, changes)

    def teardown(self) -> None:
        """Remove every route of ours."""
        apply_changes(self.nl, Changes(del_routes=tuple(self.nl.routes(RTPROT_NETWEFT))))

    def watched(self) -> Watched:
        """The public interface: its routes are ours, no neighbour entries."""
        return Watched(self.underlay.iface, self.underlay.index, None, self.underlay.index)
