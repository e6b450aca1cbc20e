"""The Kubernetes API source: list + watch Services and EndpointSlices (discovery.k8s.io/v1).

Each resource has a reflector: list (the full state, at a resourceVersion), report the difference
from what was reported before, then watch from that resourceVersion. Every event (BOOKMARKs
included) advances the resourceVersion, so a dropped connection resumes exactly where it stopped;
"410 Gone" (as an ERROR watch event or as an HTTP status) means the server no longer has that
history, and the reflector lists again and reports only what changed. Errors back off
exponentially and retry forever.

Both lists and watches carry kube-proxy's label selector
(``!service.kubernetes.io/service-proxy-name,!service.kubernetes.io/headless``), so the server
drops objects another proxy owns; the converters check the same labels again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable, Iterable
from typing import Any

from lightkube import ALL_NS, ApiError, AsyncClient, KubeConfig
from lightkube import operators as op
from lightkube.generic_resource import GenericNamespacedResource, create_api_info
from netweft.kv.backoff import Backoff
from netweft.proxy.gcpause import gc_paused
from netweft.proxy.model import Endpoint, Service, ServiceKey
from netweft.proxy.sources.base import ChangeSink
from netweft.proxy.sources.kubeconvert import (
    SKIP_LABELS,
    endpoints_from_slice,
    merge_endpoints,
    object_key,
    service_from_kube,
    slice_service,
)

log = logging.getLogger("netweft.proxy.kube")

LABEL_SELECTOR = {label: op.not_exists() for label in SKIP_LABELS}
LIST_CHUNK = 500  # objects per list request (client-go's reflector pages by 500 too)

Obj = dict[str, Any]


class KubeService(GenericNamespacedResource):
    """core/v1 Service, decoded as a plain dict.

    lightkube's generic (dict) resources instead of its typed models: the converters read dicts
    anyway, and a typed EndpointSlice cannot decode a BOOKMARK event (its object carries only
    metadata, while the model requires ``addressType``).
    """

    _api_info = create_api_info("", "v1", "Service", "services")


class KubeEndpointSlice(GenericNamespacedResource):
    """discovery.k8s.io/v1 EndpointSlice, decoded as a plain dict."""

    _api_info = create_api_info("discovery.k8s.io", "v1", "EndpointSlice", "endpointslices")


class ServiceState:
    """The Services reported so far; reports only differences."""

    def __init__(self, sink: ChangeSink) -> None:
        self.sink = sink
        self.services: dict[ServiceKey, Service] = {}

    @staticmethod
    def convert(obj: Obj) -> Service | None:
        """The model of one listed object (None: not proxied); the object is not kept."""
        return service_from_kube(obj)

    def replace(self, listed: Iterable[Service | None]) -> None:
        """The full state from a list (items made by :meth:`convert`)."""
        new: dict[ServiceKey, Service] = {}
        for svc in listed:
            if svc is not None:
                new[svc.key] = svc
        for key in sorted(self.services.keys() - new.keys()):
            del self.services[key]
            self.sink.service_deleted(key)
        for svc in new.values():
            self._put(svc)

    def upsert(self, obj: Obj) -> None:
        svc = service_from_kube(obj)
        if svc is None:
            self.delete(obj)  # it may have become headless or gained a skip label
        else:
            self._put(svc)

    def delete(self, obj: Obj) -> None:
        key = object_key(obj)
        if self.services.pop(key, None) is not None:
            self.sink.service_deleted(key)

    def _put(self, svc: Service) -> None:
        if self.services.get(svc.key) != svc:
            self.services[svc.key] = svc
            self.sink.service_updated(svc)


SliceId = tuple[str, str]  # (namespace, slice name)
ListedSlice = tuple[SliceId, ServiceKey | None, tuple[Endpoint, ...]]


class SliceState:
    """EndpointSlices by name; reports each affected Service's merged endpoint set."""

    def __init__(self, sink: ChangeSink) -> None:
        self.sink = sink
        self.slices: dict[SliceId, tuple[ServiceKey, tuple[Endpoint, ...]]] = {}
        # a Service's slices: a tuple (nearly always one slice; a set costs 216 bytes)
        self.by_service: dict[ServiceKey, tuple[SliceId, ...]] = {}
        self.reported: dict[ServiceKey, tuple[Endpoint, ...]] = {}

    @staticmethod
    def _id(obj: Obj) -> SliceId:
        key = object_key(obj)
        return (key.namespace, key.name)

    @classmethod
    def convert(cls, obj: Obj) -> ListedSlice:
        """The model of one listed slice: its id, its Service (None: no service-name label)
        and its endpoints; the object is not kept."""
        owner = slice_service(obj)
        return cls._id(obj), owner, (endpoints_from_slice(obj) if owner is not None else ())

    def replace(self, listed: Iterable[ListedSlice]) -> None:
        """The full state from a list (items made by :meth:`convert`)."""
        affected = set(self.by_service)
        self.slices.clear()
        self.by_service.clear()
        for item in listed:
            owner = self._store(item)
            if owner is not None:
                affected.add(owner)
        affected |= set(self.reported)
        self._report(affected)

    def upsert(self, obj: Obj) -> None:
        affected = self._remove(self._id(obj))
        owner = self._store(self.convert(obj))
        if owner is not None:
            affected.add(owner)
        self._report(affected)

    def delete(self, obj: Obj) -> None:
        self._report(self._remove(self._id(obj)))

    def _store(self, item: ListedSlice) -> ServiceKey | None:
        sid, owner, endpoints = item
        if owner is None:
            return None
        self.slices[sid] = (owner, endpoints)
        ids = self.by_service.get(owner, ())
        if sid not in ids:
            self.by_service[owner] = (*ids, sid)
        return owner

    def _remove(self, sid: SliceId) -> set[ServiceKey]:
        old = self.slices.pop(sid, None)
        if old is None:
            return set()
        owner = old[0]
        ids = tuple(i for i in self.by_service.get(owner, ()) if i != sid)
        if ids:
            self.by_service[owner] = ids
        else:
            self.by_service.pop(owner, None)
        return {owner}

    def _report(self, keys: Iterable[ServiceKey]) -> None:
        for key in sorted(keys):
            ids = sorted(self.by_service.get(key, ()))
            merged = merge_endpoints(self.slices[i][1] for i in ids)
            if self.reported.get(key, ()) == merged:
                continue
            if merged:
                self.reported[key] = merged
            else:
                self.reported.pop(key, None)
            self.sink.endpoints_updated(key, merged)


def _http_status(exc: BaseException) -> int | None:
    """The HTTP status of an error response (lightkube raises httpx's HTTPStatusError for a
    streamed watch response, ApiError for the rest), without importing the HTTP library."""
    response = getattr(exc, "response", None)
    code = getattr(response, "status_code", None)
    return code if isinstance(code, int) else None


def _is_gone(exc: BaseException) -> bool:
    """410 Gone: as an ERROR watch event / JSON status (ApiError) or a bare HTTP status."""
    if isinstance(exc, ApiError) and exc.status is not None and exc.status.code == 410:
        return True
    return _http_status(exc) == 410


class Reflector:
    """List + watch one resource kind across all namespaces, forever."""

    def __init__(
        self, client: AsyncClient, resource: type, state: ServiceState | SliceState,
        on_listed: Callable[[], None], backoff: Backoff, watch_timeout: int,
        list_chunk: int | None = LIST_CHUNK,
    ) -> None:
        self.client = client
        self.list_chunk = list_chunk
        self.resource = resource
        self.state = state
        self.on_listed = on_listed
        self.backoff = backoff
        self.watch_timeout = watch_timeout
        self.resource_version: str | None = None
        self.name = resource.__name__.removeprefix("Kube")
        self.lists = 0  # how many full lists were done (tests and metrics read it)
        self.events = 0  # events read from the current watch

    async def run(self) -> None:
        while True:
            listed_now = False
            try:
                if self.resource_version is None:
                    await self._list()
                    listed_now = True
                self.events = 0
                await self._watch()
            except Exception as exc:  # noqa: BLE001 - a source never dies; it reports and retries
                if _is_gone(exc):
                    log.info("%s: resourceVersion %s is gone (410: %s); listing again",
                             self.name, self.resource_version, _describe(exc))
                    self.resource_version = None
                    if listed_now and self.events == 0:
                        await self.backoff.wait()  # gone right after a list: do not spin
                    continue
                log.warning("%s: %s; retrying", self.name, _describe(exc))
                await self.backoff.wait()

    async def _list(self) -> None:
        """One full list, in pages of ``list_chunk`` objects (``limit``/``continue``, as
        client-go's reflector pages by 500), each object turned into the model as it arrives:
        the API objects of one page at most are alive at a time (issue 12: peak RSS). The
        cyclic GC is paused meanwhile (tens of thousands of fresh containers, none cyclic)."""
        listing = self.client.list(self.resource, namespace=ALL_NS, labels=LABEL_SELECTOR,
                                   chunk_size=self.list_chunk)
        with gc_paused():
            listed = [self.state.convert(obj) async for obj in listing]
        try:
            version = listing.resourceVersion
        except Exception:  # noqa: BLE001 - lightkube raises NotReadyError for an empty answer
            version = None
        if not version:
            raise RuntimeError(f"the {self.name} list carried no resourceVersion")
        with gc_paused():
            self.state.replace(listed)  # type: ignore[arg-type]
        del listed
        self.resource_version = version
        self.lists += 1
        self.backoff.reset()
        self.on_listed()

    async def _watch(self) -> None:
        async with contextlib.aclosing(self._open_watch()) as events:
            async for kind, obj in events:
                version = obj.metadata.resourceVersion if obj.metadata else None
                if kind == "BOOKMARK":
                    pass
                elif kind in ("ADDED", "MODIFIED"):
                    self.state.upsert(obj.to_dict())
                elif kind == "DELETED":
                    self.state.delete(obj.to_dict())
                if version:
                    self.resource_version = version
                self.events += 1
                self.backoff.reset()

    def _open_watch(self) -> AsyncIterator[tuple[str, Any]]:
        """A watch from our resourceVersion that also asks for BOOKMARK events.

        lightkube's public ``watch()`` has no ``allowWatchBookmarks`` parameter and no public way
        to add a query parameter, so the request is prepared through its generic client (same
        request, one more query parameter). That is lightkube's private API
        (``AsyncClient._client.prepare_request``, exactly what its public ``watch()`` calls):
        pyproject pins lightkube to the 1.0 series checked here; without it the public
        ``watch()`` is used (no bookmarks). Its own reconnect after a clean end of stream resumes
        from the last event's resourceVersion.
        """
        params = {"timeoutSeconds": self.watch_timeout, "resourceVersion": self.resource_version,
                  "allowWatchBookmarks": "true", "labelSelector": _selector_text()}
        generic = getattr(self.client, "_client", None)
        prepare = getattr(generic, "prepare_request", None)
        if prepare is None:  # pragma: no cover - a lightkube without the generic client
            return self.client.watch(self.resource, namespace=ALL_NS, labels=LABEL_SELECTOR,
                                     server_timeout=self.watch_timeout,
                                     resource_version=self.resource_version)
        request = prepare("list", res=self.resource, namespace=ALL_NS, watch=True, params=params)
        return generic.watch(request)


def _selector_text() -> str:
    return ",".join(o.encode(k) for k, o in LABEL_SELECTOR.items())


def _describe(exc: BaseException) -> str:
    if isinstance(exc, ApiError) and exc.status is not None:
        return f"API error {exc.status.code}: {exc.status.message}"
    status = _http_status(exc)
    if status is not None:
        return f"HTTP {status}"
    text = str(exc) or type(exc).__name__
    return text.splitlines()[0]


class KubeSource:
    """Services and EndpointSlices from a Kubernetes API server.

    ``kubeconfig``: a kubeconfig file; None means in-cluster config, then ``$KUBECONFIG``, then
    ``~/.kube/config`` (lightkube's ``KubeConfig.from_env``). ``watch_timeout`` is the server-side
    timeout of one watch request (it is renewed from the last resourceVersion); ``list_chunk``
    the page size of a full list (None: one request for everything).
    """

    def __init__(
        self, kubeconfig: str | None = None, *, context: str | None = None,
        backoff: Callable[[], Backoff] = Backoff, watch_timeout: int = 300,
        list_chunk: int | None = LIST_CHUNK,
    ) -> None:
        self.kubeconfig = kubeconfig
        self.list_chunk = list_chunk
        self.context = context
        self.make_backoff = backoff
        self.watch_timeout = watch_timeout
        self.reflectors: list[Reflector] = []

    def load_config(self) -> KubeConfig:
        """The kubeconfig to use; raises lightkube.ConfigError with a readable message."""
        if self.kubeconfig is not None:
            return KubeConfig.from_file(self.kubeconfig)
        return KubeConfig.from_env()

    async def run(self, sink: ChangeSink) -> None:
        config = self.load_config()
        single = config.get(context_name=self.context)
        client = AsyncClient(config=single, trust_env=False)
        listed: set[str] = set()
        kinds = 2

        def on_listed(name: str) -> Callable[[], None]:
            def done() -> None:
                listed.add(name)
                if len(listed) == kinds:
                    sink.synced()
            return done

        self.reflectors = [
            Reflector(client, KubeService, ServiceState(sink), on_listed("services"),
                      self.make_backoff(), self.watch_timeout, self.list_chunk),
            Reflector(client, KubeEndpointSlice, SliceState(sink), on_listed("endpointslices"),
                      self.make_backoff(), self.watch_timeout, self.list_chunk),
        ]
        try:
            async with asyncio.TaskGroup() as group:
                for reflector in self.reflectors:
                    group.create_task(reflector.run())
        finally:
            await client.close()
