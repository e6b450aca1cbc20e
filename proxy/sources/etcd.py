"""The etcd source: Services and pod records under netweft's services prefix (no Kubernetes).

One list of ``<prefix>/`` (services and pods together, so both come from one revision), then one
watch from the next revision, through the key-value layer's reflector (netweft.kv.reflector).
Every watch batch is applied, then only the services it touched are recomputed and reported if
they differ from what was reported. A compacted revision re-lists and reports the difference; a
broken stream resumes from the last revision seen (re-listing only if that one was compacted
meanwhile); errors back off and retry forever. See proxy/records.py for the key layout and how
endpoints are selected.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterable

from netweft.kv.backoff import Backoff
from netweft.kv.etcd import EtcdClient, EtcdSettings
from netweft.kv.protocol import KV
from netweft.kv.reflector import Listed, Reflector
from netweft.kv.types import EventType, KeyValue
from netweft.proxy.model import Endpoint, Service, ServiceKey
from netweft.proxy.records import (
    DEFAULT_SERVICES_PREFIX,
    PodIndex,
    PodRecord,
    RecordError,
    ServiceRecord,
    endpoints_for,
    pods_dir,
    selects,
    services_dir,
)
from netweft.proxy.sources.base import ChangeSink

log = logging.getLogger("netweft.proxy.etcd")


class EtcdState:
    """Service and pod records by key; reports each touched service's difference on flush()."""

    def __init__(self, sink: ChangeSink, prefix: str) -> None:
        self.sink = sink
        self.services_dir = services_dir(prefix)
        self.pods_dir = pods_dir(prefix)
        self.services: dict[ServiceKey, ServiceRecord] = {}
        self.service_keys: dict[str, ServiceKey] = {}    # etcd key -> service
        self.pods = PodIndex()                           # etcd key -> pod, by label
        self.services_by_label: dict[tuple[str, str, str], set[ServiceKey]] = {}
        self.reported: dict[ServiceKey, Service] = {}
        self.reported_endpoints: dict[ServiceKey, tuple[Endpoint, ...]] = {}
        self.dirty: set[ServiceKey] = set()

    # --- changes ------------------------------------------------------------------------------

    def replace(self, kvs: Iterable[KeyValue]) -> None:
        """A full list: forget everything, load ``kvs``, and report the difference."""
        self.dirty |= set(self.reported) | set(self.reported_endpoints)
        self.services.clear()
        self.service_keys.clear()
        self.pods.clear()
        self.services_by_label.clear()
        for kv in kvs:
            self.put(kv)
        self.dirty |= set(self.services)
        self.flush()

    def put(self, kv: KeyValue) -> None:
        if kv.key.startswith(self.services_dir):
            try:
                record = ServiceRecord.from_json(kv.value)
                where = f"{self.services_dir}{record.namespace}/{record.name}"
                if kv.key != where:
                    raise RecordError(f"namespace/name say it belongs at {where}")
            except RecordError as exc:
                log.warning("ignoring %s: %s", kv.key, exc)
                self.delete(kv.key)
                return
            self._drop_service(kv.key)
            self.service_keys[kv.key] = record.key
            self.services[record.key] = record
            for label, value in record.selector.items():
                self.services_by_label.setdefault((record.namespace, label, value),
                                                  set()).add(record.key)
            self.dirty.add(record.key)
        elif kv.key.startswith(self.pods_dir):
            try:
                pod = PodRecord.from_json(kv.value)
            except RecordError as exc:
                log.warning("ignoring %s: %s", kv.key, exc)
                self.delete(kv.key)
                return
            old = self.pods.put(kv.key, pod)
            if old is not None:
                self._touch_pod(old)
            self._touch_pod(pod)

    def delete(self, key: str) -> None:
        if key.startswith(self.services_dir):
            self._drop_service(key)
        elif key.startswith(self.pods_dir):
            self._drop_pod(key)

    def _drop_service(self, etcd_key: str) -> None:
        key = self.service_keys.pop(etcd_key, None)
        if key is None:
            return
        record = self.services.pop(key, None)
        if record is not None:
            for label, value in record.selector.items():
                keys = self.services_by_label.get((record.namespace, label, value))
                if keys is not None:
                    keys.discard(key)
                    if not keys:
                        del self.services_by_label[(record.namespace, label, value)]
        self.dirty.add(key)

    def _drop_pod(self, etcd_key: str) -> None:
        old = self.pods.remove(etcd_key)
        if old is not None:
            self._touch_pod(old)

    def _touch_pod(self, pod: PodRecord) -> None:
        """Mark the services whose selector picks ``pod``."""
        for label, value in pod.labels.items():
            for key in self.services_by_label.get((pod.namespace, label, value), ()):
                if selects(self.services[key].selector, pod.labels):
                    self.dirty.add(key)

    # --- reporting ----------------------------------------------------------------------------

    def flush(self) -> None:
        for key in sorted(self.dirty):
            record = self.services.get(key)
            if record is None:
                if self.reported_endpoints.pop(key, None) is not None:
                    self.sink.endpoints_updated(key, ())
                if self.reported.pop(key, None) is not None:
                    self.sink.service_deleted(key)
                continue
            service = record.to_service()
            if self.reported.get(key) != service:
                self.reported[key] = service
                self.sink.service_updated(service)
            endpoints = endpoints_for(record, self.pods.selected(key.namespace,
                                                                 record.selector))
            if self.reported_endpoints.get(key, ()) != endpoints:
                if endpoints:
                    self.reported_endpoints[key] = endpoints
                else:
                    del self.reported_endpoints[key]
                self.sink.endpoints_updated(key, endpoints)
        self.dirty.clear()


class EtcdSource:
    """Services and endpoints from netweft's records in etcd.

    ``kv``: a store to use instead of connecting to ``settings`` (a :class:`netweft.kv.memory.
    MemoryKV` in pure unit tests); the source does not close it.
    """

    def __init__(
        self, settings: EtcdSettings, prefix: str = DEFAULT_SERVICES_PREFIX,
        backoff: Callable[[], Backoff] = Backoff, kv: KV | None = None,
    ) -> None:
        self.settings = settings
        self.prefix = prefix.rstrip("/")
        self.kv = kv
        self.reflector = Reflector(self.prefix + "/", backoff=backoff(), name="etcd source")
        self.state: EtcdState | None = None

    @property
    def revision(self) -> int | None:
        """The last etcd revision applied (None: the next run lists first)."""
        return self.reflector.revision

    @property
    def lists(self) -> int:
        """Full lists done (tests and metrics read it)."""
        return self.reflector.lists

    def _connect(self) -> contextlib.AbstractAsyncContextManager[KV]:
        if self.kv is not None:
            return contextlib.nullcontext(self.kv)
        return EtcdClient(self.settings)

    async def run(self, sink: ChangeSink) -> None:
        """Run forever. Run again after a cancel with the same sink, it resumes from the last
        revision it saw (re-listing if that was compacted) and reports only what changed."""
        if self.state is None or self.state.sink is not sink:
            self.state = EtcdState(sink, self.prefix)
            self.reflector.revision = None
        state = self.state
        async with self._connect() as kv:
            async for update in self.reflector.updates(kv):
                if isinstance(update, Listed):
                    state.replace(update.kvs)
                    sink.synced()
                    continue
                for event in update.events:
                    if event.type is EventType.PUT:
                        state.put(event.kv)
                    else:
                        state.delete(event.kv.key)
                state.flush()
