"""Which leases read from etcd may be programmed: a pure check against the network config.

etcd is shared (flanneld, other netweft nodes, people with etcdctl), so nothing read from it is
trusted. :func:`check_leases` splits a lease set into the valid ones and :class:`InvalidLease`
entries with a one-line reason. A lease is invalid when:

- its subnet's prefix length is not the config's ``SubnetLen`` / ``IPv6SubnetLen``;
- its subnet lies outside ``Network`` / ``IPv6Network`` (or the config has no such family);
- it has a subnet of a family but no public address of that family to reach it through, or
  that address is not a unicast address (0.0.0.0, loopback, multicast, ...);
- it overlaps the node's own subnet (never a peer route over our own pods: issue 9 item 12);
- it overlaps another lease that was created earlier (etcd ``create_revision``; ties broken by
  key), so every node drops the same one of the pair.

Malformed values (wrong JSON types) never become a :class:`~netweft.ipam.lease.Lease`; the store
reports them as :class:`InvalidLease` without a lease (``LeaseStore.scan``).
:class:`LeaseFilter` remembers what it has already logged, so a bad lease costs one log line
(and one more when it becomes valid again), not one per reconcile pass.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network

from netweft.ipam.config import NetworkConfig
from netweft.ipam.lease import Lease

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class InvalidLease:
    """A lease (or an unparsable key/value) that is never programmed, and why."""

    key_name: str          # the key after ``<prefix>/subnets/``
    reason: str            # one line, starting with the field it is about
    lease: Lease | None = None  # None: the value could not be parsed at all


@dataclass(frozen=True)
class LeaseCheck:
    """The leases that may be programmed (``valid``) and those that may not, each with the reason
    (``invalid``)."""

    valid: list[Lease] = field(default_factory=list)
    invalid: list[InvalidLease] = field(default_factory=list)


def _unicast(ip: IPv4Address | IPv6Address) -> bool:
    return not (ip.is_unspecified or ip.is_loopback or ip.is_multicast or ip.is_link_local
                or (isinstance(ip, IPv4Address) and ip == IPv4Address("255.255.255.255")))


@dataclass(frozen=True)
class _Family:
    """One address family's part of a lease and of the config, with the config's field names."""

    subnet: IPv4Network | IPv6Network | None
    public: IPv4Address | IPv6Address | None
    network: IPv4Network | IPv6Network | None  # None: the config has no such network
    subnet_len: int
    names: tuple[str, str, str]                # Network, SubnetLen, PublicIP field names
    public_required: bool


def _family_problem(f: _Family) -> str | None:
    net_name, len_name, pub_name = f.names
    if f.subnet is None:
        return None
    if f.network is None:
        return f"subnet: {f.subnet} but the network has no {net_name}"
    if f.subnet.prefixlen != f.subnet_len:
        return f"{len_name}: {f.subnet} is not a /{f.subnet_len}"
    if not _inside(f.subnet, f.network):
        return f"{net_name}: {f.subnet} is outside {f.network}"
    if f.public is None:
        return f"{pub_name}: missing for {f.subnet}" if f.public_required else None
    if not _unicast(f.public):
        return f"{pub_name}: {f.public} is not a unicast address"
    return None


def shape_problem(cfg: NetworkConfig, lease: Lease) -> str | None:
    """Why ``lease`` alone does not fit ``cfg`` (None when it does). An IPv6 subnet needs a
    PublicIPv6 only when the lease has no IPv4 side to be reached through."""
    if lease.subnet is None and lease.ipv6_subnet is None:
        return "subnet: the lease has none"
    v4 = _Family(lease.subnet, lease.public_ip, cfg.network if cfg.enable_ipv4 else None,
                 cfg.subnet_len, ("Network", "SubnetLen", "PublicIP"), True)
    v6 = _Family(lease.ipv6_subnet, lease.public_ipv6,
                 cfg.ipv6_network if cfg.enable_ipv6 else None, cfg.ipv6_subnet_len,
                 ("IPv6Network", "IPv6SubnetLen", "PublicIPv6"), lease.subnet is None)
    return _family_problem(v4) or _family_problem(v6)


def _inside(subnet: IPv4Network | IPv6Network, network: IPv4Network | IPv6Network) -> bool:
    """``subnet.subnet_of(network)`` for one family, without ``broadcast_address``: the
    ipaddress module caches that (and ``hostmask``) in every subnet it is asked of, two more
    address objects per lease for the daemon's life (issue 12)."""
    return subnet.prefixlen >= network.prefixlen and \
        subnet.network_address in network  # type: ignore[operator]


def _nets_overlap(a: IPv4Network | IPv6Network, b: IPv4Network | IPv6Network) -> bool:
    """``a.overlaps(b)`` (same family): two CIDR blocks overlap only when one holds the
    other, so when one holds the other's first address (no cached broadcast addresses)."""
    return a.network_address in b or b.network_address in a  # type: ignore[operator]


def _overlaps(a: Lease, b: Lease) -> bool:
    return bool((a.subnet is not None and b.subnet is not None
                 and _nets_overlap(a.subnet, b.subnet))
                or (a.ipv6_subnet is not None and b.ipv6_subnet is not None
                    and _nets_overlap(a.ipv6_subnet, b.ipv6_subnet)))


def solo_problem(cfg: NetworkConfig, lease: Lease, own: Lease | None) -> str | None:
    """Why ``lease`` is invalid on its own (its shape, or overlapping our ``own``); None when
    it is not. Pure."""
    problem = shape_problem(cfg, lease)
    if problem is None and own is not None and _overlaps(lease, own):
        problem = f"subnet: overlaps this node's own subnet {own.subnet or own.ipv6_subnet}"
    return problem


def check_leases(cfg: NetworkConfig, leases: Iterable[Lease], own: Lease | None = None,
                 solo: Callable[[Lease], str | None] | None = None) -> LeaseCheck:
    """Split ``leases`` into the valid ones (in input order) and the invalid ones.

    ``own`` is this node's lease: it is always valid here (the daemon chose it) and every other
    lease overlapping it is invalid. ``solo(lease)``: :func:`solo_problem` for ``cfg`` and
    ``own`` (a caller may pass a memoised one). Cost: O(n) dictionary lookups, since valid
    subnets all have the config's prefix length and two of them overlap only when they are
    equal.
    """
    items = list(leases)
    invalid: dict[str, InvalidLease] = {}
    own_key = own.key_name if own is not None else None
    for lease in items:
        if lease.key_name == own_key:
            continue
        problem = solo(lease) if solo is not None else solo_problem(cfg, lease, own)
        if problem is not None:
            invalid[lease.key_name] = InvalidLease(lease.key_name, problem, lease)
    # Among the rest, the lease created first keeps a subnet; later ones overlapping it lose.
    by_v4: dict[object, Lease] = {}
    by_v6: dict[object, Lease] = {}
    ordered = sorted((le for le in items if le.key_name not in invalid and le.key_name != own_key),
                     key=lambda le: (le.create_revision or le.mod_revision, le.key_name))
    for lease in ordered:
        holder = (by_v4.get(lease.subnet) if lease.subnet is not None else None) or \
            (by_v6.get(lease.ipv6_subnet) if lease.ipv6_subnet is not None else None)
        if holder is not None:
            invalid[lease.key_name] = InvalidLease(
                lease.key_name, f"subnet: overlaps the earlier lease {holder.key_name}", lease)
            continue
        if lease.subnet is not None:
            by_v4[lease.subnet] = lease
        if lease.ipv6_subnet is not None:
            by_v6[lease.ipv6_subnet] = lease
    valid = [le for le in items if le.key_name not in invalid]
    return LeaseCheck(valid, [invalid[le.key_name] for le in items if le.key_name in invalid])


class LeaseFilter:
    """:func:`check_leases` with one log line per newly invalid (or newly valid again) lease."""

    def __init__(self, cfg: NetworkConfig, logger: logging.Logger | None = None) -> None:
        self.cfg = cfg
        self.log = logger or log
        self.reported: dict[str, str] = {}  # key name -> reason last logged
        # key name -> (lease, own, solo problem): a lease object the watch has not replaced
        # is not checked again (the daemon re-checks the whole view at every lease event)
        self._solo: dict[str, tuple[Lease, Lease | None, str | None]] = {}

    def solo(self, lease: Lease, own: Lease | None) -> str | None:
        """:func:`solo_problem` for this filter's config, memoised per lease object."""
        key = lease.key_name
        hit = self._solo.get(key)
        if hit is not None and hit[0] is lease and hit[1] is own:
            return hit[2]
        problem = solo_problem(self.cfg, lease, own)
        self._solo[key] = (lease, own, problem)
        return problem

    def valid(self, leases: Iterable[Lease], own: Lease | None = None) -> list[Lease]:
        """The programmable leases among ``leases`` (``own`` included if it is among them)."""
        items = list(leases)
        result = check_leases(self.cfg, items, own, lambda le: self.solo(le, own))
        if len(self._solo) > 2 * len(items) + 64:  # forget leases that are gone
            keys = {le.key_name for le in items}
            self._solo = {k: v for k, v in self._solo.items() if k in keys}
        now = {bad.key_name: bad.reason for bad in result.invalid}
        for key, reason in now.items():
            if self.reported.get(key) != reason:
                self.log.warning("ignoring lease %s: %s", key, reason)
        valid_keys = {le.key_name for le in result.valid}
        for key in (self.reported.keys() - now.keys()) & valid_keys:
            self.log.info("lease %s is valid again", key)
        self.reported = now
        return result.valid
