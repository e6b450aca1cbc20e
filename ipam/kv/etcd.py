"""A small asyncio etcd v3 client: KV, transactions, leases and watches over grpc.aio.

It drives the generated etcd v3 stubs that ``aetcd`` ships (maintained, importable with current
protobuf) through our own channel handling, because we need TLS, several endpoints, and explicit
control over watch compaction and reconnects. Every failure surfaces as :class:`EtcdError`
with one line a person can act on.
"""

from __future__ import annotations

import asyncio
import ipaddress
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import grpc
from aetcd import rpc
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


@dataclass(frozen=True)
class EtcdSettings:
    """How to reach etcd and where the network lives in it."""

    endpoints: tuple[str, ...] = ("http://127.0.0.1:2379",)
    prefix: str = "/coreos.com/network"
    cafile: str | None = None
    certfile: str | None = None
    keyfile: str | None = None

    @classmethod
    def from_strings(
        cls, endpoints: str, prefix: str = "/coreos.com/network", cafile: str | None = None,
        certfile: str | None = None, keyfile: str | None = None,
    ) -> EtcdSettings:
        eps = tuple(e.strip() for e in endpoints.split(",") if e.strip())
        if not eps:
            raise ValueError("--etcd-endpoints: at least one endpoint is needed")
        for ep in eps:
            parts = urlsplit(ep if "://" in ep else f"http://{ep}")
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise ValueError(f"--etcd-endpoints: {ep!r} is not an http(s)://host:port URL")
        if not prefix.startswith("/"):
            raise ValueError(f"--etcd-prefix: {prefix!r} must start with '/'")
        if (certfile is None) != (keyfile is None):
            raise ValueError("--etcd-certfile and --etcd-keyfile go together")
        return cls(eps, prefix.rstrip("/") or "/", cafile, certfile, keyfile)

    @property
    def tls(self) -> bool:
        return self.cafile is not None or any(e.startswith("https://") for e in self.endpoints)

    def grpc_target(self) -> str:
        hosts = []
        for ep in self.endpoints:
            parts = urlsplit(ep if "://" in ep else f"http://{ep}")
            hosts.append((parts.hostname or "127.0.0.1", parts.port or 2379))
        try:
            if all(ipaddress.ip_address(h).version == 4 for h, _ in hosts):
                return "ipv4:" + ",".join(f"{h}:{p}" for h, p in hosts)
        except ValueError:
            pass
        host, port = hosts[0]
        return f"dns:///{host}:{port}"

    def describe(self) -> str:
        return ",".join(self.endpoints)


class EtcdClient:
    """Async etcd v3 client. Use as ``async with EtcdClient(settings) as etcd: ...``."""

    def __init__(self, settings: EtcdSettings, timeout: float = 5.0) -> None:
        self.settings = settings
        self.timeout = timeout
        self._channel: grpc.aio.Channel | None = None
        self._stubs: dict[str, Any] = {}

    async def __aenter__(self) -> EtcdClient:
        self.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def connect(self) -> None:
        if self._channel is not None:
            return
        s = self.settings
        # Reconnect quickly after etcd comes back; calls wait (up to their timeout) for a
        # connection instead of failing at once while the channel is between attempts.
        options = [("grpc.keepalive_time_ms", 10000), ("grpc.keepalive_timeout_ms", 5000),
                   ("grpc.initial_reconnect_backoff_ms", 100),
                   ("grpc.min_reconnect_backoff_ms", 100),
                   ("grpc.max_reconnect_backoff_ms", 1000),
                   ("grpc.max_receive_message_length", 64 * 1024 * 1024)]
        if s.tls:
            def read(path: str | None) -> bytes | None:
                if path is None:
                    return None
                with open(path, "rb") as f:
                    return f.read()

            creds = grpc.ssl_channel_credentials(read(s.cafile), read(s.keyfile), read(s.certfile))
            self._channel = grpc.aio.secure_channel(s.grpc_target(), creds, options=options)
        else:
            self._channel = grpc.aio.insecure_channel(s.grpc_target(), options=options)
        self._stubs = {"kv": rpc.KVStub(self._channel), "lease": rpc.LeaseStub(self._channel),
                       "watch": rpc.WatchStub(self._channel)}

    # The stubs connect on first use, so a client works without an explicit connect().
    @property
    def _kv(self) -> Any:
        self.connect()
        return self._stubs["kv"]

    @property
    def _lease(self) -> Any:
        self.connect()
        return self._stubs["lease"]

    @property
    def _watch(self) -> Any:
        self.connect()
        return self._stubs["watch"]

    async def close(self) -> None:
        if self._channel is not None:
            await self._channel.close()
            self._channel = None

    def _error(self, exc: grpc.aio.AioRpcError) -> EtcdError:
        code = exc.code()
        if code is grpc.StatusCode.DEADLINE_EXCEEDED:
            return EtcdUnavailable(f"etcd at {self.settings.describe()} is unreachable "
                                   f"(no answer within {self.timeout:g}s)")
        if code is grpc.StatusCode.UNAVAILABLE:
            return EtcdUnavailable(f"etcd at {self.settings.describe()} is unreachable "
                                   f"({exc.details() or 'unavailable'})")
        return EtcdError(f"etcd refused the request: {exc.details() or code.name}")

    async def _call(self, method: Any, request: Any) -> Any:
        self.connect()
        try:
            return await method(request, timeout=self.timeout, wait_for_ready=True)
        except grpc.aio.AioRpcError as exc:
            raise self._error(exc) from None

    # --- KV ---------------------------------------------------------------------------------

    async def get(self, key: str) -> KeyValue | None:
        resp = await self._call(self._kv.Range, rpc.RangeRequest(key=key.encode()))
        return KeyValue.from_pb(resp.kvs[0]) if resp.kvs else None

    async def get_prefix(self, prefix: str) -> tuple[list[KeyValue], int]:
        """All keys under ``prefix`` and the store revision they were read at."""
        p = prefix.encode()
        resp = await self._call(self._kv.Range, rpc.RangeRequest(key=p, range_end=prefix_end(p)))
        return [KeyValue.from_pb(kv) for kv in resp.kvs], resp.header.revision

    async def put(self, key: str, value: bytes | str, lease: int = 0) -> int:
        if isinstance(value, str):
            value = value.encode()
        resp = await self._call(self._kv.Put, rpc.PutRequest(key=key.encode(), value=value,
                                                             lease=lease))
        return int(resp.header.revision)

    async def delete(self, key: str) -> bool:
        resp = await self._call(self._kv.DeleteRange, rpc.DeleteRangeRequest(key=key.encode()))
        return resp.deleted > 0

    async def delete_prefix(self, prefix: str) -> int:
        p = prefix.encode()
        resp = await self._call(self._kv.DeleteRange,
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
        resp = await self._call(self._kv.Txn, rpc.TxnRequest(compare=[cmp], success=[put]))
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
        resp = await self._call(self._kv.Txn, rpc.TxnRequest(compare=[cmp], success=[put]))
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
        resp = await self._call(self._kv.Txn, rpc.TxnRequest(compare=compare, success=success))
        return bool(resp.succeeded)

    async def delete_all(self, keys: list[str], guard_key: str, mod_revision: int) -> bool:
        """Delete ``keys`` only if ``guard_key`` is still at ``mod_revision`` (one transaction)."""
        cmp = rpc.Compare(key=guard_key.encode(), result=rpc.Compare.EQUAL,
                          target=rpc.Compare.MOD, mod_revision=mod_revision)
        ops = [rpc.RequestOp(request_delete_range=rpc.DeleteRangeRequest(key=k.encode()))
               for k in keys]
        resp = await self._call(self._kv.Txn, rpc.TxnRequest(compare=[cmp], success=ops))
        return bool(resp.succeeded)

    async def compact(self, revision: int) -> None:
        await self._call(self._kv.Compact, rpc.CompactionRequest(revision=revision, physical=True))

    async def status(self) -> int:
        """The store's current revision (also a cheap reachability check)."""
        resp = await self._call(self._kv.Range, rpc.RangeRequest(key=b"\0", limit=1))
        return int(resp.header.revision)

    # --- leases -----------------------------------------------------------------------------

    async def grant(self, ttl: int) -> int:
        resp = await self._call(self._lease.LeaseGrant, rpc.LeaseGrantRequest(TTL=ttl))
        if resp.error:
            raise EtcdError(f"etcd refused a lease: {resp.error}")
        return int(resp.ID)

    async def revoke(self, lease_id: int) -> None:
        try:
            await self._call(self._lease.LeaseRevoke, rpc.LeaseRevokeRequest(ID=lease_id))
        except EtcdError as exc:
            if "not found" not in str(exc):
                raise

    async def keepalive_once(self, lease_id: int) -> int:
        """Refresh a lease; returns its new TTL, 0 when the lease no longer exists."""
        self.connect()

        async def one() -> AsyncIterator[Any]:
            yield rpc.LeaseKeepAliveRequest(ID=lease_id)

        call = self._lease.LeaseKeepAlive(one(), timeout=self.timeout, wait_for_ready=True)
        try:
            async for resp in call:
                return int(resp.TTL)
        except grpc.aio.AioRpcError as exc:
            raise self._error(exc) from None
        finally:
            call.cancel()
        return 0

    async def time_to_live(self, lease_id: int) -> int:
        """Seconds left on a lease, -1 when it is gone."""
        req = rpc.LeaseTimeToLiveRequest(ID=lease_id)
        resp = await self._call(self._lease.LeaseTimeToLive, req)
        return int(resp.TTL)

    # --- watch ------------------------------------------------------------------------------

    async def watch_prefix(
        self, prefix: str, start_revision: int, progress_notify: bool = True,
    ) -> AsyncIterator[WatchBatch]:
        """Yield batches of events under ``prefix`` from ``start_revision`` on.

        Raises :class:`CompactedError` when that revision is gone, :class:`EtcdUnavailable`
        when the stream breaks; the caller re-lists and resumes.
        """
        self.connect()
        p = prefix.encode()
        create = rpc.WatchCreateRequest(key=p, range_end=prefix_end(p),
                                        start_revision=start_revision,
                                        progress_notify=progress_notify)

        async def requests() -> AsyncIterator[Any]:
            yield rpc.WatchRequest(create_request=create)
            # Keep the request stream open for as long as the caller reads.
            await asyncio.Event().wait()

        call = self._watch.Watch(requests(), wait_for_ready=True)
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
            raise self._error(exc) from None
        finally:
            call.cancel()
        raise EtcdUnavailable(f"etcd at {self.settings.describe()} closed the watch stream")
