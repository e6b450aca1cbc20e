"""Which existing lease is this node's: a pure decision over the listed leases.

Flannel reuses the lease whose PublicIP is the node's, else the subnet of ``subnet.env`` if it is
free, else a new one. That goes wrong in two ways (issue 9): a node whose public IP changed takes
a *new* subnet while its old lease keeps publishing the same VTEP MAC for 24 h (item 4), and a
node started with another node's public IP silently takes that node's lease over (item 11).
netweft records a node identity in its leases (``ipam/identity.py``), and decides here:

1. A lease carrying our identity is ours, whatever PublicIP it names (the one of the subnet in
   ``subnet.env`` first); it is reused and its PublicIP updated. Further leases with our
   identity are stale: deleted.
2. Else the lease holding our public IP: reused when it carries no identity (written by
   flanneld or an older netweft: Flannel's rule) or when ``take_over`` is set. A *live lease of
   another identity* is never taken: a node that just made its identity (first start, or it
   lost its state directory) waits for that lease to expire; a node with an established
   identity refuses to start (two nodes share a public IP).
3. Else the lease of the subnet in ``subnet.env`` when it carries no identity but publishes our
   VTEP MAC (our lease from before identities, after a public IP change).
4. One VTEP MAC is never published in two live leases: any other lease with our MAC and no
   identity (or ours, or the one taken over) is stale; one with another identity blocks us
   like rule 2. (Only with an identity: without one, Flannel's rules alone apply.)
Nothing found: the caller creates a new lease (``subnet.env``'s subnet if free).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from enum import Enum
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network

from netweft.ipam.lease import Lease


@dataclass(frozen=True)
class Claimant:
    """This node, as the lease decision sees it."""

    node_id: str | None            # None: no state directory, Flannel's rules only
    public_ip: IPv4Address | None
    public_ipv6: IPv6Address | None = None
    vtep_mac: str | None = None    # the MAC our backend will publish (vxlan), if any
    previous: IPv4Network | None = None       # the subnet in subnet.env
    previous_ipv6: IPv6Network | None = None
    new_identity: bool = False     # the identity was created by this start
    take_over: bool = False        # explicit: the lease holding our public IP is ours


class Owner(Enum):
    """Who wrote a lease, by the ``NetweftNodeID`` it records (see ``ipam/identity.py``)."""

    SELF = "self"
    OTHER = "other"
    UNKNOWN = "unknown"  # no identity recorded (flanneld, older netweft, a reservation)


def owner(lease: Lease, node_id: str | None) -> Owner:
    """Whose ``lease`` is: ours when it records ``node_id``, another node's when it records another
    id, UNKNOWN when it records none (flanneld, older netweft, a reservation)."""
    if not lease.node_id:
        return Owner.UNKNOWN
    return Owner.SELF if node_id is not None and lease.node_id == node_id else Owner.OTHER


@dataclass(frozen=True)
class Claim:
    """The decision. At most one of ``reuse`` / ``wait_for`` / ``refuse`` is set; none of them
    means: create a new lease. ``stale`` leases are ours and must be deleted first."""

    reuse: Lease | None = None
    stale: tuple[Lease, ...] = ()
    wait_for: Lease | None = None
    refuse: str | None = None
    why: str = ""  # one line for the log


def _holds_ip(lease: Lease, me: Claimant) -> bool:
    if me.public_ip is not None:
        return lease.public_ip == me.public_ip
    return me.public_ipv6 is not None and lease.public_ipv6 == me.public_ipv6


def _blocked(lease: Lease, me: Claimant, what: str) -> Claim:
    who = f"node {lease.node_id}"
    if me.new_identity:
        return Claim(wait_for=lease, why=(
            f"{what} is held by the live lease {lease.key_name} of {who}; this node has a new "
            "identity, so it waits for that lease to expire (or start it with "
            "--take-over-lease if that lease is this node's)"))
    return Claim(refuse=(
        f"{what} is held by the live lease {lease.key_name} of {who}, not this node: another "
        "node uses this public IP (fix --public-ip / --iface), or, if this node was "
        "reinstalled, start it once with --take-over-lease"))


def plan_claim(leases: Iterable[Lease], me: Claimant) -> Claim:
    """Decide which lease is ours (see the module docstring). Pure; input order irrelevant."""
    items = sorted(leases, key=lambda le: le.key_name)
    mine = [le for le in items if owner(le, me.node_id) is Owner.SELF]
    reuse: Lease | None = None
    why = ""
    taken_from: str | None = None
    if mine:
        reuse = next((le for le in mine if me.previous is not None
                      and le.subnet == me.previous), None) \
            or next((le for le in mine if _holds_ip(le, me)), None) or mine[0]
        why = f"reusing {reuse.key_name}, which carries this node's identity"
        if not _holds_ip(reuse, me):
            why += f" (PublicIP {reuse.public_ip or reuse.public_ipv6} -> " \
                   f"{me.public_ip or me.public_ipv6})"
    else:
        by_ip = next((le for le in items if _holds_ip(le, me)), None)
        if by_ip is not None:
            kind = owner(by_ip, me.node_id)
            if kind is Owner.UNKNOWN:
                reuse, why = by_ip, f"reusing {by_ip.key_name}, which holds this node's public IP"
            elif me.take_over:
                reuse, taken_from = by_ip, by_ip.node_id
                why = (f"taking over {by_ip.key_name} of node {by_ip.node_id} "
                       "(--take-over-lease)")
            else:
                return _blocked(by_ip, me, f"public IP {me.public_ip or me.public_ipv6}")
        elif me.previous is not None and me.vtep_mac:
            prev = next((le for le in items if le.subnet == me.previous), None)
            if prev is not None and owner(prev, me.node_id) is Owner.UNKNOWN \
                    and prev.vtep_mac == me.vtep_mac:
                reuse = prev
                why = (f"reusing {prev.key_name} from subnet.env: it publishes this node's VTEP "
                       f"MAC {me.vtep_mac} (PublicIP {prev.public_ip} -> {me.public_ip})")
    keep = reuse.key_name if reuse is not None else None
    stale: dict[str, Lease] = {le.key_name: le for le in mine if le.key_name != keep}
    if taken_from is not None:
        stale.update((le.key_name, le) for le in items
                     if le.node_id == taken_from and le.key_name != keep)
    if me.vtep_mac and me.node_id:
        for le in items:
            if le.key_name == keep or le.key_name in stale or le.vtep_mac != me.vtep_mac:
                continue
            if owner(le, me.node_id) is Owner.OTHER and le.node_id != taken_from:
                return _blocked(le, me, f"VTEP MAC {me.vtep_mac}")
            stale[le.key_name] = le
    return Claim(reuse=reuse, stale=tuple(stale.values()), why=why)


class Drift(Enum):
    """How the lease we hold differs from what etcd has now under its key (see :func:`drift`)."""

    SAME = "same"
    ALTERED = "altered"   # still ours, but its value was changed under us: restore it
    FOREIGN = "foreign"   # another node holds the key now


def drift(ours: Lease, current: Lease | None) -> Drift:
    """How the lease in etcd (``current``; None: its value no longer parses) differs from the
    one we keep (``ours``). With identities, only another identity makes it foreign; without
    (no state directory), a different PublicIP does, as in Flannel."""
    if current is None:
        return Drift.ALTERED
    if current.value() == ours.value():
        return Drift.SAME
    if ours.node_id:
        return Drift.FOREIGN if owner(current, ours.node_id) is Owner.OTHER else Drift.ALTERED
    if current.node_id or current.public_ip != ours.public_ip:
        return Drift.FOREIGN
    return Drift.ALTERED


def previous_lease(leases: Iterable[Lease], node_id: str | None, public_ip: IPv4Address,
                   backend_type: str) -> Lease | None:
    """The lease this node held before, for its backend to reuse BackendData from (the VTEP
    MAC): the one of ``backend_type`` carrying our identity, else the one of ``backend_type``
    holding ``public_ip`` without an identity (Flannel's rule); None when there is none. Pure."""
    leases = list(leases)
    mine = (le for le in leases
            if node_id and le.node_id == node_id and le.backend_type == backend_type)
    flannel = (le for le in leases
               if le.public_ip == public_ip and not le.node_id and le.backend_type == backend_type)
    return next(mine, None) or next(flannel, None)
