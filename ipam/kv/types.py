"""The data and errors of the key-value layer, shared by the etcd client and the in-memory store.

Shapes follow etcd v3 (``mvccpb.KeyValue``, watch responses): keys are ``str``, values ``bytes``,
revisions are the store's global, monotonically increasing ``int`` counters, ``lease`` is an etcd
lease id (0: none).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum


class EtcdError(Exception):
    """The store could not be reached or refused a request (one line a person can act on)."""


class EtcdUnavailable(EtcdError):
    """No endpoint answered, or a watch stream broke."""


class CompactedError(EtcdError):
    """A watch asked for a revision that the store has already compacted away."""

    def __init__(self, compact_revision: int) -> None:
        super().__init__(f"revision compacted (oldest available {compact_revision})")
        self.compact_revision = compact_revision


@dataclass(frozen=True, slots=True)
class KeyValue:
    """One key as stored: value bytes, creation and last modification revision, etcd lease id."""

    key: str
    value: bytes
    create_revision: int
    mod_revision: int
    lease: int


class EventType(Enum):
    """What a watch event did to its key (etcd's mvccpb.Event.EventType)."""

    PUT = "put"
    DELETE = "delete"


@dataclass(frozen=True)
class WatchEvent:
    """A put (``kv`` is the new value) or a delete (``kv`` carries the key and, for events made
    from a re-list, the last value seen; etcd's own delete events carry no value)."""

    type: EventType
    kv: KeyValue


@dataclass(frozen=True)
class WatchBatch:
    """Events of one watch response, and the revision they bring the watcher to."""

    revision: int
    events: list[WatchEvent] = field(default_factory=list)


def prefix_end(prefix: bytes) -> bytes:
    """The ``range_end`` that makes a range request cover every key starting with ``prefix``
    (etcd's clientv3.GetPrefixRangeEnd: the prefix with its last byte below 0xff incremented)."""
    end = bytearray(prefix)
    for i in range(len(end) - 1, -1, -1):
        if end[i] < 0xFF:
            end[i] += 1
            return bytes(end[: i + 1])
    return b"\0"
