"""The backend interface and the desired-state records every backend computes.

A backend turns (own lease, peer leases, config) into a :class:`DesiredState` with a pure
function, and a small adapter makes the kernel match it: dump what is there (only our device's
entries and routes carrying our protocol number), diff, apply the difference. Applying in the
documented order matters for VXLAN: neighbour, then FDB entry, then route (removal in reverse).
"""

from __future__ import annotations

import abc
from collections.abc import Iterable
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network

from netweft.ipam.lease import Lease

# Routes netweft installs carry this protocol number (`ip route ... proto 78`), so stray
# detection only ever looks at, and removes, our own routes. 78 is 'N' and unassigned in
# iproute2's rt_protos.
RTPROT_NETWEFT = 78


class BackendError(Exception):
    """A backend cannot do its job; the message is one line a person can act on."""


@dataclass(frozen=True, slots=True)
class Route:
    """``<dst> via <gateway> dev <dev> [onlink] proto 78``, or ``<dst> dev <dev> proto 78``
    (scope link, no gateway: a layer-3 device such as WireGuard's) when ``gateway`` is None."""

    dst: IPv4Network
    gateway: IPv4Address | None
    dev: str
    onlink: bool = False

    def _key(self) -> tuple[IPv4Network, int, str, bool]:
        return (self.dst, int(self.gateway) if self.gateway else -1, self.dev, self.onlink)

    def __lt__(self, other: Route) -> bool:
        return self._key() < other._key()

    def describe(self) -> str:
        """The route in ``ip route`` words (``10.244.2.0/24 via 192.168.1.2 dev eth0 onlink``), for
        logs and errors."""
        via = f" via {self.gateway}" if self.gateway else ""
        return f"{self.dst}{via} dev {self.dev}" + (" onlink" if self.onlink else "")


@dataclass(frozen=True, slots=True, order=True)
class Neighbour:
    """A permanent ARP entry: ``<ip> lladdr <mac> dev <dev> nud permanent``."""

    ip: IPv4Address
    mac: str
    dev: str

    def describe(self) -> str:
        """The entry in ``ip neigh`` words, for logs and errors."""
        return f"{self.ip} lladdr {self.mac} dev {self.dev} permanent"


@dataclass(frozen=True, slots=True, order=True)
class FdbEntry:
    """A VXLAN forwarding entry: ``<mac> dev <dev> dst <underlay ip> self permanent``."""

    mac: str
    dst: IPv4Address
    dev: str

    def describe(self) -> str:
        """The entry in ``bridge fdb`` words, for logs and errors."""
        return f"{self.mac} dev {self.dev} dst {self.dst} self permanent"


@dataclass(frozen=True, order=True)
class WgPeer:
    """One WireGuard peer as ``wg set <dev> peer ...`` writes it and ``wg show <dev> dump``
    reads it back: base64 public key, ``ip:port`` endpoint, allowed IPs (sorted CIDR strings),
    persistent keepalive in seconds (0: off) and the preshared key (base64, or None). The PSK is
    a secret: :meth:`describe` leaves it out, and nothing logs this record whole."""

    public_key: str
    endpoint: str
    allowed_ips: tuple[str, ...]
    keepalive: int = 0
    psk: str | None = field(default=None, repr=False)

    def describe(self) -> str:
        """The peer in ``wg`` words (never the preshared key itself), for logs and errors."""
        return (f"peer {self.public_key} endpoint {self.endpoint} allowed-ips "
                f"{','.join(self.allowed_ips)}"
                + (f" keepalive {self.keepalive}" if self.keepalive else "")
                + (" with preshared key" if self.psk else ""))


@dataclass(frozen=True, slots=True)
class PeerState:
    """What one peer lease needs in the kernel (any part may be empty)."""

    subnet: IPv4Network
    public_ip: IPv4Address
    route: Route | None = None
    neighbour: Neighbour | None = None
    fdb: FdbEntry | None = None
    wg: WgPeer | None = None
    error: str | None = None  # why this peer cannot be programmed (it is skipped)


@dataclass(frozen=True)
class DesiredState:
    """Everything the backend wants in the kernel for the current lease set."""

    peers: tuple[PeerState, ...] = ()

    @property
    def routes(self) -> frozenset[Route]:
        """Every peer's route (vxlan: to the peer subnet via its VTEP address onlink; host-gw: via
        its public IP)."""
        return frozenset(p.route for p in self.peers if p.route is not None)

    @property
    def neighbours(self) -> frozenset[Neighbour]:
        """Every peer's permanent ARP entry (vxlan: VTEP address -> VtepMAC, as Flannel)."""
        return frozenset(p.neighbour for p in self.peers if p.neighbour is not None)

    @property
    def fdb(self) -> frozenset[FdbEntry]:
        """Every peer's permanent FDB entry (vxlan: VtepMAC -> public IP, as Flannel)."""
        return frozenset(p.fdb for p in self.peers if p.fdb is not None)

    @property
    def wg_peers(self) -> frozenset[WgPeer]:
        """Every peer's WireGuard peer (public key, endpoint, allowed IPs)."""
        return frozenset(p.wg for p in self.peers if p.wg is not None)

    @property
    def errors(self) -> list[str]:
        """One line per lease that cannot be programmed (e.g. host-gw: a peer not on our L2
        segment)."""
        return [p.error for p in self.peers if p.error]


@dataclass(frozen=True)
class ActualState:
    """What the kernel holds that is ours: routes with our protocol, entries on our device."""

    routes: frozenset[Route] = frozenset()
    neighbours: frozenset[Neighbour] = frozenset()
    fdb: frozenset[FdbEntry] = frozenset()
    wg_peers: frozenset[WgPeer] = frozenset()


@dataclass(frozen=True)
class Changes:
    """The difference between desired and actual, in the order it must be applied (WireGuard
    peers: removals and additions go to the device in one ``wg set`` before the routes)."""

    add_neighbours: tuple[Neighbour, ...] = ()
    add_fdb: tuple[FdbEntry, ...] = ()
    add_routes: tuple[Route, ...] = ()
    del_routes: tuple[Route, ...] = ()
    del_fdb: tuple[FdbEntry, ...] = ()
    del_neighbours: tuple[Neighbour, ...] = ()
    add_wg_peers: tuple[WgPeer, ...] = ()
    del_wg_peers: tuple[WgPeer, ...] = ()

    @property
    def empty(self) -> bool:
        """Nothing to change."""
        return self.count == 0

    @property
    def count(self) -> int:
        """How many kernel entries the change adds or removes, over every kind."""
        return (len(self.add_neighbours) + len(self.add_fdb) + len(self.add_routes)
                + len(self.del_routes) + len(self.del_fdb) + len(self.del_neighbours)
                + len(self.add_wg_peers) + len(self.del_wg_peers))


def diff(desired: DesiredState, actual: ActualState) -> Changes:
    """What to add and remove so that ``actual`` becomes ``desired``.

    Entries are compared by value, and entries keyed the same way but with different values are
    replaced (route to a subnet, neighbour for an IP, FDB entry for a MAC): those appear in the
    "add" lists only, because the adapter uses replace semantics.
    """
    want_routes = desired.routes
    want_neigh = desired.neighbours
    want_fdb = desired.fdb
    route_keys = {r.dst for r in want_routes}
    neigh_keys = {(n.ip, n.dev) for n in want_neigh}
    fdb_keys = {(f.mac, f.dst, f.dev) for f in want_fdb}
    want_wg = desired.wg_peers
    wg_keys = {p.public_key for p in want_wg}
    return Changes(
        add_neighbours=tuple(sorted(want_neigh - actual.neighbours)),
        add_fdb=tuple(sorted(want_fdb - actual.fdb)),
        add_routes=tuple(sorted(want_routes - actual.routes)),
        del_routes=tuple(sorted(r for r in actual.routes - want_routes if r.dst not in route_keys)),
        del_fdb=tuple(sorted(f for f in actual.fdb - want_fdb
                             if (f.mac, f.dst, f.dev) not in fdb_keys)),
        del_neighbours=tuple(sorted(n for n in actual.neighbours - want_neigh
                                    if (n.ip, n.dev) not in neigh_keys)),
        add_wg_peers=tuple(sorted(want_wg - actual.wg_peers)),
        del_wg_peers=tuple(sorted(p for p in actual.wg_peers - want_wg
                                  if p.public_key not in wg_keys)),
    )


def lease_change(old: DesiredState, new: DesiredState) -> Changes:
    """The changes that turn one lease's entries (``old``) into its new ones (``new``), without
    looking at the kernel: the event path. The periodic pass still compares with the kernel."""
    return diff(new, ActualState(old.routes, old.neighbours, old.fdb, old.wg_peers))


def merge(changes: list[Changes]) -> Changes:
    """Several Changes as one (applied as one batch per kind)."""
    return Changes(
        add_neighbours=tuple(x for c in changes for x in c.add_neighbours),
        add_fdb=tuple(x for c in changes for x in c.add_fdb),
        add_routes=tuple(x for c in changes for x in c.add_routes),
        del_routes=tuple(x for c in changes for x in c.del_routes),
        del_fdb=tuple(x for c in changes for x in c.del_fdb),
        del_neighbours=tuple(x for c in changes for x in c.del_neighbours),
        add_wg_peers=tuple(x for c in changes for x in c.add_wg_peers),
        del_wg_peers=tuple(x for c in changes for x in c.del_wg_peers),
    )


@dataclass(frozen=True)
class DeviceInfo:
    """The backend device after setup (host-gw has none: ``name`` is the public interface)."""

    name: str
    index: int
    mtu: int
    mac: str | None = None
    address: str | None = None


@dataclass(frozen=True)
class Underlay:
    """The node's public side: interface, its address, MTU and directly connected networks."""

    iface: str
    index: int
    ip: IPv4Address
    mtu: int
    networks: tuple[IPv4Network, ...] = field(default_factory=tuple)

    def on_link(self, ip: IPv4Address) -> bool:
        """True when ``ip`` is on one of the public interface's connected networks."""
        return any(ip in net for net in self.networks)


@dataclass(frozen=True)
class Watched:
    """The kernel objects a backend depends on, for the netlink watcher: the device's name and
    index (host-gw: the public interface), the index whose neighbour/FDB entries are ours
    (``None``: none), and the public interface's index. Indexes are ``None`` before setup."""

    device: str
    device_index: int | None
    neighbour_index: int | None
    underlay_index: int | None


def peers_of(own: Lease | None, leases: Iterable[Lease]) -> list[Lease]:
    """Leases of other nodes that can be programmed (reservations without a public IP, leases
    with no IPv4 subnet, and our own lease are left out)."""
    out = []
    for lease in leases:
        if lease.subnet is None or lease.public_ip is None:
            continue
        if own is not None and (lease.subnet == own.subnet or lease.public_ip == own.public_ip):
            continue
        out.append(lease)
    return sorted(out, key=lambda lease: lease.subnet)  # type: ignore[arg-type, return-value]


class Backend(abc.ABC):
    """One dataplane: set up the device for our lease, program peers, reconcile."""

    type_name: str = ""
    # The peer subnets the last reconcile() wanted without error (not the whole desired state:
    # kept between passes, its records were ~400 bytes a lease of the daemon's RSS, issue 12).
    last_ok: frozenset[IPv4Network] = frozenset()
    # While reconcile() reads the kernel: what it expects there. actual() answers an entry
    # equal to one of these with that record instead of a new one, so a full pass allocates
    # only for entries that differ (with 5,000 peers the kernel's 15,000 entries as new records
    # were ~3.4 MiB at every pass, and the daemon's RSS kept the peak; issue 12).
    expected: DesiredState | None = None
    underlay: Underlay  # the node's public side (set by the constructor, replaced by rebind)

    @abc.abstractmethod
    def backend_data(self) -> dict[str, object]:
        """The lease's BackendData for this node (e.g. {"VNI": 1, "VtepMAC": "..."})."""

    @abc.abstractmethod
    def mtu(self) -> int:
        """The pod network MTU this backend gives (subnet.env FLANNEL_MTU)."""

    def check_peers(self, own: Lease, leases: Iterable[Lease]) -> None:  # noqa: B027
        """Raise BackendError when the backend cannot work with these peers at all (the
        default: every peer is acceptable)."""

    def attach(self) -> None:  # noqa: B027
        """Find an existing device without changing anything (for inspection)."""

    @abc.abstractmethod
    def setup(self, lease: Lease) -> DeviceInfo:
        """Create or keep the device for ``lease`` (idempotent: no change when already right)."""

    @abc.abstractmethod
    def desired(self, own: Lease, leases: Iterable[Lease]) -> DesiredState:
        """Pure: what the kernel should hold for these leases."""

    @abc.abstractmethod
    def actual(self) -> ActualState:
        """What the kernel holds that is ours."""

    @abc.abstractmethod
    def apply(self, changes: Changes) -> list[str]:
        """Apply ``changes`` in order; returns one line per entry that failed."""

    @abc.abstractmethod
    def device_present(self) -> bool:
        """False when the backend device has gone (deleted by hand): setup must run again."""

    @abc.abstractmethod
    def teardown(self) -> None:
        """Remove everything this backend installed (``--cleanup-on-exit``)."""

    @abc.abstractmethod
    def watched(self) -> Watched:
        """What the netlink watcher follows for this backend (read from another thread:
        plain attribute reads only)."""

    def rebind(self, underlay: Underlay) -> None:
        """The public side changed while running (address, MTU, connected networks): use
        ``underlay`` from now on; the next :meth:`setup` brings the device in line."""
        self.underlay = underlay

    def status(self) -> dict[str, object]:
        """Backend-specific facts for ``netweft status`` (e.g. which WireGuard runs)."""
        return {}

    def close(self) -> None:  # noqa: B027
        """The daemon stops (without cleanup): release what must not outlive it (the default:
        nothing; the kernel keeps the dataplane)."""

    def reconcile(self, own: Lease, leases: Iterable[Lease]) -> tuple[Changes, list[str]]:
        """Desired minus actual, applied. Returns the changes and the errors (per entry)."""
        desired = self.desired(own, leases)
        self.last_ok = frozenset(p.subnet for p in desired.peers if p.error is None)
        self.expected = desired
        try:
            actual = self.actual()
        finally:
            self.expected = None
        changes = diff(desired, actual)
        del actual
        errors = list(desired.errors)
        if not changes.empty:
            errors += self.apply(changes)
        return changes, errors

    # Convenience names from the interface in the brief: add or remove one peer.
    def add_peer(self, own: Lease, peer: Lease) -> list[str]:
        """Program one peer (a lease event between full passes): its desired entries added; returns
        one line per entry or lease that failed (no exception for a kernel refusal)."""
        state = self.desired(own, [peer])
        changes = Changes(
            add_neighbours=tuple(state.neighbours), add_fdb=tuple(state.fdb),
            add_routes=tuple(state.routes), add_wg_peers=tuple(state.wg_peers))
        return list(state.errors) + self.apply(changes)

    def remove_peer(self, own: Lease, peer: Lease) -> list[str]:
        """Remove one peer's entries (a lease removed or expired); returns one line per entry that
        failed."""
        state = self.desired(own, [peer])
        changes = Changes(
            del_routes=tuple(state.routes), del_fdb=tuple(state.fdb),
            del_neighbours=tuple(state.neighbours), del_wg_peers=tuple(state.wg_peers))
        return self.apply(changes)
