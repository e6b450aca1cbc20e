"""The key-value layer (issue 10 item 3): the in-memory store keeps etcd's semantics (checked side
by side against a real etcd), and the one reflector re-lists after compaction and resumes after a
broken stream."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest
from netweft.kv.backoff import Backoff
from netweft.kv.etcd import EtcdClient, EtcdSettings
from netweft.kv.memory import MemoryKV
from netweft.kv.protocol import KV
from netweft.kv.reflector import Listed, Reflector, Update
from netweft.kv.tls import EtcdConfigError
from netweft.kv.types import (
    CompactedError,
    EtcdError,
    EtcdUnavailable,
    EventType,
    KeyValue,
    WatchBatch,
)

STORES = ["memory", "etcd"]


@asynccontextmanager
async def store(kind: str, endpoint: str) -> AsyncIterator[KV]:
    if kind == "memory":
        yield MemoryKV()
    else:
        async with EtcdClient(EtcdSettings.from_strings(endpoint), timeout=30) as etcd:
            yield etcd


def on_both(kind: str, request: pytest.FixtureRequest,
            body: Callable[[KV, str], Awaitable[Any]]) -> Any:
    """Run ``body(kv, prefix)`` on a fresh MemoryKV or on the session's real etcd."""
    endpoint = request.getfixturevalue("etcd_endpoint") if kind == "etcd" else ""
    prefix = f"/netweft-test/{uuid.uuid4().hex[:12]}/"

    async def main() -> Any:
        async with store(kind, endpoint) as kv:
            return await body(kv, prefix)

    return asyncio.run(main())


@pytest.mark.parametrize("kind", STORES)
def test_writes_transactions_and_revisions_behave_like_etcd(
        kind: str, request: pytest.FixtureRequest) -> None:
    async def body(kv: KV, p: str) -> None:
        start = await kv.current_revision()
        r1 = await kv.put(p + "b", "1")
        assert r1 == start + 1
        got = await kv.get(p + "b")
        assert got is not None and (got.value, got.create_revision, got.mod_revision) == \
            (b"1", r1, r1)
        assert not await kv.create(p + "b", "2")                   # exists: refused
        assert await kv.current_revision() == r1               # a failed txn writes nothing
        assert not await kv.replace(p + "b", "2", mod_revision=r1 - 1)
        assert await kv.replace(p + "b", "2", mod_revision=r1)
        got = await kv.get(p + "b")
        assert got is not None and (got.value, got.create_revision, got.mod_revision) == \
            (b"2", r1, r1 + 1)
        assert await kv.create_all({p + "a": "x", p + "c": "y"})
        assert await kv.current_revision() == r1 + 2           # one transaction, one revision
        assert not await kv.create_all({p + "d": "x", p + "c": "z"})
        kvs, rev = await kv.get_prefix(p)
        assert [k.key[len(p):] for k in kvs] == ["a", "b", "c"] and rev == r1 + 2
        assert not await kv.delete_all([p + "a", p + "c"], p + "b", mod_revision=r1)
        assert await kv.delete_all([p + "a", p + "c"], p + "b", mod_revision=r1 + 1)
        assert await kv.delete(p + "b") and not await kv.delete(p + "b")
        await kv.put(p + "x/1", "1")
        await kv.put(p + "x/2", "2")
        assert await kv.delete_prefix(p + "x/") == 2
        assert await kv.get_prefix(p) == ([], await kv.current_revision())

    on_both(kind, request, body)


@pytest.mark.parametrize("kind", STORES)
def test_leases_grant_refresh_and_revoke_like_etcd(kind: str,
                                                   request: pytest.FixtureRequest) -> None:
    async def body(kv: KV, p: str) -> None:
        lease = await kv.grant(60)
        assert 55 <= await kv.time_to_live(lease) <= 60
        await kv.put(p + "k", "v", lease=lease)
        got = await kv.get(p + "k")
        assert got is not None and got.lease == lease
        assert await kv.keepalive_once(lease) == 60
        await kv.revoke(lease)
        assert await kv.get(p + "k") is None                       # its keys go with it
        assert await kv.time_to_live(lease) == -1
        assert await kv.keepalive_once(lease) == 0
        await kv.revoke(lease)                                     # gone already: no error
        with pytest.raises(EtcdError, match="lease not found"):
            await kv.put(p + "k", "v", lease=lease)

    on_both(kind, request, body)


async def _take(it: AsyncIterator[WatchBatch], n: int) -> list[tuple[str, str, bytes]]:
    out: list[tuple[str, str, bytes]] = []
    while len(out) < n:
        batch = await asyncio.wait_for(anext(it), 10)
        out += [(e.type.value, e.kv.key.rsplit("/", 1)[-1], e.kv.value) for e in batch.events]
    return out


@pytest.mark.parametrize("kind", STORES)
def test_watch_replays_history_and_refuses_compacted_revisions(
        kind: str, request: pytest.FixtureRequest) -> None:
    async def body(kv: KV, p: str) -> None:
        r1 = await kv.put(p + "a", "1")
        await kv.put(p + "a", "2")
        await kv.delete(p + "a")
        watch = kv.watch_prefix(p, r1)
        assert await _take(watch, 3) == [("put", "a", b"1"), ("put", "a", b"2"),
                                         ("delete", "a", b"")]
        await kv.put(p + "b", "3")
        assert await _take(watch, 1) == [("put", "b", b"3")]
        await watch.aclose()  # type: ignore[attr-defined]
        now = await kv.current_revision()
        await kv.compact(now)
        with pytest.raises(CompactedError) as caught:
            await anext(kv.watch_prefix(p, r1).__aiter__())
        assert caught.value.compact_revision == now
        with pytest.raises(EtcdError, match="future revision"):
            await kv.compact(now + 100)

    on_both(kind, request, body)


def test_memory_leases_expire_on_their_clock_with_delete_events() -> None:
    now = [1000.0]
    kv = MemoryKV(clock=lambda: now[0])

    async def main() -> None:
        lease = await kv.grant(10)
        rev = await kv.put("/n/k", "v", lease=lease)
        watch = kv.watch_prefix("/n/", rev + 1)
        waiting = asyncio.ensure_future(anext(watch))
        now[0] += 9
        assert await kv.keepalive_once(lease) == 10                # refreshed at 1009
        now[0] += 9.5
        assert await kv.get("/n/k") is not None
        now[0] += 1
        batch = await asyncio.wait_for(waiting, 5)                 # the watcher notices alone
        assert [(e.type, e.kv.key) for e in batch.events] == [(EventType.DELETE, "/n/k")]
        assert await kv.time_to_live(lease) == -1

    asyncio.run(main())


def _summary(update: Update) -> tuple[str, list[str]]:
    if isinstance(update, Listed):
        return "listed", [kv.key for kv in update.kvs]
    return "batch", [f"{e.type.value} {e.kv.key}" for e in update.events]


def test_reflector_resumes_after_a_broken_stream_and_relists_after_compaction() -> None:
    kv = MemoryKV()

    async def main() -> None:
        await kv.put("/p/a", "1")
        reflector = Reflector("/p/", backoff=Backoff(0.01, 0.02))
        updates = reflector.updates(kv)
        assert _summary(await anext(updates)) == ("listed", ["/p/a"])
        await kv.put("/p/b", "1")
        assert _summary(await anext(updates)) == ("batch", ["put /p/b"])

        # A broken stream: resume from the last revision, nothing lost, no re-list.
        kv.break_watches()
        await kv.put("/p/c", "1")
        assert _summary(await anext(updates)) == ("batch", ["put /p/c"])
        assert reflector.lists == 1

        # etcd unreachable for a while: retried with backoff, then resumed.
        kv.break_watches()
        kv.unavailable = True
        pending = asyncio.ensure_future(anext(updates))
        await asyncio.sleep(0.1)
        assert not pending.done()
        kv.unavailable = False
        await kv.delete("/p/a")
        assert _summary(await asyncio.wait_for(pending, 5)) == ("batch", ["delete /p/a"])
        assert reflector.lists == 1

        # Stop consuming; things change and get compacted away: the next run re-lists.
        await updates.aclose()  # type: ignore[attr-defined]
        await kv.put("/p/d", "1")
        await kv.delete("/p/b")
        await kv.compact(await kv.current_revision())
        again = reflector.updates(kv)
        assert _summary(await anext(again)) == ("listed", ["/p/c", "/p/d"])
        assert reflector.lists == 2
        await kv.put("/p/e", "1")
        assert _summary(await anext(again)) == ("batch", ["put /p/e"])
        await again.aclose()  # type: ignore[attr-defined]

    asyncio.run(main())


def test_memory_store_reports_an_unreachable_etcd() -> None:
    kv = MemoryKV()
    kv.unavailable = True
    with pytest.raises(EtcdUnavailable):
        asyncio.run(kv.get("/x"))


def test_reflector_raises_tls_mistakes_instead_of_retrying_forever() -> None:
    class MisconfiguredKV(MemoryKV):
        """A fake for a fault only a real TLS etcd produces (tests/kv/test_etcd_tls.py has the
        real one): every list fails with a certificate mistake."""

        async def get_prefix(self, prefix: str) -> tuple[list[KeyValue], int]:
            raise EtcdConfigError("etcd at https://x:2379: its TLS certificate is not trusted")

    async def main() -> None:
        reflector = Reflector("/p/", backoff=Backoff(0.01, 0.02))
        with pytest.raises(EtcdConfigError):
            await asyncio.wait_for(anext(reflector.updates(MisconfiguredKV())), 5)

    asyncio.run(main())


def test_a_prefix_larger_than_a_page_is_listed_whole_at_one_revision(
        request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """get_prefix reads in pages (all at the first page's revision): every key, sorted, and a
    write between pages is not seen."""
    import netweft.kv.etcd as etcd_module

    monkeypatch.setattr(etcd_module, "PAGE", 3)

    async def body(kv: KV, prefix: str) -> None:
        for i in range(8):
            await kv.put(f"{prefix}k{i}", str(i))
        await kv.put(f"{prefix[:-1]}x", "outside")  # sorts after the prefix: not listed
        kvs, rev = await kv.get_prefix(prefix)
        assert [k.key for k in kvs] == [f"{prefix}k{i}" for i in range(8)]
        assert [k.value for k in kvs] == [str(i).encode() for i in range(8)]
        assert rev == await kv.current_revision()

        real_call = kv._call  # type: ignore[attr-defined]
        pages = 0

        async def call_then_write(path: str, req: dict[str, Any]) -> dict[str, Any]:
            nonlocal pages
            resp = await real_call(path, req)
            pages += 1
            if pages == 1:
                await real_call("/v3/kv/put", {"key": etcd_module._b64(f"{prefix}k9"),
                                               "value": etcd_module._b64("late")})
            return resp

        kv._call = call_then_write  # type: ignore[attr-defined]
        kvs, rev2 = await kv.get_prefix(prefix)
        assert pages == 3  # 8 keys, 3 a page
        assert [k.key for k in kvs] == [f"{prefix}k{i}" for i in range(8)]
        assert rev2 == rev  # the first page's revision, from before the write

    on_both("etcd", request, body)
