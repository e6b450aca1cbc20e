"""A small asyncio etcd v3 client: KV, transactions, leases and watches over etcd's JSON gateway.

etcd (3.4 and later) serves its v3 API as JSON over HTTP/1.1 on the client port, beside gRPC: the
gRPC-gateway at ``/v3/kv/range|put|txn|deleterange|compaction``,
``/v3/lease/grant|revoke|keepalive|timetolive`` and ``/v3/watch``, with the protobuf messages in
their JSON mapping (bytes base64, int64 as strings, fields at their default value left out; etcd's
dev-guide "Why gRPC gateway"). The streaming calls are POSTs whose response is one JSON object per
message, ``{"result": ...}`` (or ``{"error": ...}``): a watch stays open, a keepalive with one
request in its body gets one answer and ends. Talking JSON over HTTP/1.1 (:mod:`netweft.kv.http`)
instead of gRPC keeps grpcio, protobuf and their threads out of the daemon (issue 12: RSS beside
flanneld).

TLS (CA, client certificates) is the standard library's ``ssl``; several endpoints fail over as
etcd's clientv3 does. Every failure surfaces as :class:`EtcdError` with one line a person can act
on.
"""

from __future__ import annotations

import asyncio
import base64
import codecs
import json
import socket
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from netweft.common import defaults
from netweft.kv.endpoints import Endpoint, parse_endpoints
from netweft.kv.http import Answer, HttpError, HttpPool, Origin
from netweft.kv.tls import (
    EtcdConfigError,
    client_context,
    explain_reset_after_handshake,
    explain_tls,
    load_tls,
)
from netweft.kv.types import (
    CompactedError,
    EtcdError,
    EtcdUnavailable,
    EventType,
    KeyValue,
    WatchBatch,
    WatchEvent,
    prefix_end,
)

T = TypeVar("T")


@dataclass(frozen=True)
class EtcdSettings:
    """How to reach etcd and where the network lives in it.

    ``endpoints``: client URLs (see :mod:`netweft.kv.endpoints`), all used, with failover;
    ``cafile``/``certfile``/``keyfile``: PEM files for TLS (a CA or an ``https://`` endpoint turns
    TLS on, for every endpoint).
    """

    endpoints: tuple[str, ...] = (defaults.ETCD_ENDPOINTS,)
    prefix: str = defaults.ETCD_PREFIX
    cafile: str | None = None
    certfile: str | None = None
    keyfile: str | None = None

    @classmethod
    def from_strings(
        cls, endpoints: str, prefix: str = defaults.ETCD_PREFIX, cafile: str | None = None,
        certfile: str | None = None, keyfile: str | None = None,
    ) -> EtcdSettings:
        """From the CLI's strings; ValueError (one line naming the option) when one is bad."""
        eps = tuple(e.strip() for e in endpoints.split(",") if e.strip())
        parse_endpoints(eps)
        if not prefix.startswith("/"):
            raise ValueError(f"--etcd-prefix: {prefix!r} must start with '/'")
        if (certfile is None) != (keyfile is None):
            raise ValueError("--etcd-certfile and --etcd-keyfile go together")
        return cls(eps, prefix.rstrip("/") or "/", cafile, certfile, keyfile)

    @property
    def tls(self) -> bool:
        """Whether the connection uses TLS: a CA file is given or an endpoint is ``https://``."""
        return self.cafile is not None or any(e.startswith("https://") for e in self.endpoints)

    def describe(self) -> str:
        """The endpoints, comma-separated, for messages."""
        return ",".join(self.endpoints)


# A dead peer without a FIN (a partitioned member) breaks an idle watch within ~20 s, as gRPC's
# keepalive pings did: TCP keepalive after 10 s idle, then 2 probes 5 s apart.
_SOCKET_OPTIONS = [(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1),
                   (socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, 10),
                   (socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, 5),
                   (socket.IPPROTO_TCP, socket.TCP_KEEPCNT, 2)]
# Keys per range request of get_prefix (one page: ~0.3 MB of JSON for Flannel leases).
PAGE = 1000
# gRPC status codes (google.golang.org/grpc/codes) the gateway returns in its error bodies.
_UNAVAILABLE, _DEADLINE_EXCEEDED, _NOT_FOUND = 14, 4, 5


def _b64(data: bytes | str) -> str:
    """Bytes (text UTF-8 encoded) as the gateway's JSON wants them: standard base64."""
    return base64.b64encode(data.encode() if isinstance(data, str) else data).decode("ascii")


def _kv(obj: dict[str, Any]) -> KeyValue:
    """A ``mvccpb.KeyValue`` in its JSON mapping (base64 bytes, int64 strings, defaults left out)
    as a :class:`KeyValue`."""
    return KeyValue(base64.b64decode(obj.get("key", "")).decode(),
                    base64.b64decode(obj.get("value", "")),
                    int(obj.get("create_revision", 0)), int(obj.get("mod_revision", 0)),
                    int(obj.get("lease", 0)))


def _revision(resp: dict[str, Any]) -> int:
    return int(resp.get("header", {}).get("revision", 0))


class _Failed(Exception):
    """One endpoint failed a call in a way another endpoint may not (unreachable, no leader, a
    broken connection): ``detail`` for the message, ``tls`` a TLS explanation when it was one,
    ``closed`` when the endpoint answered but not with etcd's API (plain HTTP to a TLS port)."""

    def __init__(self, detail: str, tls: str | None = None, closed: bool = False,
                 timeout: bool = False) -> None:
        super().__init__(detail)
        self.detail, self.tls, self.closed, self.timeout = detail, tls, closed, timeout


class EtcdClient:
    """Async etcd v3 client. Use as ``async with EtcdClient(settings) as etcd: ...``.

    Calls go to the endpoint that answered last and fail over to the next when it is unreachable,
    answers UNAVAILABLE (a member without a leader) or runs out of its share of the deadline,
    round after round until ``timeout`` seconds have passed. TLS problems are raised at once as
    :class:`EtcdConfigError`; other failures as :class:`EtcdUnavailable` or :class:`EtcdError`,
    one line each.
    """

    def __init__(self, settings: EtcdSettings, timeout: float = 5.0) -> None:
        self.settings = settings
        self.timeout = timeout
        self._http: HttpPool | None = None
        self._endpoints: tuple[Endpoint, ...] = ()
        self._ssl_context: ssl.SSLContext | None = None
        self._current = 0

    async def __aenter__(self) -> EtcdClient:
        self.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def connect(self) -> None:
        """Check the endpoints and TLS files and create the HTTP client (connections open on
        first use). :class:`EtcdConfigError` when an endpoint or a TLS file is wrong."""
        if self._http is not None:
            return
        s = self.settings
        try:
            endpoints = parse_endpoints(s.endpoints)
        except ValueError as exc:
            raise EtcdConfigError(str(exc)) from None
        if s.tls:
            files = load_tls(s.cafile, s.certfile, s.keyfile)
            self._ssl_context = client_context(files, s.certfile, s.keyfile)
        self._http = HttpPool(self._ssl_context, _SOCKET_OPTIONS)
        self._endpoints = endpoints

    async def close(self) -> None:
        """Close the connections (calls after this fail)."""
        http, self._http = self._http, None
        if http is not None:
            await http.close()

    def _origin(self, endpoint: Endpoint) -> Origin:
        return Origin(endpoint.host, endpoint.port, self.settings.tls or endpoint.https)

    def _failed(self, endpoint: Endpoint, exc: HttpError) -> _Failed:
        """A call to ``endpoint`` that got no answer as :class:`_Failed`; with TLS on, what
        went wrong in TLS when it was that (from the ``ssl`` error that caused it)."""
        chain: list[str] = []
        e: BaseException | None = exc
        while e is not None and len(chain) < 6:
            chain.append(str(e))
            e = e.__cause__ or e.__context__
        tls = None
        if self.settings.tls:
            tls = explain_tls(" ".join(chain), endpoint.url, endpoint.host, self.settings.cafile,
                              self.settings.certfile)
            reset = exc.closed or isinstance(exc.__cause__, ConnectionError)
            if tls is None and exc.first_exchange and reset:
                tls = explain_reset_after_handshake(endpoint.url, self.settings.certfile)
        return _Failed(str(exc), tls, closed=exc.closed, timeout=exc.timeout)

    def _status_error(self, endpoint: Endpoint, resp: Answer,
                      body: dict[str, Any] | None) -> EtcdError | _Failed:
        """A non-200 answer: the gateway's JSON error (``code``: a gRPC status code,
        ``message``), or something that is not etcd's API at all."""
        if body is None or "code" not in body:
            text = resp.body.decode("utf-8", "replace").strip()
            first = text.splitlines()[0] if text else ""
            return _Failed(f"HTTP {resp.status} {first}".strip(), closed=True)
        return self._grpc_error(body)

    @staticmethod
    def _grpc_error(err: dict[str, Any]) -> EtcdError | _Failed:
        code = int(err.get("code", err.get("grpc_code", 2)))
        message = str(err.get("message") or err.get("error") or f"gRPC code {code}")
        if code in (_UNAVAILABLE, _DEADLINE_EXCEEDED):
            return _Failed(message, timeout=code == _DEADLINE_EXCEEDED)
        return EtcdError(f"etcd refused the request: {message}")

    def _unavailable(self, last: _Failed, closed: bool) -> EtcdUnavailable:
        hint = ("; it does not speak plain HTTP: if etcd serves TLS, use https:// and "
                "--etcd-cafile" if closed and not self.settings.tls else "")
        if last.timeout:
            return EtcdUnavailable(f"etcd at {self.settings.describe()} is unreachable "
                                   f"(no answer within {self.timeout:g}s{hint})")
        return EtcdUnavailable(f"etcd at {self.settings.describe()} is unreachable "
                               f"({last.detail}{hint})")

    async def _failover(self, attempt: Callable[[Endpoint, float], Awaitable[T]]) -> T:
        """Run ``attempt(endpoint, timeout)`` on the current endpoint, then the others, until one
        answers or ``self.timeout`` has passed. ``attempt`` raises :class:`_Failed` for what
        another endpoint may do better."""
        self.connect()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout
        n = len(self._endpoints)
        pause = 0.05
        last: _Failed | None = None
        closed = False
        while True:
            tls_problems: list[str] = []
            for i in range(n):
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                idx = (self._current + i) % n
                # Several endpoints: none may hold a call for the whole timeout.
                budget = remaining if n == 1 else min(remaining, max(1.0, self.timeout / n))
                try:
                    result = await attempt(self._endpoints[idx], budget)
                except _Failed as exc:
                    last = exc
                    closed = closed or exc.closed
                    if exc.tls is not None:
                        tls_problems.append(exc.tls)
                    continue
                self._current = idx
                return result
            if len(tls_problems) == n:
                raise EtcdConfigError(tls_problems[0])
            remaining = deadline - loop.time()
            if remaining <= 0:
                if tls_problems:
                    raise EtcdConfigError(tls_problems[0])
                assert last is not None
                raise self._unavailable(last, closed) from None
            await asyncio.sleep(min(pause, remaining))
            pause = min(pause * 2, 0.5)

    async def _post(self, endpoint: Endpoint, path: str, request: dict[str, Any],
                    timeout: float) -> dict[str, Any]:
        """One unary call: POST ``request`` as JSON, the answer's JSON object. A streaming call
        (keepalive) answers ``{"result": ...}``: its result is returned."""
        assert self._http is not None
        try:
            resp = await self._http.post(self._origin(endpoint), path,
                                         json.dumps(request).encode(), timeout)
        except HttpError as exc:
            raise self._failed(endpoint, exc) from None
        body = _json_or_none(resp)
        if resp.status != 200 or body is None:
            raise self._status_error(endpoint, resp, body)
        if "error" in body and isinstance(body["error"], dict):
            raise self._grpc_error(body["error"])
        result = body.get("result", body)
        return result if isinstance(result, dict) else {}

    async def _call(self, path: str, request: dict[str, Any]) -> dict[str, Any]:
        async def attempt(endpoint: Endpoint, timeout: float) -> dict[str, Any]:
            return await self._post(endpoint, path, request, timeout)

        return await self._failover(attempt)

    # --- KV ---------------------------------------------------------------------------------

    async def get(self, key: str) -> KeyValue | None:
        """The key as stored, or None when it does not exist (etcd Range). Raises :class:`EtcdError`
        (:class:`EtcdUnavailable` when no endpoint answers)."""
        resp = await self._call("/v3/kv/range", {"key": _b64(key)})
        kvs = resp.get("kvs")
        return _kv(kvs[0]) if kvs else None

    async def get_prefix(self, prefix: str) -> tuple[list[KeyValue], int]:
        """All keys under ``prefix`` (sorted by key) and the store revision they were read at.

        Read in pages of :data:`PAGE` keys, every page at the first page's revision (as
        Kubernetes' paginated lists do), so that a large prefix (5,000 leases) is never one
        multi-megabyte JSON answer held at once. :class:`EtcdError` ("required revision has
        been compacted") when that revision is compacted between pages; the caller lists again.
        """
        p = prefix.encode()
        end = _b64(prefix_end(p))
        out: list[KeyValue] = []
        key, revision = _b64(p), 0
        while True:
            request: dict[str, Any] = {"key": key, "range_end": end, "limit": str(PAGE)}
            if revision:
                request["revision"] = str(revision)
            resp = await self._call("/v3/kv/range", request)
            revision = revision or _revision(resp)
            kvs = resp.get("kvs", ())
            out.extend(_kv(kv) for kv in kvs)
            if not resp.get("more") or not kvs:
                return out, revision
            # The next page starts just after the last key of this one.
            key = _b64(base64.b64decode(kvs[-1]["key"]) + b"\0")

    async def put(self, key: str, value: bytes | str, lease: int = 0) -> int:
        """Set ``key`` (text is UTF-8 encoded), attached to etcd lease ``lease`` when not 0; returns
        the store's revision after the write (etcd Put). Raises :class:`EtcdError`
        (:class:`EtcdUnavailable` when no endpoint answers)."""
        return _revision(await self._call("/v3/kv/put", _put(key, value, lease)))

    async def delete(self, key: str) -> bool:
        """Delete ``key``; whether it existed (etcd DeleteRange). Raises :class:`EtcdError`
        (:class:`EtcdUnavailable` when no endpoint answers)."""
        resp = await self._call("/v3/kv/deleterange", {"key": _b64(key)})
        return int(resp.get("deleted", 0)) > 0

    async def delete_prefix(self, prefix: str) -> int:
        """Delete every key starting with ``prefix``; how many there were. Raises :class:`EtcdError`
        (:class:`EtcdUnavailable` when no endpoint answers)."""
        p = prefix.encode()
        resp = await self._call("/v3/kv/deleterange",
                                {"key": _b64(p), "range_end": _b64(prefix_end(p))})
        return int(resp.get("deleted", 0))

    async def _txn(self, compare: list[dict[str, Any]], success: list[dict[str, Any]]) -> bool:
        resp = await self._call("/v3/kv/txn", {"compare": compare, "success": success})
        return bool(resp.get("succeeded", False))

    async def create(self, key: str, value: bytes | str, lease: int = 0) -> bool:
        """Put ``key`` only if it does not exist (one transaction). True if created."""
        return await self._txn([_absent(key)], [{"request_put": _put(key, value, lease)}])

    async def replace(
        self, key: str, value: bytes | str, mod_revision: int, lease: int = 0,
    ) -> bool:
        """Put ``key`` only if it is still at ``mod_revision`` (compare-and-swap)."""
        return await self._txn([_at(key, mod_revision)],
                               [{"request_put": _put(key, value, lease)}])

    async def create_all(self, items: dict[str, bytes | str]) -> bool:
        """Put every key only if none of them exists (one transaction). True if created."""
        return await self._txn([_absent(k) for k in items],
                               [{"request_put": _put(k, v, 0)} for k, v in items.items()])

    async def delete_all(self, keys: list[str], guard_key: str, mod_revision: int) -> bool:
        """Delete ``keys`` only if ``guard_key`` is still at ``mod_revision`` (one transaction)."""
        return await self._txn([_at(guard_key, mod_revision)],
                               [{"request_delete_range": {"key": _b64(k)}} for k in keys])

    async def compact(self, revision: int) -> None:
        """Compact history up to ``revision`` (physical: etcd has dropped it when this returns).
        Raises :class:`EtcdError` (:class:`EtcdUnavailable` when no endpoint answers)."""
        await self._call("/v3/kv/compaction", {"revision": str(revision), "physical": True})

    async def current_revision(self) -> int:
        """The store's current revision (also a cheap reachability check). A linearisable
        read of one key, so a member without a leader fails it (and the client fails over)."""
        return _revision(await self._call("/v3/kv/range", {"key": _b64(b"\0"), "limit": "1"}))

    # --- leases -----------------------------------------------------------------------------

    async def grant(self, ttl: int) -> int:
        """A new etcd lease of ``ttl`` seconds; its id. Raises :class:`EtcdError`
        (:class:`EtcdUnavailable` when no endpoint answers)."""
        resp = await self._call("/v3/lease/grant", {"TTL": str(ttl)})
        if resp.get("error"):
            raise EtcdError(f"etcd refused a lease: {resp['error']}")
        return int(resp["ID"])

    async def revoke(self, lease_id: int) -> None:
        """Revoke etcd lease ``lease_id`` (its keys are deleted); an unknown lease is no error.
        Raises :class:`EtcdError` (:class:`EtcdUnavailable` when no endpoint answers)."""
        try:
            await self._call("/v3/lease/revoke", {"ID": str(lease_id)})
        except EtcdError as exc:
            if "not found" not in str(exc):
                raise

    async def keepalive_once(self, lease_id: int) -> int:
        """Refresh a lease; returns its new TTL, 0 when the lease no longer exists. (The gateway's
        LeaseKeepAlive stream with one request in its body: etcd answers it, then sees the end of
        the request stream and ends the call.)"""
        resp = await self._call("/v3/lease/keepalive", {"ID": str(lease_id)})
        return int(resp.get("TTL", 0))

    async def time_to_live(self, lease_id: int) -> int:
        """Seconds left on a lease, -1 when it is gone."""
        resp = await self._call("/v3/lease/timetolive", {"ID": str(lease_id)})
        return int(resp.get("TTL", 0))

    # --- watch ------------------------------------------------------------------------------

    async def watch_prefix(
        self, prefix: str, start_revision: int, progress_notify: bool = True,
    ) -> AsyncIterator[WatchBatch]:
        """Yield batches of events under ``prefix`` from ``start_revision`` on.

        Raises :class:`CompactedError` when that revision is gone, :class:`EtcdUnavailable`
        when the stream breaks; the caller re-lists and resumes.
        """
        # The stream goes to the endpoint a cheap call just reached (failing over as calls do);
        # when it breaks, the next watch starts on the endpoint after it.
        await self.current_revision()
        assert self._http is not None
        endpoint = self._endpoints[self._current]
        p = prefix.encode()
        create = {"key": _b64(p), "range_end": _b64(prefix_end(p)),
                  "start_revision": str(start_revision), "progress_notify": progress_notify}
        body = json.dumps({"create_request": create}).encode()
        try:
            async with self._http.stream(self._origin(endpoint), "/v3/watch", body,
                                         self.timeout) as (status, chunks):
                if status != 200:
                    rest = b"".join([c async for c in chunks])
                    answer = Answer(status, rest)
                    raise self._stream_failed(
                        endpoint, self._status_error(endpoint, answer, _json_or_none(answer)))
                async for msg in _messages(chunks):
                    if isinstance(msg.get("error"), dict):
                        raise self._stream_failed(endpoint, self._grpc_error(msg["error"]))
                    batch = _watch_batch(msg.get("result", {}))
                    if batch is not None:
                        yield batch
        except HttpError as exc:
            self._move_on(endpoint)
            raise self._unavailable(self._failed(endpoint, exc), False) from None
        self._move_on(endpoint)
        raise EtcdUnavailable(f"etcd at {endpoint.url} closed the watch stream")

    def _stream_failed(self, endpoint: Endpoint, err: EtcdError | _Failed) -> EtcdError:
        """What a watch stream on ``endpoint`` raises for a refusal (``EtcdError`` as it is) or a
        failure another endpoint may not have (as :class:`EtcdUnavailable`); the next attempt
        starts on the endpoint after it."""
        self._move_on(endpoint)
        return err if isinstance(err, EtcdError) else self._unavailable(err, err.closed)

    def _move_on(self, endpoint: Endpoint) -> None:
        """After ``endpoint`` failed a stream, start the next attempt on the endpoint after it."""
        if self._endpoints and self._endpoints[self._current] is endpoint:
            self._current = (self._current + 1) % len(self._endpoints)


def _put(key: str, value: bytes | str, lease: int) -> dict[str, Any]:
    req: dict[str, Any] = {"key": _b64(key), "value": _b64(value)}
    if lease:
        req["lease"] = str(lease)
    return req


def _absent(key: str) -> dict[str, Any]:
    """Compare: ``key`` was never created (create_revision 0)."""
    return {"key": _b64(key), "result": "EQUAL", "target": "CREATE", "create_revision": "0"}


def _at(key: str, mod_revision: int) -> dict[str, Any]:
    """Compare: ``key`` was last modified at ``mod_revision``."""
    return {"key": _b64(key), "result": "EQUAL", "target": "MOD",
            "mod_revision": str(mod_revision)}


def _json_or_none(answer: Answer) -> dict[str, Any] | None:
    try:
        body = json.loads(answer.body)
    except ValueError:
        return None
    return body if isinstance(body, dict) else None


async def _messages(chunks: AsyncIterator[bytes]) -> AsyncIterator[dict[str, Any]]:
    """The JSON objects of a streaming answer, as they arrive (the gateway writes one per
    message, newline-delimited; the decoder does not rely on the newline)."""
    decoder = json.JSONDecoder()
    text = codecs.getincrementaldecoder("utf-8")()  # a character may span two chunks
    buf = ""
    async for chunk in chunks:
        buf += text.decode(chunk)
        pos = 0
        while True:
            while pos < len(buf) and buf[pos] in " \r\n\t":
                pos += 1
            if pos >= len(buf):
                break
            try:
                obj, end = decoder.raw_decode(buf, pos)
            except ValueError:
                break  # incomplete: wait for more
            pos = end
            if isinstance(obj, dict):
                yield obj
        buf = buf[pos:]


def _watch_batch(result: dict[str, Any]) -> WatchBatch | None:
    """One ``WatchResponse`` as a batch; None for the creation response without events.
    :class:`CompactedError` when the start revision was compacted, :class:`EtcdError` when etcd
    cancelled the watch."""
    if int(result.get("compact_revision", 0)):
        raise CompactedError(int(result["compact_revision"]))
    if result.get("canceled"):
        raise EtcdError(f"etcd cancelled the watch: {result.get('cancel_reason') or 'no reason'}")
    events = result.get("events", ())
    if result.get("created") and not events:
        # The creation response's header carries the store's current revision, not how far
        # this watcher got: history may still follow. Claiming it would let a watcher resumed
        # after a break skip that history.
        return None
    return WatchBatch(_revision(result), [
        WatchEvent(EventType.DELETE if ev.get("type") == "DELETE" else EventType.PUT, _kv(ev["kv"]))
        for ev in events])
