"""One list-then-watch loop over a key prefix, shared by the lease watch and the proxy's source.

A :class:`Reflector` lists every key under its prefix, then watches from the next revision, and
yields what it learns as updates: a :class:`Listed` (the complete set at a revision) or a
:class:`netweft.kv.types.WatchBatch` (events since the previous update). Faults, the way
client-go's reflector handles them:

- the watch's start revision was **compacted** away: list again (the consumer diffs the new
  complete set against its model, so nothing is lost and nothing repeated);
- the **stream broke** or etcd is unreachable: wait (exponential backoff with jitter), then resume
  the watch from the last revision seen, no re-list; if that revision was compacted meanwhile,
  the resumed watch says so and the reflector lists again.

The reflector never skips a revision. Its ``revision`` advances only when the consumer asks for
the next update, so a consumer cancelled while handling one gets it again from a new
``updates()`` call (at least once: applying an update twice must be harmless, as it is for
puts and deletes by key).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass

from netweft.kv.backoff import Backoff
from netweft.kv.protocol import KV
from netweft.kv.tls import EtcdConfigError
from netweft.kv.types import CompactedError, EtcdError, KeyValue, WatchBatch

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Listed:
    """A (re-)list: every key under the prefix (sorted by key) at ``revision``."""

    kvs: list[KeyValue]
    revision: int


Update = Listed | WatchBatch


class Reflector:
    """List-then-watch of ``prefix``; keeps its place (``revision``) across ``updates()`` calls.

    ``revision`` None means "list first"; a consumer that already listed passes the revision of
    its list and gets only watch batches until a compaction forces a re-list. ``lists`` counts
    the lists done (tests and metrics read it). ``name`` is used in log lines.
    """

    def __init__(self, prefix: str, revision: int | None = None,
                 backoff: Backoff | None = None, name: str = "watch") -> None:
        self.prefix = prefix
        self.revision = revision
        self.backoff = backoff if backoff is not None else Backoff()
        self.name = name
        self.lists = 0

    async def updates(self, kv: KV) -> AsyncIterator[Update]:
        """Updates from ``kv``, forever; store errors are retried (with backoff), except
        :class:`netweft.kv.tls.EtcdConfigError` (TLS/file mistakes), which is raised."""
        while True:
            try:
                if self.revision is None:
                    kvs, revision = await kv.get_prefix(self.prefix)
                    self.lists += 1
                    self.backoff.reset()
                    yield Listed(kvs, revision)
                    self.revision = revision
                async for batch in kv.watch_prefix(self.prefix, self.revision + 1):
                    # A progress notification (no events) vouches for its header revision; an
                    # event batch only for the events it carries.
                    last = max((e.kv.mod_revision for e in batch.events), default=self.revision)
                    yield batch
                    self.revision = last if batch.events else max(last, batch.revision)
                    self.backoff.reset()
            except CompactedError as exc:
                log.info("%s from revision %s: %s; listing again", self.name, self.revision, exc)
                self.revision = None
            except EtcdConfigError:
                raise  # a certificate or file mistake: retrying cannot help
            except EtcdError as exc:
                log.warning("%s: %s; retrying", self.name, exc)
                await self.backoff.wait()
