"""Subnet leases in etcd, Flannel-compatible: acquire, renew, release, reserve, list, watch.

Desired behaviour beyond Flannel: a lost creation race retries with another subnet instead of
exiting, and a watch never loses an event (after compaction or a broken stream it re-lists and
emits the difference).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network
from typing import Any

from netweft.common import defaults
from netweft.ipam.claim import Claimant, Drift, drift, plan_claim
from netweft.ipam.config import ConfigError, NetworkConfig, parse_config
from netweft.ipam.lease import Lease, LeaseFormatError, parse_lease
from netweft.ipam.leasecheck import InvalidLease
from netweft.kv.backoff import Backoff
from netweft.kv.protocol import KV
from netweft.kv.reflector import Listed, Reflector
from netweft.kv.types import EtcdError, EventType, KeyValue

log = logging.getLogger(__name__)

DEFAULT_TTL = defaults.LEASE_TTL
CANDIDATES = 100        # pick randomly among this many free subnets, as Flannel does
ACQUIRE_ATTEMPTS = 50


class LeaseError(Exception):
    """A lease operation that cannot succeed as asked."""


class SubnetsExhausted(LeaseError):
    """Every subnet of the network is leased or reserved."""


class LeaseLost(LeaseError):
    """Our lease (or its key) is gone from etcd, or another node's identity holds it now."""


class LeaseConflict(LeaseError):
    """Another node's live lease holds our public IP or VTEP MAC: never taken over."""


class LeaseHeld(LeaseError):
    """A live lease of another identity holds our public IP and this node has a new identity:
    wait for it to expire (``seconds_left``; -1: a reservation, never) and try again."""

    def __init__(self, message: str, lease: Lease, seconds_left: int) -> None:
        super().__init__(message)
        self.lease = lease
        self.seconds_left = seconds_left


def _duration(seconds: int) -> str:
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m{seconds % 60:02d}s"


def _changes(ours: Lease, current: Lease | None) -> str:
    """``PublicIP 192.0.2.1 -> 192.0.2.9, VtepMAC ...``: what differs, for the log."""
    if current is None:
        return "its value was not a lease"
    mine, theirs = ours.value(), current.value()
    diffs = [f"{k} {json.dumps(theirs.get(k))} (ours {json.dumps(mine.get(k))})"
             for k in sorted(mine.keys() | theirs.keys()) if mine.get(k) != theirs.get(k)]
    return ", ".join(diffs) or "etcd lease"


def fits(cfg: NetworkConfig, lease: Lease) -> bool:
    """Whether our own lease may be kept under ``cfg`` (Flannel's isSubnetConfigCompat: the
    subnet's length and position between SubnetMin and SubnetMax, per family)."""
    if cfg.enable_ipv4 and cfg.network is not None:
        if lease.subnet is None or cfg.subnet_index(lease.subnet) is None:
            return False
    elif lease.subnet is not None:
        return False
    if cfg.enable_ipv6 and cfg.ipv6_network is not None:
        sub6 = lease.ipv6_subnet
        lo, hi = cfg.ipv6_subnet_min, cfg.ipv6_subnet_max
        return (sub6 is not None and sub6.prefixlen == cfg.ipv6_subnet_len and lo is not None
                and hi is not None and lo <= sub6.network_address <= hi)
    return lease.ipv6_subnet is None


@dataclass(frozen=True)
class LeaseEvent:
    """A lease appearing (``added``: created or changed) or going (``removed``: deleted or expired),
    as Flannel's ``subnet.Event`` (EventAdded/EventRemoved)."""

    kind: str  # "added" | "removed"
    lease: Lease


@dataclass(frozen=True)
class LeaseScan:
    """Everything under ``<prefix>/subnets/`` at ``revision``: the leases that parse, and the
    keys whose name or value is not a lease (shown as invalid by ``netweft leases list``)."""

    leases: list[Lease]
    malformed: list[InvalidLease]
    revision: int


def _parse_kv(kv: KeyValue, subnets_prefix: str) -> Lease:
    """LeaseFormatError when the key or value is not a lease."""
    return parse_lease(kv.key[len(subnets_prefix):], kv.value, etcd_lease_id=kv.lease,
                       mod_revision=kv.mod_revision, create_revision=kv.create_revision)


def _kv_to_lease(kv: KeyValue, subnets_prefix: str) -> Lease | None:
    try:
        return _parse_kv(kv, subnets_prefix)
    except LeaseFormatError as exc:
        log.warning("ignoring %s: %s", kv.key, exc)
        return None


class LeaseStore:
    """The leases of one network (one etcd prefix) in Flannel's etcd layout
    (``pkg/subnet/etcd``): ``<prefix>/config`` and ``<prefix>/subnets/<key>``, each lease
    attached to an etcd lease of ``ttl`` seconds (Flannel's 24 h by default). Methods raise
    :class:`EtcdError` when etcd cannot answer, besides the errors they name."""

    def __init__(self, etcd: KV, prefix: str = defaults.ETCD_PREFIX,
                 ttl: int = DEFAULT_TTL) -> None:
        self.etcd = etcd
        self.prefix = prefix.rstrip("/")
        self.ttl = ttl

    @property
    def config_key(self) -> str:
        """``<prefix>/config``: the network config's key (Flannel's)."""
        return f"{self.prefix}/config"

    @property
    def subnets_prefix(self) -> str:
        """``<prefix>/subnets/``: where leases live (Flannel's)."""
        return f"{self.prefix}/subnets/"

    def key_for(self, lease: Lease) -> str:
        """The etcd key of ``lease``."""
        return self.subnets_prefix + lease.key_name

    # --- config -----------------------------------------------------------------------------

    async def get_config(self) -> NetworkConfig | None:
        """The network config, or None while it is not in etcd. Raises :class:`ConfigError` naming
        the key when it is invalid; :class:`EtcdError`."""
        kv = await self.etcd.get(self.config_key)
        if kv is None:
            return None
        try:
            return parse_config(kv.value)
        except ConfigError as exc:
            raise ConfigError(f"{self.config_key}: {exc}") from None

    async def set_config(self, cfg: NetworkConfig) -> None:
        """Write ``cfg`` to ``<prefix>/config`` (JSON). Raises :class:`EtcdError`."""
        await self.etcd.put(self.config_key, cfg.to_json())

    # --- reading ----------------------------------------------------------------------------

    async def scan(self, with_expiry: bool = False) -> LeaseScan:
        """Every key under ``subnets/``: parsed leases and malformed entries (not logged)."""
        kvs, revision = await self.etcd.get_prefix(self.subnets_prefix)
        leases: list[Lease] = []
        malformed: list[InvalidLease] = []
        for kv in kvs:
            try:
                leases.append(_parse_kv(kv, self.subnets_prefix))
            except LeaseFormatError as exc:
                malformed.append(InvalidLease(kv.key[len(self.subnets_prefix):], str(exc)))
        if with_expiry:
            leases = await self._with_expiry(leases)
        return LeaseScan(leases, malformed, revision)

    async def list(self, with_expiry: bool = False) -> tuple[list[Lease], int]:
        """The leases that parse (malformed keys are logged and skipped) and the revision."""
        kvs, revision = await self.etcd.get_prefix(self.subnets_prefix)
        leases = [lease for kv in kvs if (lease := _kv_to_lease(kv, self.subnets_prefix))]
        if with_expiry:
            leases = await self._with_expiry(leases)
        return leases, revision

    async def _with_expiry(self, leases: list[Lease]) -> list[Lease]:
        if leases:
            now = time.time()
            ids = sorted({le.etcd_lease_id for le in leases if le.etcd_lease_id})
            ttls = await asyncio.gather(*(self.etcd.time_to_live(i) for i in ids))
            left = dict(zip(ids, ttls, strict=True))
            leases = [replace(le, expiration=now + left[le.etcd_lease_id])
                      if left.get(le.etcd_lease_id, -1) >= 0 else le for le in leases]
        return leases

    # --- acquiring --------------------------------------------------------------------------

    async def acquire(self, cfg: NetworkConfig, public_ip: IPv4Address | None,
                      backend_type: str, backend_data: dict[str, Any] | None = None,
                      previous: IPv4Network | None = None,
                      public_ipv6: IPv6Address | None = None,
                      previous_ipv6: IPv6Network | None = None, node_id: str | None = None,
                      new_identity: bool = False, take_over: bool = False) -> Lease:
        """Our lease, decided by :func:`~netweft.ipam.claim.plan_claim`: the one carrying
        ``node_id``, else the one holding our public IP (unless another identity's), else the
        ``previous`` subnet's when it publishes our VTEP MAC, else ``previous`` if free, else a
        random free subnet. Our stale leases (same identity or VTEP MAC) are deleted first; a
        reused lease that no longer fits the config is deleted too (Flannel does the same).
        Lost creation races are retried with another subnet.

        Raises :class:`LeaseConflict` when another identity's live lease holds our public IP or
        VTEP MAC, :class:`LeaseHeld` when we must wait for it to expire (``new_identity``),
        :class:`SubnetsExhausted`, :class:`LeaseError` after too many lost races.
        """
        data = dict(backend_data or {})
        mac = data.get("VtepMAC")
        me = Claimant(node_id=node_id, public_ip=public_ip, public_ipv6=public_ipv6,
                      vtep_mac=mac if isinstance(mac, str) else None, previous=previous,
                      previous_ipv6=previous_ipv6, new_identity=new_identity,
                      take_over=take_over)
        for _attempt in range(ACQUIRE_ATTEMPTS):
            leases, _rev = await self.list()
            claim = plan_claim(leases, me)
            if claim.refuse is not None:
                raise LeaseConflict(claim.refuse)
            if claim.wait_for is not None:
                held = claim.wait_for
                left = await self.etcd.time_to_live(held.etcd_lease_id) \
                    if held.etcd_lease_id else -1
                raise LeaseHeld(claim.why + (f"; it expires in {_duration(left)}" if left >= 0
                                             else "; it is a reservation and never expires"),
                                held, left)
            stale = list(claim.stale)
            reuse = claim.reuse
            if reuse is not None and not fits(cfg, reuse):
                log.warning("lease %s no longer fits the network config: deleting it",
                            reuse.key_name)
                stale.append(reuse)
                reuse = None
            if not await self._delete_stale(stale):
                continue
            if reuse is not None:
                if claim.why:
                    log.info("%s", claim.why)
                got = await self._refresh_mine(reuse, backend_type, data, public_ip,
                                               public_ipv6, node_id)
                if got is not None:
                    return got
                continue
            taken = [le for le in leases if le.key_name not in {s.key_name for s in stale}]
            v4, v6 = self._choose(cfg, taken, previous, previous_ipv6)
            lease = Lease(subnet=v4, ipv6_subnet=v6, public_ip=public_ip,
                          public_ipv6=public_ipv6, backend_type=backend_type, backend_data=data,
                          node_id=node_id)
            lease_id = await self.etcd.grant(self.ttl)
            if await self.etcd.create(self.key_for(lease), lease.value_json(), lease=lease_id):
                log.info("acquired %s for %s", lease.key_name, public_ip or public_ipv6)
                return replace(lease, etcd_lease_id=lease_id, expiration=time.time() + self.ttl)
            # Somebody took it between our list and our create: try another one.
            await self.etcd.revoke(lease_id)
            previous = previous_ipv6 = None
            await asyncio.sleep(random.uniform(0, 0.05))
        raise LeaseError(f"could not acquire a subnet after {ACQUIRE_ATTEMPTS} attempts "
                         "(heavy contention?)")

    async def _delete_stale(self, stale: list[Lease]) -> bool:
        """Delete our stale leases, each only if unchanged since listed (False: re-list)."""
        for lease in stale:
            key = self.key_for(lease)
            if not await self.etcd.delete_all([key], key, lease.mod_revision):
                return False
            log.warning("deleted the stale lease %s (PublicIP %s, VtepMAC %s): it was this "
                        "node's", lease.key_name, lease.public_ip or lease.public_ipv6,
                        lease.vtep_mac or "-")
            if lease.etcd_lease_id:
                with contextlib.suppress(EtcdError):
                    await self.etcd.revoke(lease.etcd_lease_id)
        return True

    async def _refresh_mine(self, mine: Lease, backend_type: str, data: dict[str, Any],
                            public_ip: IPv4Address | None,
                            public_ipv6: IPv6Address | None,
                            node_id: str | None = None) -> Lease | None:
        """Take over our lease (after a restart or a public IP change): keep its subnet,
        write our value (PublicIP, backend data, identity) and give it a fresh etcd lease of
        ``self.ttl`` seconds (as Flannel's updateSubnet does: a changed --lease-ttl applies at
        once, not after the old lease ends). None when it changed under us (re-list and retry).
        """
        updated = replace(mine, backend_type=backend_type, backend_data=data,
                          public_ip=public_ip or mine.public_ip,
                          public_ipv6=public_ipv6 or mine.public_ipv6,
                          node_id=node_id or mine.node_id)
        lease_id = 0 if mine.reserved else await self.etcd.grant(self.ttl)
        ok = await self.etcd.replace(self.key_for(mine), updated.value_json(),
                                     mine.mod_revision, lease=lease_id)
        if not ok:
            if lease_id:
                await self.etcd.revoke(lease_id)
            return None
        if mine.etcd_lease_id and mine.etcd_lease_id != lease_id:
            # The key no longer references the old lease, so revoking it deletes nothing.
            await self.etcd.revoke(mine.etcd_lease_id)
        log.info("reusing %s for %s", mine.key_name, public_ip or public_ipv6)
        return replace(updated, etcd_lease_id=lease_id,
                       expiration=None if not lease_id else time.time() + self.ttl)

    def _choose(self, cfg: NetworkConfig, leases: list[Lease], previous: IPv4Network | None,
                previous_ipv6: IPv6Network | None) -> tuple[IPv4Network | None, IPv6Network | None]:
        v4 = v6 = None
        if cfg.enable_ipv4:
            taken = {le.subnet for le in leases if le.subnet is not None}
            if previous is not None and previous not in taken \
                    and cfg.subnet_index(previous) is not None:
                v4 = previous
            else:
                v4 = self._pick_v4(cfg, taken)
        if cfg.enable_ipv6:
            taken6 = {le.ipv6_subnet for le in leases if le.ipv6_subnet is not None}
            if previous_ipv6 is not None and previous_ipv6 not in taken6 \
                    and cfg.ipv6_network is not None and previous_ipv6.subnet_of(cfg.ipv6_network):
                v6 = previous_ipv6
            else:
                v6 = self._pick_v6(cfg, taken6)
        return v4, v6

    @staticmethod
    def _pick_v4(cfg: NetworkConfig, taken: set[IPv4Network]) -> IPv4Network:
        free: list[IPv4Network] = []
        for i in range(cfg.capacity):
            subnet = cfg.subnet_at(i)
            if subnet not in taken:
                free.append(subnet)
                if len(free) >= CANDIDATES:
                    break
        if not free:
            raise SubnetsExhausted(
                f"network {cfg.network} is exhausted: all {cfg.capacity} /{cfg.subnet_len} "
                f"subnets from {cfg.subnet_min} to {cfg.subnet_max} are leased or reserved")
        return random.choice(free)

    @staticmethod
    def _pick_v6(cfg: NetworkConfig, taken: set[IPv6Network]) -> IPv6Network:
        cap = cfg.ipv6_capacity
        if cap <= 4096:
            free = [s for i in range(cap) if (s := cfg.ipv6_subnet_at(i)) not in taken]
            if free:
                return random.choice(free[:CANDIDATES])
        else:
            for _ in range(256):
                subnet = cfg.ipv6_subnet_at(random.randrange(cap))
                if subnet not in taken:
                    return subnet
        raise SubnetsExhausted(f"IPv6 network {cfg.ipv6_network} is exhausted "
                               f"({cap} /{cfg.ipv6_subnet_len} subnets)")

    # --- keeping and giving back ------------------------------------------------------------

    async def renew(self, lease: Lease) -> Lease:
        """Keep our lease: refresh its etcd lease, and put our value back when it was changed
        under us (another PublicIP, VTEP MAC, garbage, ...: issue 9 item 11) as long as it is
        still ours (:func:`~netweft.ipam.claim.drift`). Returns ``lease`` with the new expiry,
        etcd lease id and revision. Raises :class:`LeaseLost` when the key or its etcd lease is
        gone or another identity (or, without identities, another PublicIP) holds the key;
        :class:`LeaseError` when etcd keeps changing under us; :class:`EtcdError`."""
        key = self.key_for(lease)
        for _attempt in range(ACQUIRE_ATTEMPTS):
            kv = await self.etcd.get(key)
            if kv is None:
                raise LeaseLost(f"lease {lease.key_name} is gone from etcd")
            try:
                current: Lease | None = _parse_kv(kv, self.subnets_prefix)
            except LeaseFormatError:
                current = None
            state = drift(lease, current)
            if state is Drift.SAME and not lease.reserved and kv.lease == 0:
                state = Drift.ALTERED  # rewritten as a permanent key: bind it to its lease again
            if state is Drift.FOREIGN:
                assert current is not None
                who = f"node {current.node_id}" if current.node_id else str(current.public_ip)
                raise LeaseLost(f"lease {lease.key_name} now belongs to {who}")
            lease_id = kv.lease
            revision = kv.mod_revision
            if state is Drift.ALTERED:
                if not lease.reserved and lease_id == 0:
                    lease_id = lease.etcd_lease_id  # rewritten without its etcd lease
                if not await self.etcd.replace(key, lease.value_json(), kv.mod_revision,
                                               lease=lease_id):
                    continue  # changed again meanwhile: look again
                now = await self.etcd.get(key)
                revision = now.mod_revision if now is not None else revision
                log.warning("lease %s was changed in etcd (%s): restored it", lease.key_name,
                            _changes(lease, current))
            if lease.reserved or lease_id == 0:
                return replace(lease, expiration=None, etcd_lease_id=0, mod_revision=revision)
            ttl = await self.etcd.keepalive_once(lease_id)
            if ttl <= 0:
                raise LeaseLost(f"etcd lease of {lease.key_name} has expired")
            return replace(lease, expiration=time.time() + ttl, etcd_lease_id=lease_id,
                           mod_revision=revision)
        raise LeaseError(f"lease {lease.key_name} keeps changing under us")

    async def _find(self, subnet: IPv4Network | IPv6Network) -> tuple[Lease, str] | None:
        leases, _ = await self.list()
        for lease in leases:
            if subnet in (lease.subnet, lease.ipv6_subnet):
                return lease, self.key_for(lease)
        return None

    async def release(self, subnet: IPv4Network | IPv6Network) -> bool:
        """Delete the lease or reservation of ``subnet``; False when there was none."""
        found = await self._find(subnet)
        if found is None:
            return False
        lease, key = found
        deleted = await self.etcd.delete(key)
        if lease.etcd_lease_id:
            await self.etcd.revoke(lease.etcd_lease_id)
        return deleted

    async def reserve(self, subnet: IPv4Network, public_ip: IPv4Address,
                      cfg: NetworkConfig | None = None) -> Lease:
        """A key with no etcd lease: never expires, only ``public_ip`` may use it (Flannel's
        reservations). Raises :class:`LeaseError` when ``subnet`` is not one of ``cfg``'s
        subnets or another node holds it; :class:`EtcdError`."""
        if cfg is not None and cfg.subnet_index(subnet) is None:
            raise LeaseError(f"{subnet} is not a /{cfg.subnet_len} subnet between "
                             f"{cfg.subnet_min} and {cfg.subnet_max} of {cfg.network}")
        found = await self._find(subnet)
        if found is not None:
            existing, key = found
            if existing.public_ip != public_ip:
                holder = "reserved for" if existing.reserved else "leased by"
                raise LeaseError(f"{subnet} is {holder} {existing.public_ip}")
            reservation = replace(existing, etcd_lease_id=0, expiration=None)
            await self.etcd.put(key, reservation.value_json(), lease=0)
            if existing.etcd_lease_id:
                # The key no longer references that lease, so revoking it deletes nothing.
                await self.etcd.revoke(existing.etcd_lease_id)
            return reservation
        reservation = Lease(subnet=subnet, public_ip=public_ip, backend_type="")
        if not await self.etcd.create(self.key_for(reservation), reservation.value_json()):
            raise LeaseError(f"{subnet} was taken while reserving it; try again")
        return reservation

    # --- watching ---------------------------------------------------------------------------

    async def watch(self, leases: list[Lease], revision: int,
                    retry_delay: float = 1.0) -> AsyncIterator[list[LeaseEvent]]:
        """Events after ``revision`` relative to ``leases``, forever (through a
        :class:`netweft.kv.reflector.Reflector`). After a compaction it re-lists and yields the
        difference; a broken stream resumes from the last revision seen after ``retry_delay``
        seconds (jittered); so the caller's view always converges to etcd's."""
        # keyed by key name (the string cached in each lease, not a fresh full key per lease)
        known: dict[str, Lease] = {le.key_name: le for le in leases}
        reflector = Reflector(self.subnets_prefix, revision,
                              Backoff(retry_delay, retry_delay), name="lease watch")
        start = len(self.subnets_prefix)
        async for update in reflector.updates(self.etcd):
            if isinstance(update, Listed):
                current = {lease.key_name: lease for kv in update.kvs
                           if (lease := _kv_to_lease(kv, self.subnets_prefix))}
                events = diff_leases(known, current)
                known = current
            else:
                events = []
                for ev in update.events:
                    if ev.type is EventType.PUT:
                        lease = _kv_to_lease(ev.kv, self.subnets_prefix)
                        if lease is not None:
                            known[lease.key_name] = lease
                            events.append(LeaseEvent("added", lease))
                    else:
                        old = known.pop(ev.kv.key[start:], None)
                        if old is None:  # a key not in the form we write (or never seen)
                            old = _kv_to_lease(ev.kv, self.subnets_prefix)
                            if old is not None:
                                old = known.pop(old.key_name, old)
                        if old is not None:
                            events.append(LeaseEvent("removed", old))
            if events:
                yield events


def diff_leases(old: dict[str, Lease], new: dict[str, Lease]) -> list[LeaseEvent]:
    """Events that turn ``old`` into ``new`` (keyed alike: by key name)."""
    events = [LeaseEvent("removed", lease) for key, lease in old.items() if key not in new]
    for key, lease in new.items():
        prev = old.get(key)
        changed = prev is None or prev.value() != lease.value()
        if changed or prev.etcd_lease_id != lease.etcd_lease_id:  # type: ignore[union-attr]
            events.append(LeaseEvent("added", lease))
    return events
