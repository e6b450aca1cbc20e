"""Subnet leases against a real etcd: concurrency, exhaustion, restart reuse, expiry,
reservations and a watch that survives compaction and reconnects."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Awaitable, Callable
from ipaddress import IPv4Address, IPv4Network
from typing import Any, TypeVar

import pytest
from netweft.daemon.etcd_process import EtcdProcess  # noqa: E402
from netweft.ipam.config import NetworkConfig, parse_config  # noqa: E402
from netweft.ipam.lease import Lease  # noqa: E402
from netweft.ipam.leases import LeaseEvent, LeaseStore, SubnetsExhausted  # noqa: E402
from netweft.kv.etcd import EtcdClient, EtcdSettings  # noqa: E402
from support.etcd_scenarios import follow_leases  # noqa: E402

T = TypeVar("T")

VXLAN_DATA = {"VNI": 1, "VtepMAC": "aa:bb:cc:00:00:01"}


def run(endpoint: str, prefix: str, body: Callable[[LeaseStore], Awaitable[T]],
        ttl: int = 60) -> T:
    """Run ``body`` with a fresh client and store (one client per call, like one process)."""

    async def main() -> T:
        async with EtcdClient(EtcdSettings.from_strings(endpoint, prefix)) as etcd:
            return await body(LeaseStore(etcd, prefix, ttl=ttl))

    return asyncio.run(main())


def setup_network(endpoint: str, prefix: str, config: str) -> NetworkConfig:
    cfg = parse_config(config)

    async def body(store: LeaseStore) -> None:
        await store.set_config(cfg)

    run(endpoint, prefix, body)
    return cfg


def node_ip(i: int) -> IPv4Address:
    return IPv4Address("192.0.2.0") + 10 + i


def test_thirty_concurrent_acquirers_get_distinct_subnets(etcd_endpoint: str,
                                                          etcd_prefix: str) -> None:
    cfg = setup_network(etcd_endpoint, etcd_prefix, '{"Network": "10.244.0.0/16"}')
    results: dict[int, Lease] = {}
    errors: list[BaseException] = []
    start = threading.Barrier(30)

    def acquirer(i: int) -> None:
        async def body(store: LeaseStore) -> Lease:
            return await store.acquire(cfg, node_ip(i), "vxlan", VXLAN_DATA)

        try:
            start.wait()
            results[i] = run(etcd_endpoint, etcd_prefix, body)
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=acquirer, args=(i,)) for i in range(30)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - t0
    assert not errors, errors
    subnets = {lease.subnet for lease in results.values()}
    assert len(subnets) == 30
    assert all(cfg.subnet_index(s) is not None for s in subnets if s)
    listed, _ = run(etcd_endpoint, etcd_prefix, lambda s: s.list())
    assert {le.subnet: le.public_ip for le in listed} == {
        le.subnet: le.public_ip for le in results.values()}
    print(f"30 concurrent acquisitions took {elapsed:.3f}s")


def test_small_network_gives_three_leases_then_exhaustion(etcd_endpoint: str,
                                                          etcd_prefix: str) -> None:
    cfg = setup_network(etcd_endpoint, etcd_prefix,
                        '{"Network": "10.5.0.0/22", "SubnetLen": 24}')
    got = []
    for i in range(3):
        got.append(run(etcd_endpoint, etcd_prefix,
                       lambda s, i=i: s.acquire(cfg, node_ip(i), "vxlan", VXLAN_DATA)))
    assert sorted(str(le.subnet) for le in got) == ["10.5.1.0/24", "10.5.2.0/24", "10.5.3.0/24"]
    with pytest.raises(SubnetsExhausted) as info:
        run(etcd_endpoint, etcd_prefix, lambda s: s.acquire(cfg, node_ip(9), "vxlan", {}))
    assert "10.5.0.0/22" in str(info.value) and "all 3 /24 subnets" in str(info.value)


def test_restart_reuses_the_lease_holding_our_public_ip(etcd_endpoint: str,
                                                        etcd_prefix: str) -> None:
    cfg = setup_network(etcd_endpoint, etcd_prefix, '{"Network": "10.244.0.0/16"}')
    first = run(etcd_endpoint, etcd_prefix, lambda s: s.acquire(cfg, node_ip(1), "vxlan",
                                                                   VXLAN_DATA))
    # "crash": nothing released; a new process acquires again with the same public IP
    again = run(etcd_endpoint, etcd_prefix, lambda s: s.acquire(cfg, node_ip(1), "vxlan",
                                                                   VXLAN_DATA))
    assert again.subnet == first.subnet
    assert again.vtep_mac == "aa:bb:cc:00:00:01"
    listed, _ = run(etcd_endpoint, etcd_prefix, lambda s: s.list())
    assert len(listed) == 1


def test_lost_lease_with_old_subnet_env_gets_the_old_subnet_back(etcd_endpoint: str,
                                                                 etcd_prefix: str) -> None:
    cfg = setup_network(etcd_endpoint, etcd_prefix, '{"Network": "10.244.0.0/16"}')
    first = run(etcd_endpoint, etcd_prefix, lambda s: s.acquire(cfg, node_ip(1), "vxlan", {}))

    async def lose(store: LeaseStore) -> None:
        await store.etcd.revoke(first.etcd_lease_id)  # the key goes with its etcd lease

    run(etcd_endpoint, etcd_prefix, lose)
    assert run(etcd_endpoint, etcd_prefix, lambda s: s.list())[0] == []
    back = run(etcd_endpoint, etcd_prefix,
               lambda s: s.acquire(cfg, node_ip(1), "vxlan", {}, previous=first.subnet))
    assert back.subnet == first.subnet


def test_old_subnet_taken_by_another_node_is_not_stolen(etcd_endpoint: str,
                                                        etcd_prefix: str) -> None:
    cfg = setup_network(etcd_endpoint, etcd_prefix, '{"Network": "10.244.0.0/16"}')
    other = run(etcd_endpoint, etcd_prefix, lambda s: s.acquire(cfg, node_ip(2), "vxlan", {}))
    mine = run(etcd_endpoint, etcd_prefix,
               lambda s: s.acquire(cfg, node_ip(1), "vxlan", {}, previous=other.subnet))
    assert mine.subnet != other.subnet


def _watch_until(store: LeaseStore, leases: list[Lease], rev: int,
                 stop: Callable[[list[LeaseEvent]], bool], timeout: float) -> Awaitable[bool]:
    async def go() -> bool:
        async def consume() -> bool:
            async for events in store.watch(leases, rev):
                if stop(events):
                    return True
            return False

        try:
            return await asyncio.wait_for(consume(), timeout)
        except TimeoutError:
            return False

    return go()


def test_lease_without_renewal_expires_and_watcher_reports_removal(etcd_endpoint: str,
                                                                   etcd_prefix: str) -> None:
    cfg = setup_network(etcd_endpoint, etcd_prefix, '{"Network": "10.244.0.0/16"}')

    async def body(store: LeaseStore) -> tuple[bool, list[Lease]]:
        leases, rev = await store.list()
        lease = await store.acquire(cfg, node_ip(1), "vxlan", {})
        removed = await _watch_until(
            store, leases, rev,
            lambda evs: any(e.kind == "removed" and e.lease.subnet == lease.subnet for e in evs),
            timeout=15)
        return removed, (await store.list())[0]

    removed, left = run(etcd_endpoint, etcd_prefix, body, ttl=2)
    assert removed
    assert left == []


def test_lease_with_renewal_survives_ten_seconds(etcd_endpoint: str, etcd_prefix: str) -> None:
    cfg = setup_network(etcd_endpoint, etcd_prefix, '{"Network": "10.244.0.0/16"}')

    async def body(store: LeaseStore) -> list[Lease]:
        lease = await store.acquire(cfg, node_ip(1), "vxlan", {})
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            lease = await store.renew(lease)
            await asyncio.sleep(0.5)
        return (await store.list())[0]

    left = run(etcd_endpoint, etcd_prefix, body, ttl=2)
    assert [le.public_ip for le in left] == [node_ip(1)]


def test_reservations_never_expire_nor_go_to_another_node(etcd_endpoint: str,
                                                          etcd_prefix: str) -> None:
    cfg = setup_network(etcd_endpoint, etcd_prefix,
                        '{"Network": "10.5.0.0/22", "SubnetLen": 24}')
    reserved = IPv4Network("10.5.2.0/24")
    run(etcd_endpoint, etcd_prefix, lambda s: s.reserve(reserved, node_ip(7), cfg))
    others = [run(etcd_endpoint, etcd_prefix,
                  lambda s, i=i: s.acquire(cfg, node_ip(i), "vxlan", {}), ttl=2)
              for i in (1, 2)]
    assert reserved not in {le.subnet for le in others}
    with pytest.raises(SubnetsExhausted):
        run(etcd_endpoint, etcd_prefix, lambda s: s.acquire(cfg, node_ip(3), "vxlan", {}))
    time.sleep(4)  # the two TTL=2 leases expire; the reservation must not
    listed, _ = run(etcd_endpoint, etcd_prefix, lambda s: s.list(with_expiry=True))
    assert [(le.subnet, le.reserved, le.expiration) for le in listed] == [(reserved, True, None)]
    # the node the reservation is for gets it, and it stays a reservation
    mine = run(etcd_endpoint, etcd_prefix,
               lambda s: s.acquire(cfg, node_ip(7), "vxlan", VXLAN_DATA))
    assert mine.subnet == reserved and mine.reserved
    listed, _ = run(etcd_endpoint, etcd_prefix, lambda s: s.list())
    assert listed[0].reserved and listed[0].vtep_mac == VXLAN_DATA["VtepMAC"]


def test_watch_resyncs_after_compaction_to_the_true_set(etcd_factory: Callable[[], EtcdProcess],
                                                        etcd_prefix: str) -> None:
    server = etcd_factory()
    cfg = setup_network(server.endpoint, etcd_prefix, '{"Network": "10.244.0.0/16"}')

    async def body(store: LeaseStore) -> tuple[set[str], set[str]]:
        for i in range(5):
            await store.acquire(cfg, node_ip(i), "vxlan", {})
        leases, rev = await store.list()
        # changes the watcher has not seen yet, then compaction past its revision
        for i in range(5, 10):
            await store.acquire(cfg, node_ip(i), "vxlan", {})
        await store.release(leases[0].subnet)  # type: ignore[arg-type]
        await store.release(leases[1].subnet)  # type: ignore[arg-type]
        _, now = await store.list()
        await store.etcd.compact(now)
        view = {store.key_for(le): le for le in leases}

        async def more_changes() -> None:
            for i in range(10, 15):
                await store.acquire(cfg, node_ip(i), "vxlan", {})
                await asyncio.sleep(0.05)
            current, _ = await store.list()
            await store.release(current[-1].subnet)  # type: ignore[arg-type]

        async def consume() -> None:
            async for events in store.watch(leases, rev):
                for ev in events:
                    key = store.key_for(ev.lease)
                    if ev.kind == "added":
                        view[key] = ev.lease
                    else:
                        view.pop(key, None)

        changer = asyncio.create_task(more_changes())
        watcher = asyncio.create_task(consume())
        await changer
        await asyncio.sleep(1.0)
        watcher.cancel()
        truth, _ = await store.list()
        return set(view), {store.key_for(le) for le in truth}

    seen, truth = run(server.endpoint, etcd_prefix, body)
    assert seen == truth
    assert len(truth) == 12


def test_watch_resyncs_after_etcd_restart(etcd_factory: Callable[[], EtcdProcess],
                                          etcd_prefix: str) -> None:
    server = etcd_factory()
    cfg = setup_network(server.endpoint, etcd_prefix, '{"Network": "10.244.0.0/16"}')

    async def body(store: LeaseStore) -> tuple[set[Any], set[Any]]:
        await store.acquire(cfg, node_ip(0), "vxlan", {})
        leases, rev = await store.list()
        view = {store.key_for(le) for le in leases}

        watcher = follow_leases(store, leases, rev, view, retry_delay=0.2)
        await asyncio.sleep(0.3)
        await asyncio.to_thread(server.restart)
        for i in range(1, 4):
            await store.acquire(cfg, node_ip(i), "vxlan", {})
        deadline = time.monotonic() + 10
        truth: set[Any] = set()
        while time.monotonic() < deadline:
            truth = {store.key_for(le) for le in (await store.list())[0]}
            if view == truth:
                break
            await asyncio.sleep(0.1)
        watcher.cancel()
        return view, truth

    view, truth = run(server.endpoint, etcd_prefix, body)
    assert view == truth and len(truth) == 4


def test_reused_lease_takes_the_ttl_asked_now(etcd_endpoint: str, etcd_prefix: str) -> None:
    """--lease-ttl is honoured when a restarted node reuses its lease (issue 9 item 13): the
    lease does not keep the TTL it was granted with before."""
    cfg = setup_network(etcd_endpoint, etcd_prefix, '{"Network": "10.244.0.0/16"}')
    first = run(etcd_endpoint, etcd_prefix,
                lambda s: s.acquire(cfg, node_ip(1), "vxlan", VXLAN_DATA), ttl=3600)
    again = run(etcd_endpoint, etcd_prefix,
                lambda s: s.acquire(cfg, node_ip(1), "vxlan", VXLAN_DATA), ttl=60)
    assert again.subnet == first.subnet
    left = run(etcd_endpoint, etcd_prefix, lambda s: s.etcd.time_to_live(again.etcd_lease_id))
    assert 50 <= left <= 60
    old = run(etcd_endpoint, etcd_prefix, lambda s: s.etcd.time_to_live(first.etcd_lease_id))
    assert old == -1  # the old etcd lease is not left behind
    # and it renews to the new TTL
    renewed = run(etcd_endpoint, etcd_prefix, lambda s: s.renew(again), ttl=60)
    assert renewed.expiration is not None and renewed.expiration - time.time() <= 61


MAC_A = {"VNI": 1, "VtepMAC": "0a:00:00:00:00:0a"}
ID_A, ID_B = "a" * 32, "b" * 32


def test_public_ip_change_keeps_the_subnet_and_leaves_one_lease_per_mac(
        etcd_endpoint: str, etcd_prefix: str) -> None:
    """Issue 9 item 4: same identity, new public IP -> the same lease, PublicIP updated."""
    cfg = setup_network(etcd_endpoint, etcd_prefix, '{"Network": "10.244.0.0/16"}')
    first = run(etcd_endpoint, etcd_prefix, lambda s: s.acquire(
        cfg, node_ip(1), "vxlan", MAC_A, node_id=ID_A))
    again = run(etcd_endpoint, etcd_prefix, lambda s: s.acquire(
        cfg, node_ip(2), "vxlan", MAC_A, previous=first.subnet, node_id=ID_A))
    assert again.subnet == first.subnet and again.public_ip == node_ip(2)
    listed, _ = run(etcd_endpoint, etcd_prefix, lambda s: s.list())
    assert [(le.subnet, le.public_ip, le.node_id) for le in listed] == [
        (first.subnet, node_ip(2), ID_A)]


def test_public_ip_change_of_a_pre_identity_lease_takes_over_the_subnet_env_one(
        etcd_endpoint: str, etcd_prefix: str) -> None:
    """Item 4 for a lease without identity (older netweft, Flannel): our VTEP MAC, old IP."""
    cfg = setup_network(etcd_endpoint, etcd_prefix, '{"Network": "10.244.0.0/16"}')
    old = run(etcd_endpoint, etcd_prefix, lambda s: s.acquire(cfg, node_ip(1), "vxlan", MAC_A))
    again = run(etcd_endpoint, etcd_prefix, lambda s: s.acquire(
        cfg, node_ip(2), "vxlan", MAC_A, previous=old.subnet, node_id=ID_A))
    assert again.subnet == old.subnet
    listed, _ = run(etcd_endpoint, etcd_prefix, lambda s: s.list())
    assert [(le.public_ip, le.node_id) for le in listed] == [(node_ip(2), ID_A)]


def test_another_identity_never_takes_a_live_lease_without_take_over(
        etcd_endpoint: str, etcd_prefix: str) -> None:
    """Item 11: an intruder with the victim's public IP is refused; a node with a fresh
    identity is told to wait; --take-over-lease takes it."""
    from netweft.ipam.leases import LeaseConflict, LeaseHeld

    cfg = setup_network(etcd_endpoint, etcd_prefix, '{"Network": "10.244.0.0/16"}')
    victim = run(etcd_endpoint, etcd_prefix, lambda s: s.acquire(
        cfg, node_ip(1), "vxlan", MAC_A, node_id=ID_A))
    other_mac = {"VNI": 1, "VtepMAC": "0a:00:00:00:00:0b"}
    with pytest.raises(LeaseConflict) as refused:
        run(etcd_endpoint, etcd_prefix, lambda s: s.acquire(
            cfg, node_ip(1), "vxlan", other_mac, node_id=ID_B))
    assert victim.key_name in str(refused.value) and "\n" not in str(refused.value)
    with pytest.raises(LeaseHeld) as held:
        run(etcd_endpoint, etcd_prefix, lambda s: s.acquire(
            cfg, node_ip(1), "vxlan", other_mac, node_id=ID_B, new_identity=True))
    assert 0 < held.value.seconds_left <= 60 and "expires in" in str(held.value)
    listed, _ = run(etcd_endpoint, etcd_prefix, lambda s: s.list())
    assert [(le.node_id, le.vtep_mac) for le in listed] == [(ID_A, "0a:00:00:00:00:0a")]
    taken = run(etcd_endpoint, etcd_prefix, lambda s: s.acquire(
        cfg, node_ip(1), "vxlan", other_mac, node_id=ID_B, take_over=True))
    assert taken.subnet == victim.subnet and taken.node_id == ID_B


def test_renewal_restores_a_lease_altered_under_us_and_gives_up_a_foreign_one(
        etcd_endpoint: str, etcd_prefix: str) -> None:
    """Item 11: renewal compares the whole value, not only PublicIP."""
    import json

    from netweft.ipam.leases import LeaseLost

    cfg = setup_network(etcd_endpoint, etcd_prefix, '{"Network": "10.244.0.0/16"}')

    async def body(store: LeaseStore) -> tuple[list[dict[str, Any]], str]:
        mine = await store.acquire(cfg, node_ip(1), "vxlan", MAC_A, node_id=ID_A)
        key = store.key_for(mine)
        seen = []
        for bad in ({"PublicIP": str(node_ip(9)), "BackendType": "vxlan",
                     "BackendData": {"VNI": 1, "VtepMAC": "0a:00:00:00:00:99"}},
                    {"PublicIP": 7}):
            await store.etcd.put(key, json.dumps(bad), lease=mine.etcd_lease_id)
            mine = await store.renew(mine)
            kv = await store.etcd.get(key)
            assert kv is not None and kv.lease == mine.etcd_lease_id
            seen.append(json.loads(kv.value))
        await store.etcd.put(key, json.dumps({"PublicIP": str(node_ip(9)),
                                              "NetweftNodeID": ID_B}))
        try:
            await store.renew(mine)
        except LeaseLost as exc:
            return seen, str(exc)
        return seen, ""

    seen, lost = run(etcd_endpoint, etcd_prefix, body)
    assert all(v["PublicIP"] == str(node_ip(1)) and v["NetweftNodeID"] == ID_A
               and v["BackendData"]["VtepMAC"] == "0a:00:00:00:00:0a" for v in seen)
    assert f"now belongs to node {ID_B}" in lost
