"""``MemoryKV``: the :class:`netweft.kv.protocol.KV` protocol in memory, for pure unit tests.

It follows etcd v3's observable semantics closely enough for lease policy and list-then-watch
consumers: one global revision bumped once per successful write (a transaction is one write),
``create_revision``/``mod_revision`` per key, failed compare-and-swaps leave everything as it was,
leases with a TTL whose expiry deletes their keys (with delete events), watches that replay
history from a start revision, and compaction that makes older watches fail with
:class:`CompactedError`. Tests of boundaries still run against a real etcd; this is for logic.

Two faults a test may inject (the real etcd produces them too, but not on cue):
:meth:`MemoryKV.break_watches` ends every open watch with :class:`EtcdUnavailable` (a broken
stream), and setting :attr:`MemoryKV.unavailable` makes every call fail as an unreachable etcd.
Time comes from ``clock`` (seconds, monotonic), so a test can expire leases without sleeping.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

from netweft.kv.types import (
    CompactedError,
    EtcdError,
    EtcdUnavailable,
    EventType,
    KeyValue,
    WatchBatch,
    WatchEvent,
)

_BROKEN = object()  # queued to a watcher: its stream breaks


@dataclass
class _Lease:
    ttl: int
    deadline: float
    keys: set[str] = field(default_factory=set)


@dataclass(eq=False)
class _Watcher:
    prefix: str
    queue: asyncio.Queue[WatchBatch | object] = field(default_factory=asyncio.Queue)


def _b(value: bytes | str) -> bytes:
    return value.encode() if isinstance(value, str) else value


class MemoryKV:
    """An in-memory etcd v3 store (one per test). Not thread-safe; use from one event loop."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.revision = 1                  # etcd's revision of an empty store
        self.compacted = 0                 # history before this revision is gone
        self.unavailable = False           # fault: every call fails as if etcd were down
        self._data: dict[str, KeyValue] = {}
        self._history: list[WatchBatch] = []
        self._leases: dict[int, _Lease] = {}
        self._next_lease = 0x7E57_0000
        self._watchers: set[_Watcher] = set()

    # --- faults -------------------------------------------------------------------------------

    def break_watches(self) -> int:
        """End every open watch with :class:`EtcdUnavailable`; how many there were."""
        for w in self._watchers:
            w.queue.put_nowait(_BROKEN)
        return len(self._watchers)

    async def _check(self) -> None:
        # One event-loop turn per call, like a network round trip: concurrent callers interleave
        # (and lose creation races) as they do against a real etcd.
        await asyncio.sleep(0)
        if self.unavailable:
            raise EtcdUnavailable("etcd at memory:// is unreachable (unavailable)")
        self.expire_leases()

    # --- the write path -----------------------------------------------------------------------

    def _commit(self, puts: list[tuple[str, bytes, int]], deletes: list[str]) -> int:
        """Apply puts (key, value, lease) and deletes as one revision; its number."""
        deletes = [k for k in deletes if k in self._data]
        if not puts and not deletes:
            return self.revision
        rev = self.revision + 1
        events: list[WatchEvent] = []
        for key in deletes:
            old = self._data.pop(key)
            if old.lease in self._leases:
                self._leases[old.lease].keys.discard(key)
            events.append(WatchEvent(EventType.DELETE, KeyValue(key, b"", 0, rev, 0)))
        for key, value, lease in puts:
            old = self._data.get(key)
            if old is not None and old.lease in self._leases:
                self._leases[old.lease].keys.discard(key)
            created = old.create_revision if old is not None else rev
            kv = KeyValue(key, value, created, rev, lease)
            self._data[key] = kv
            if lease:
                self._leases[lease].keys.add(key)
            events.append(WatchEvent(EventType.PUT, kv))
        self.revision = rev
        self._history.append(WatchBatch(rev, events))
        for w in self._watchers:
            mine = [e for e in events if e.kv.key.startswith(w.prefix)]
            if mine:
                w.queue.put_nowait(WatchBatch(rev, mine))
        return rev

    def _need_lease(self, lease: int) -> None:
        if lease and lease not in self._leases:
            raise EtcdError("etcd refused the request: etcdserver: requested lease not found")

    def expire_leases(self) -> int:
        """Delete the keys of every lease past its deadline (one revision each); how many."""
        now = self.clock()
        gone = [i for i, le in self._leases.items() if le.deadline <= now]
        for lease_id in gone:
            self._commit([], sorted(self._leases.pop(lease_id).keys))
        return len(gone)

    # --- KV -------------------------------------------------------------------------------------

    async def get(self, key: str) -> KeyValue | None:
        """The key as stored, or None. Raises :class:`EtcdUnavailable` while ``unavailable`` is set
        (as every call)."""
        await self._check()
        return self._data.get(key)

    async def get_prefix(self, prefix: str) -> tuple[list[KeyValue], int]:
        """The keys starting with ``prefix`` in key order, and the store's revision. Raises
        :class:`EtcdUnavailable` while ``unavailable`` is set (as every call)."""
        await self._check()
        return [self._data[k] for k in sorted(self._data) if k.startswith(prefix)], self.revision

    async def put(self, key: str, value: bytes | str, lease: int = 0) -> int:
        """Set ``key`` (attached to lease ``lease`` when not 0); the new revision. Raises
        :class:`EtcdUnavailable` while ``unavailable`` is set (as every call). :class:`EtcdError`
        for an unknown lease, as etcd."""
        await self._check()
        self._need_lease(lease)
        return self._commit([(key, _b(value), lease)], [])

    async def delete(self, key: str) -> bool:
        """Delete ``key``; whether it existed. Raises :class:`EtcdUnavailable` while ``unavailable``
        is set (as every call)."""
        await self._check()
        found = key in self._data
        self._commit([], [key])
        return found

    async def delete_prefix(self, prefix: str) -> int:
        """Delete every key starting with ``prefix``; how many. Raises :class:`EtcdUnavailable`
        while ``unavailable`` is set (as every call)."""
        await self._check()
        keys = [k for k in self._data if k.startswith(prefix)]
        self._commit([], keys)
        return len(keys)

    async def create(self, key: str, value: bytes | str, lease: int = 0) -> bool:
        """Set ``key`` only if it does not exist (etcd's create-if-absent transaction); whether it
        was created. Raises :class:`EtcdUnavailable` while ``unavailable`` is set (as every call).
        :class:`EtcdError` for an unknown lease."""
        await self._check()
        if key in self._data:
            return False
        self._need_lease(lease)
        self._commit([(key, _b(value), lease)], [])
        return True

    async def replace(self, key: str, value: bytes | str, mod_revision: int,
                      lease: int = 0) -> bool:
        """Set ``key`` only if its mod revision is still ``mod_revision`` (0: absent); whether it
        was set. Raises :class:`EtcdUnavailable` while ``unavailable`` is set (as every call).
        :class:`EtcdError` for an unknown lease."""
        await self._check()
        current = self._data.get(key)
        if (current.mod_revision if current is not None else 0) != mod_revision:
            return False
        self._need_lease(lease)
        self._commit([(key, _b(value), lease)], [])
        return True

    async def create_all(self, items: dict[str, bytes | str]) -> bool:
        """Create every key of ``items`` in one revision, only if none exists; whether they were
        created. Raises :class:`EtcdUnavailable` while ``unavailable`` is set (as every call)."""
        await self._check()
        if any(k in self._data for k in items):
            return False
        self._commit([(k, _b(v), 0) for k, v in items.items()], [])
        return True

    async def delete_all(self, keys: list[str], guard_key: str, mod_revision: int) -> bool:
        """Delete ``keys`` in one revision, only if ``guard_key``'s mod revision is still
        ``mod_revision``; whether they were deleted. Raises :class:`EtcdUnavailable` while
        ``unavailable`` is set (as every call)."""
        await self._check()
        guard = self._data.get(guard_key)
        if (guard.mod_revision if guard is not None else 0) != mod_revision:
            return False
        self._commit([], keys)
        return True

    async def compact(self, revision: int) -> None:
        """Drop history up to ``revision``. Raises :class:`EtcdError` with etcd's messages for a
        future or already compacted revision; :class:`EtcdUnavailable` while ``unavailable`` is set
        (as every call)."""
        await self._check()
        if revision > self.revision:
            raise EtcdError("etcd refused the request: mvcc: required revision is a future "
                            "revision")
        if revision <= self.compacted:
            raise EtcdError("etcd refused the request: mvcc: required revision has been "
                            "compacted")
        self.compacted = revision
        self._history = [b for b in self._history if b.revision > revision]

    async def current_revision(self) -> int:
        """The store's current revision. Raises :class:`EtcdUnavailable` while ``unavailable`` is
        set (as every call)."""
        await self._check()
        return self.revision

    # --- leases -------------------------------------------------------------------------------

    async def grant(self, ttl: int) -> int:
        """A new lease of ``ttl`` seconds (on ``clock``); its id. Raises :class:`EtcdUnavailable`
        while ``unavailable`` is set (as every call)."""
        await self._check()
        self._next_lease += 1
        self._leases[self._next_lease] = _Lease(ttl, self.clock() + ttl)
        return self._next_lease

    async def revoke(self, lease_id: int) -> None:
        """Revoke a lease and delete its keys; an unknown lease is no error. Raises
        :class:`EtcdUnavailable` while ``unavailable`` is set (as every call)."""
        await self._check()
        lease = self._leases.pop(lease_id, None)
        if lease is not None:
            self._commit([], sorted(lease.keys))

    async def keepalive_once(self, lease_id: int) -> int:
        """Renew a lease for its full TTL; the TTL in seconds, 0 for an unknown lease (as etcd's
        LeaseKeepAlive). Raises :class:`EtcdUnavailable` while ``unavailable`` is set (as every
        call)."""
        await self._check()
        lease = self._leases.get(lease_id)
        if lease is None:
            return 0
        lease.deadline = self.clock() + lease.ttl
        return lease.ttl

    async def time_to_live(self, lease_id: int) -> int:
        """Seconds a lease has left (rounded up), -1 for an unknown lease (as etcd's
        LeaseTimeToLive). Raises :class:`EtcdUnavailable` while ``unavailable`` is set (as every
        call)."""
        await self._check()
        lease = self._leases.get(lease_id)
        return -1 if lease is None else math.ceil(lease.deadline - self.clock())

    # --- watch --------------------------------------------------------------------------------

    async def watch_prefix(
        self, prefix: str, start_revision: int, progress_notify: bool = True,
    ) -> AsyncIterator[WatchBatch]:
        """See :meth:`netweft.kv.protocol.KV.watch_prefix`. Expired leases are noticed while
        waiting (each second of ``clock``, at the latest). Raises :class:`CompactedError` for a
        start revision already compacted; :class:`EtcdUnavailable` as every call."""
        await self._check()
        if 0 < start_revision <= self.compacted:
            raise CompactedError(self.compacted)
        watcher = _Watcher(prefix)
        # Replay and registration happen in one step of the event loop: nothing falls between.
        for batch in self._history:
            if batch.revision >= start_revision:
                mine = [e for e in batch.events if e.kv.key.startswith(prefix)]
                if mine:
                    watcher.queue.put_nowait(WatchBatch(batch.revision, mine))
        self._watchers.add(watcher)
        try:
            while True:
                # Not asyncio.wait_for: on Python 3.11 it can swallow a cancellation that
                # arrives as the queue yields an item, and the watcher would never stop.
                getter = asyncio.ensure_future(watcher.queue.get())
                try:
                    done, _ = await asyncio.wait({getter}, timeout=self._until_expiry())
                finally:
                    if not getter.done():
                        getter.cancel()
                if not done:
                    await self._check()
                    continue
                item = getter.result()
                if item is _BROKEN:
                    raise EtcdUnavailable("etcd at memory:// closed the watch stream")
                assert isinstance(item, WatchBatch)
                yield item
        finally:
            self._watchers.discard(watcher)

    def _until_expiry(self) -> float:
        if not self._leases:
            return 1.0
        soonest = min(le.deadline for le in self._leases.values())
        return min(1.0, max(0.0, soonest - self.clock()) + 0.001)
