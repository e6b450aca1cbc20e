"""Lease policy on the in-memory store (pure, no server): concurrent acquirers, reuse by public
IP, expiry without renewal, and a watch converging after compaction. The same behaviours against
a real etcd are in test_ipam_leases.py."""

from __future__ import annotations

import asyncio
from ipaddress import IPv4Address

import pytest
from netweft.ipam.config import parse_config  # noqa: E402
from netweft.ipam.leases import LeaseLost, LeaseStore, SubnetsExhausted  # noqa: E402
from netweft.kv.memory import MemoryKV  # noqa: E402
from support.etcd_scenarios import follow_leases  # noqa: E402

CFG = parse_config('{"Network": "10.5.0.0/20", "SubnetLen": 24}')  # 15 subnets after the first


def node_ip(i: int) -> IPv4Address:
    return IPv4Address("192.0.2.10") + i


def test_concurrent_acquirers_get_distinct_subnets_until_exhausted() -> None:
    kv = MemoryKV()
    store = LeaseStore(kv, "/n")

    async def main() -> None:
        leases = await asyncio.gather(*(store.acquire(CFG, node_ip(i), "vxlan", {})
                                        for i in range(15)))
        assert len({le.subnet for le in leases}) == 15
        with pytest.raises(SubnetsExhausted):
            await store.acquire(CFG, node_ip(99), "vxlan", {})
        # A restarted node gets its own lease back, not another one.
        again = await store.acquire(CFG, node_ip(3), "vxlan", {"VNI": 1})
        assert again.subnet == leases[3].subnet and again.backend_data == {"VNI": 1}

    asyncio.run(main())


def test_unrenewed_lease_expires_and_renewal_reports_it_lost() -> None:
    now = [0.0]
    kv = MemoryKV(clock=lambda: now[0])
    store = LeaseStore(kv, "/n", ttl=30)

    async def main() -> None:
        lease = await store.acquire(CFG, node_ip(1), "vxlan", {})
        now[0] += 20
        lease = await store.renew(lease)
        assert lease.expiration is not None
        now[0] += 29
        assert len((await store.list())[0]) == 1
        now[0] += 2
        assert (await store.list())[0] == []
        with pytest.raises(LeaseLost):
            await store.renew(lease)

    asyncio.run(main())


def test_lease_watch_converges_after_compaction_and_broken_streams() -> None:
    kv = MemoryKV()
    store = LeaseStore(kv, "/n")

    async def main() -> None:
        for i in range(3):
            await store.acquire(CFG, node_ip(i), "vxlan", {})
        leases, rev = await store.list()
        view = {store.key_for(le) for le in leases}

        watcher = follow_leases(store, leases, rev, view, retry_delay=0.01)
        await store.acquire(CFG, node_ip(3), "vxlan", {})
        kv.break_watches()
        await store.release(leases[0].subnet)  # type: ignore[arg-type]
        await kv.compact(await kv.current_revision())
        kv.break_watches()                     # the resumed watch meets the compaction: re-list
        await store.acquire(CFG, node_ip(4), "vxlan", {})
        for _ in range(200):
            truth = {store.key_for(le) for le in (await store.list())[0]}
            if view == truth:
                break
            await asyncio.sleep(0.01)
        watcher.cancel()
        assert view == truth and len(truth) == 4

    asyncio.run(main())
