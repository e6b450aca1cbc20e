"""A small asyncio etcd v3 client: KV, transactions, leases and watches over grpc.aio.

It drives the generated etcd v3 stubs that ``aetcd`` ships (maintained, importable with current
protobuf) through our own channel handling, because we need TLS, several endpoints, and explicit
control over watch compaction and reconnects. Every failure surfaces as :class:`EtcdError`
with one line a person can act on.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import grpc
from aetcd import rpc
from netweft.common import defaults
from netweft.kv.endpoints import Endpoint, parse_endpoints
from netweft.kv.tls import EtcdConfigError, explain_handshake, load_tls
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


@dataclass
class _Conn:
    """One endpoint's channel and stubs."""

    endpoint: Endpoint
    channel: grpc.aio.Channel
    kv: Any
    lease: Any
    watch: Any


# Reconnect quickly after etcd comes back (calls are retried until their timeout meanwhile).
_CHANNEL_OPTIONS = [("grpc.keepalive_time_ms", 10000), ("grpc.keepalive_timeout_ms", 5000),
                    ("grpc.initial_reconnect_backoff_ms", 100),
                    ("grpc.min_reconnect_backoff_ms", 100),
                    ("grpc.max_reconnect_backoff_ms", 1000),
                    ("grpc.max_receive_message_length", 64 * 1024 * 1024)]
_FAILOVER = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)


class EtcdClient:
    """Async etcd v3 client. Use as ``async with EtcdClient(settings) as etcd: ...``.

    Every endpoint gets a channel; a call goes to the endpoint that answered last and fails over
    to the next on UNAVAILABLE or a per-endpoint deadline (a killed member, a member without a
    leader), round after round until ``timeout`` seconds have passed. TLS problems are raised at
    once as :class:`EtcdConfigError`; other failures as :class:`EtcdUnavailable` or
    :class:`EtcdError`, one line each.
    """

    def __init__(self, settings: EtcdSettings, timeout: float = 5.0) -> None:
        self.settings = settings
        self.timeout = timeout
        self._conns: list[_Conn] = []
        self._current = 0

    async def __aenter__(self) -> EtcdClient:
        self.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def connect(self) -> None:
        """Create the channels (they connect on first use). :class:`EtcdConfigError` when an
        endpoint or a TLS file is wrong."""
        if self._conns:
            return
        s = self.settings
        try:
            endpoints = parse_endpoints(s.endpoints)
        except ValueError as exc:
            raise EtcdConfigError(str(exc)) from None
        creds = None
        if s.tls:
            files = load_tls(s.cafile, s.certfile, s.keyfile)
            creds = grpc.ssl_channel_credentials(files.ca, files.key, files.cert)
        for ep in endpoints:
            if creds is not None:
                channel = grpc.aio.secure_channel(ep.grpc_target(), creds,
                                                  options=_CHANNEL_OPTIONS)
            else:
                channel = grpc.aio.insecure_channel(ep.grpc_target(), options=_CHANNEL_OPTIONS)
            self._conns.append(_Conn(ep, channel, rpc.KVStub(channel), rpc.LeaseStub(channel),
                                     rpc.WatchStub(channel)))

    async def close(self) -> None:
        """Close every endpoint's channel (calls after this fail)."""
        conns, self._conns = self._conns, []
        for conn in conns:
            await conn.channel.close()

    def _tls_problem(self, conn: _Conn, exc: grpc.aio.AioRpcError) -> str | None:
        if not self.settings.tls:
            return None
        return explain_handshake(exc.details() or "", conn.endpoint.url, conn.endpoint.host,
                                 self.settings.cafile, self.settings.certfile)

    def _error(self, exc: grpc.aio.AioRpcError, closed: bool = False) -> EtcdError:
        """One line for ``exc``; ``closed``: some endpoint accepted the connection and closed it
        (what a TLS-only etcd does to plain gRPC), which earns a hint."""
        code = exc.code()
        hint = ("; it closed the connection: if etcd serves TLS, use https:// and --etcd-cafile"
                if closed and not self.settings.tls else "")
        if code is grpc.StatusCode.DEADLINE_EXCEEDED:
            return EtcdUnavailable(f"etcd at {self.settings.describe()} is unreachable "
                                   f"(no answer within {self.timeout:g}s{hint})")
        if code is grpc.StatusCode.UNAVAILABLE:
            return EtcdUnavailable(f"etcd at {self.settings.describe()} is unreachable "
                                   f"({exc.details() or 'unavailable'}{hint})")
        return EtcdError(f"etcd refused the request: {exc.details() or code.name}")

    async def _failover(self, attempt: Callable[[_Conn, float], Awaitable[T]]) -> T:
        """Run ``attempt(conn, timeout)`` on the current endpoint, then the others, until one
        answers or ``self.timeout`` has passed."""
        self.connect()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout
        n = len(self._conns)
        pause = 0.05
        last: grpc.aio.AioRpcError | None = None
        closed = False
        while True:
            tls_problems: list[str] = []
            for i in range(n):
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                idx = (self._current + i) % n
                conn = self._conns[idx]
                # Several endpoints: none may hold a call for the whole timeout.
                budget = remaining if n == 1 else min(remaining, max(1.0, self.timeout / n))
                try:
                    result = await attempt(conn, budget)
                except grpc.aio.AioRpcError as exc:
                    if exc.code() not in _FAILOVER:
                        raise self._error(exc) from None
                    last = exc
                    closed = closed or "Socket closed" in (exc.details() or "")
                    problem = self._tls_problem(conn, exc)
                    if problem is not None:
                        tls_problems.append(problem)
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
                raise self._error(last, closed) from None
            await asyncio.sleep(min(pause, remaining))
            pause = min(pause * 2, 0.5)

    async def _call(self, service: str, method: str, request: Any) -> Any:
        async def attempt(conn: _Conn, timeout: float) -> Any:
            call = getattr(getattr(conn, service), method)
            return await call(request, timeout=timeout, wait_for_ready=False)

        return await self._failover(attempt)

    # --- KV ---------------------------------------------------------------------------------

    async def get(self, key: str) -> KeyValue | None:
        """The key as stored, or None when it does not exist (etcd Range). Raises :class:`EtcdError`
        (:class:`EtcdUnavailable` when no endpoint answers)."""
        resp = await self._call("kv", "Range", rpc.RangeRequest(key=key.encode()))
        return KeyValue.from_pb(resp.kvs[0]) if resp.kvs else None

    async def get_prefix(self, prefix: str) -> tuple[list[KeyValue], int]:
        """All keys under ``prefix`` and the store revision they were read at."""
        p = prefix.encode()
        resp = await self._call("kv", "Range", rpc.RangeRequest(key=p, range_end=prefix_end(p)))
        return [KeyValue.from_pb(kv) for kv in resp.kvs], resp.header.revision

    async def put(self, key: str, value: bytes | str, lease: int = 0) -> int:
        """Set ``key`` (text is UTF-8 encoded), attached to etcd lease ``lease`` when not 0; returns
        the store's revision after the write (etcd Put). Raises :class:`EtcdError`
        (:class:`EtcdUnavailable` when no endpoint answers)."""
        if isinstance(value, str):
            value = value.encode()
        resp = await self._call("kv", "Put", rpc.PutRequest(key=key.encode(), value=value,
                                                             lease=lease))
        return int(resp.header.revision)

    async def delete(self, key: str) -> bool:
        """Delete ``key``; whether it existed (etcd DeleteRange). Raises :class:`EtcdError`
        (:class:`EtcdUnavailable` when no endpoint answers)."""
        resp = await self._call("kv", "DeleteRange", rpc.DeleteRangeRequest(key=key.encode()))
        return resp.deleted > 0

    async def delete_prefix(self, prefix: str) -> int:
        """Delete every key starting with ``prefix``; how many there were. Raises :class:`EtcdError`
        (:class:`EtcdUnavailable` when no endpoint answers)."""
        p = prefix.encode()
        resp = await self._call("kv", "DeleteRange",
                                rpc.DeleteRangeRequest(key=p, range_end=prefix_end(p)))
        return int(resp.deleted)

    async def create(self, key: str, value: bytes | str, lease: int = 0) -> bool:
        """Put ``key`` only if it does not exist (one transaction). True if created."""
        if isinstance(value, str):
            value = value.encode()
        k = key.encode()
        cmp = rpc.Compare(key=k, result=rpc.Compare.EQUAL, target=rpc.Compare.CREATE,
                          create_revision=0)
        put = rpc.RequestOp(request_put=rpc.PutRequest(key=k, value=value, lease=lease))
        resp = await self._call("kv", "Txn", rpc.TxnRequest(compare=[cmp], success=[put]))
        return bool(resp.succeeded)

    async def replace(
        self, key: str, value: bytes | str, mod_revision: int, lease: int = 0,
    ) -> bool:
        """Put ``key`` only if it is still at ``mod_revision`` (compare-and-swap)."""
        if isinstance(value, str):
            value = value.encode()
        k = key.encode()
        cmp = rpc.Compare(key=k, result=rpc.Compare.EQUAL, target=rpc.Compare.MOD,
                          mod_revision=mod_revision)
        put = rpc.RequestOp(request_put=rpc.PutRequest(key=k, value=value, lease=lease))
        resp = await self._call("kv", "Txn", rpc.TxnRequest(compare=[cmp], success=[put]))
        return bool(resp.succeeded)

    async def create_all(self, items: dict[str, bytes | str]) -> bool:
        """Put every key only if none of them exists (one transaction). True if created."""
        compare, success = [], []
        for key, value in items.items():
            k = key.encode()
            v = value.encode() if isinstance(value, str) else value
            compare.append(rpc.Compare(key=k, result=rpc.Compare.EQUAL,
                                       target=rpc.Compare.CREATE, create_revision=0))
            success.append(rpc.RequestOp(request_put=rpc.PutRequest(key=k, value=v)))
        resp = await self._call("kv", "Txn", rpc.TxnRequest(compare=compare, success=success))
        return bool(resp.succeeded)

    async def delete_all(self, keys: list[str], guard_key: str, mod_revision: int) -> bool:
        """Delete ``keys`` only if ``guard_key`` is still at ``mod_revision`` (one transaction)."""
        cmp = rpc.Compare(key=guard_key.encode(), result=rpc.Compare.EQUAL,
                          target=rpc.Compare.MOD, mod_revision=mod_revision)
        ops = [rpc.RequestOp(request_delete_range=rpc.DeleteRangeRequest(key=k.encode()))
               for k in keys]
        resp = await self._call("kv", "Txn", rpc.TxnRequest(compare=[cmp], success=ops))
        return bool(resp.succeeded)

    async def compact(self, revision: int) -> None:
        """Compact history up to ``revision`` (physical: etcd has dropped it when this returns).
        Raises :class:`EtcdError` (:class:`EtcdUnavailable` when no endpoint answers)."""
        await self._call("kv", "Compact", rpc.CompactionRequest(revision=revision, physical=True))

    async def current_revision(self) -> int:
        """The store's current revision (also a cheap reachability check). A linearisable
        read of one key, so a member without a leader fails it (and the client fails over)."""
        resp = await self._call("kv", "Range", rpc.RangeRequest(key=b"\0", limit=1))
        return int(resp.header.revision)

    # --- leases -----------------------------------------------------------------------------

    async def grant(self, ttl: int) -> int:
        """A new etcd lease of ``ttl`` seconds; its id. Raises :class:`EtcdError`
        (:class:`EtcdUnavailable` when no endpoint answers)."""
        resp = await self._call("lease", "LeaseGrant", rpc.LeaseGrantRequest(TTL=ttl))
        if resp.error:
            raise EtcdError(f"etcd refused a lease: {resp.error}")
        return int(resp.ID)

    async def revoke(self, lease_id: int) -> None:
        """Revoke etcd lease ``lease_id`` (its keys are deleted); an unknown lease is no error.
        Raises :class:`EtcdError` (:class:`EtcdUnavailable` when no endpoint answers)."""
        try:
            await self._call("lease", "LeaseRevoke", rpc.LeaseRevokeRequest(ID=lease_id))
        except EtcdError as exc:
            if "not found" not in str(exc):
                raise

    async def keepalive_once(self, lease_id: int) -> int:
        """Refresh a lease; returns its new TTL, 0 when the lease no longer exists."""

        async def attempt(conn: _Conn, timeout: float) -> int:
            async def one() -> AsyncIterator[Any]:
                yield rpc.LeaseKeepAliveRequest(ID=lease_id)

            call = conn.lease.LeaseKeepAlive(one(), timeout=timeout, wait_for_ready=False)
            try:
                async for resp in call:
                    return int(resp.TTL)
            finally:
                call.cancel()
            return 0

        return await self._failover(attempt)

    async def time_to_live(self, lease_id: int) -> int:
        """Seconds left on a lease, -1 when it is gone."""
        req = rpc.LeaseTimeToLiveRequest(ID=lease_id)
        resp = await self._call("lease", "LeaseTimeToLive", req)
        return int(resp.TTL)

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
        conn = self._conns[self._current]
        p = prefix.encode()
        create = rpc.WatchCreateRequest(key=p, range_end=prefix_end(p),
                                        start_revision=start_revision,
                                        progress_notify=progress_notify)

        async def requests() -> AsyncIterator[Any]:
            yield rpc.WatchRequest(create_request=create)
            # Keep the request stream open for as long as the caller reads.
            await asyncio.Event().wait()

        call = conn.watch.Watch(requests(), wait_for_ready=False)
        try:
            async for resp in call:
                if resp.compact_revision:
                    raise CompactedError(int(resp.compact_revision))
                if resp.canceled:
                    reason = resp.cancel_reason or "no reason"
                    raise EtcdError(f"etcd cancelled the watch: {reason}")
                if resp.created and not resp.events:
                    # The creation response's header carries the store's current revision, not
                    # how far this watcher got: history may still follow. Claiming it would let
                    # a watcher resumed after a break skip that history.
                    continue
                events = [
                    WatchEvent(EventType.DELETE if ev.type == 1 else EventType.PUT,
                               KeyValue.from_pb(ev.kv))
                    for ev in resp.events
                ]
                yield WatchBatch(int(resp.header.revision), events)
        except grpc.aio.AioRpcError as exc:
            self._move_on(conn)
            raise self._error(exc) from None
        finally:
            call.cancel()
        self._move_on(conn)
        raise EtcdUnavailable(f"etcd at {conn.endpoint.url} closed the watch stream")

    def _move_on(self, conn: _Conn) -> None:
        """After ``conn`` failed a stream, start the next attempt on the endpoint after it."""
        if self._conns and self._conns[self._current] is conn:
            self._current = (self._current + 1) % len(self._conns)
