"""``KV``: what netweft needs of a key-value store (etcd v3 semantics), as a protocol.

Two implementations: :class:`netweft.kv.etcd.EtcdClient` (the real one) and
:class:`netweft.kv.memory.MemoryKV` (in memory, for pure unit tests of lease policy and sources).
Lease policy (``netweft.ipam.leases``), the proxy's records and its etcd source are written
against this protocol, not against a client class.

Every method raises :class:`netweft.kv.types.EtcdError` (or a subclass) when the store cannot
answer; ``ttl`` values are seconds; revisions are the store's global revision counter.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Protocol

from netweft.kv.types import KeyValue, WatchBatch


class KV(Protocol):
    """An etcd-v3-like store: keys, compare-and-set transactions, leases with a TTL, watches."""

    async def get(self, key: str) -> KeyValue | None:
        """The key, or None when absent."""

    async def get_prefix(self, prefix: str) -> tuple[list[KeyValue], int]:
        """All keys under ``prefix`` (sorted by key) and the store revision they were read at."""

    async def put(self, key: str, value: bytes | str, lease: int = 0) -> int:
        """Write ``key`` (attached to etcd lease ``lease``, 0: none); the new revision."""

    async def delete(self, key: str) -> bool:
        """Delete ``key``; False when it did not exist."""

    async def delete_prefix(self, prefix: str) -> int:
        """Delete every key under ``prefix``; how many there were."""

    async def create(self, key: str, value: bytes | str, lease: int = 0) -> bool:
        """Put ``key`` only if it does not exist (one transaction). True if created."""

    async def replace(self, key: str, value: bytes | str, mod_revision: int,
                      lease: int = 0) -> bool:
        """Put ``key`` only if it is still at ``mod_revision`` (compare-and-swap)."""

    async def create_all(self, items: dict[str, bytes | str]) -> bool:
        """Put every key only if none of them exists (one transaction). True if created."""

    async def delete_all(self, keys: list[str], guard_key: str, mod_revision: int) -> bool:
        """Delete ``keys`` only if ``guard_key`` is still at ``mod_revision`` (one transaction)."""

    async def compact(self, revision: int) -> None:
        """Forget history before ``revision``: watches from older revisions get compacted."""

    async def current_revision(self) -> int:
        """The store's current revision (also a cheap reachability check)."""

    async def grant(self, ttl: int) -> int:
        """A new lease of ``ttl`` seconds; its id (keys attached to it go when it expires)."""

    async def revoke(self, lease_id: int) -> None:
        """End a lease now, deleting its keys; a lease that is already gone is not an error."""

    async def keepalive_once(self, lease_id: int) -> int:
        """Refresh a lease; its new TTL in seconds, 0 when the lease no longer exists."""

    async def time_to_live(self, lease_id: int) -> int:
        """Seconds left on a lease, -1 when it is gone."""

    def watch_prefix(self, prefix: str, start_revision: int,
                     progress_notify: bool = True) -> AsyncIterator[WatchBatch]:
        """Batches of events under ``prefix`` from ``start_revision`` on, forever.

        Raises :class:`netweft.kv.types.CompactedError` when that revision is gone and
        :class:`netweft.kv.types.EtcdUnavailable` when the stream breaks.
        """
        ...
