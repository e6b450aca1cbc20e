"""Several etcd endpoints, all used, with failover (issue 9 item 7): a real 3-member etcd cluster
(Debian's etcd) on loopback ports, given by host name (``localhost``) and by an IPv6 literal
(``[::1]``), keeps serving lease acquisition, renewal, the lease watch and the CLI after its
leader is killed."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from ipaddress import IPv4Address
from pathlib import Path

import pytest
from netweft.daemon.etcd_process import EtcdCluster, EtcdProcess  # noqa: E402
from netweft.ipam.config import parse_config  # noqa: E402
from netweft.ipam.leases import LeaseStore  # noqa: E402
from netweft.kv.etcd import EtcdClient, EtcdSettings  # noqa: E402
from support.etcd_scenarios import follow_leases  # noqa: E402

NETWEFT = str(Path(sys.executable).parent / "netweft")


@pytest.fixture
def etcd_cluster() -> Iterator[EtcdCluster]:
    # member 1 serves clients on the IPv6 loopback only, the others on 127.0.0.1
    c = EtcdCluster.start(["127.0.0.1", "::1", "127.0.0.1"])
    try:
        yield c
    finally:
        c.remove()


def by_name(member: EtcdProcess) -> str:
    """The member's client URL with 127.0.0.1 given as ``localhost`` (IPv6 stays a literal)."""
    return member.endpoint.replace("127.0.0.1", "localhost")


def node_ip(i: int) -> IPv4Address:
    return IPv4Address("192.0.2.10") + i


def test_leases_watch_and_cli_survive_the_leader_being_killed(
        etcd_cluster: EtcdCluster, etcd_prefix: str) -> None:
    leader = etcd_cluster.leader()
    # The leader first, so the client is talking to it when it dies.
    ordered = [leader] + [m for m in etcd_cluster.members if m is not leader]
    endpoints = ",".join(by_name(m) for m in ordered)
    assert "localhost" in endpoints and "[::1]" in endpoints
    settings = EtcdSettings.from_strings(endpoints, etcd_prefix)
    cfg = parse_config('{"Network": "10.244.0.0/16"}')

    async def main() -> float:
        # Each URL on its own reaches its member: names and the IPv6 literal both work.
        for m in etcd_cluster.members:
            async with EtcdClient(EtcdSettings((by_name(m),), etcd_prefix)) as one:
                assert await one.current_revision() > 0
        async with EtcdClient(settings) as etcd:
            store = LeaseStore(etcd, etcd_prefix, ttl=60)
            await store.set_config(cfg)
            mine = await store.acquire(cfg, node_ip(0), "vxlan", {})
            leases, rev = await store.list()
            view = {store.key_for(le) for le in leases}

            watcher = follow_leases(store, leases, rev, view, retry_delay=0.2)
            await store.acquire(cfg, node_ip(1), "vxlan", {})
            await asyncio.to_thread(leader.kill)
            killed = time.monotonic()
            await store.acquire(cfg, node_ip(2), "vxlan", {})  # fails over, default timeout
            took = time.monotonic() - killed
            for i in range(3, 6):
                await store.acquire(cfg, node_ip(i), "vxlan", {})
            await store.renew(mine)
            truth: set[str] = set()
            for _ in range(300):  # the watch resumes on a live member and catches up
                truth = {store.key_for(le) for le in (await store.list())[0]}
                if view == truth:
                    break
                await asyncio.sleep(0.05)
            watcher.cancel()
            await asyncio.gather(watcher, return_exceptions=True)
            assert view == truth and len(truth) == 6
            return took

    took = asyncio.run(main())
    print(f"first lease after the leader was killed: {took:.2f}s")
    # The CLI, with the dead member's URL first.
    r = subprocess.run([NETWEFT, "--etcd-endpoints", endpoints, "--etcd-prefix", etcd_prefix,
                        "leases", "list", "--json"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert len(json.loads(r.stdout)) == 6
