"""Pod records converge to the node's real attachments (issue 9 item 10): IPAM state + the
runtime's libcni cache -> records in a real etcd, at start, periodically, and after an outage.

The host veth names present on the node are passed in as a set (the daemon reads them over
netlink); everything else is real: the plugin's IPAM directory (written by NodeAllocator),
libcni-format cache files, etcd."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from ipaddress import IPv4Network
from pathlib import Path

from netweft.cni.plugin import PodInfo
from netweft.daemon.cnihost import CniHost
from netweft.daemon.etcd_process import EtcdProcess
from netweft.daemon.metrics import daemon_metrics
from netweft.daemon.podsync import (
    Attachment,
    PodSync,
    PodSyncSettings,
    cache_path,
    desired_records,
)
from netweft.ipam.allocator import IPRange, NodeAllocator
from netweft.kv.etcd import EtcdClient, EtcdSettings
from netweft.proxy.records import PodRecord

NET = "netweft"


def att(cid: str, ip: str, **args: str) -> Attachment:
    return Attachment(cid, "eth0", (ip,), args or None)


def test_desired_records_take_identity_from_cache_then_existing_record() -> None:
    cached = att("c1", "10.244.1.2", K8S_POD_NAMESPACE="shop", K8S_POD_NAME="web-1",
                 NETWEFT_POD_LABELS="app=web", NETWEFT_PORTS="http:8080")
    unknown = att("c2", "10.244.1.3")
    known = att("c3", "10.244.1.4")
    gone = att("c4", "10.244.1.5")  # IPAM still holds it but its link is gone
    existing = {"c3": PodRecord("c3", "db", "pg-0", "n1", ("10.244.9.9",), {"app": "pg"})}
    live = {a.host_veth for a in (cached, unknown, known)}
    got = {r.container_id: r for r in desired_records("n1", [gone, known, unknown, cached],
                                                      live, existing)}
    assert set(got) == {"c1", "c2", "c3"}
    assert (got["c1"].namespace, got["c1"].name, got["c1"].labels, got["c1"].ports) == (
        "shop", "web-1", {"app": "web"}, {"http": 8080})
    assert got["c3"].labels == {"app": "pg"} and got["c3"].ips == ("10.244.1.4",)
    assert got["c2"].name == "c2" and got["c2"].labels == {}
    assert got["c1"].host_veth == cached.host_veth


def write_cache(cache_dir: Path, cid: str, name: str, labels: str) -> None:
    path = Path(cache_path(str(cache_dir), NET, cid, "eth0"))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({
        "kind": "cniCacheV1", "containerId": cid, "ifName": "eth0", "networkName": NET,
        "cniArgs": [["IgnoreUnknown", "1"], ["K8S_POD_NAMESPACE", "default"],
                    ["K8S_POD_NAME", name], ["NETWEFT_POD_LABELS", labels]],
        "result": {"cniVersion": "1.0.0"}}))


def test_missing_records_are_written_and_stale_ones_removed(etcd_endpoint: str,
                                                            tmp_path: Path) -> None:
    data, cache = tmp_path / "data", tmp_path / "cache"
    alloc = NodeAllocator(str(data), NET, [IPRange(IPv4Network("10.244.1.0/24"))])
    live: set[str] = set()
    for i in range(5):  # five pods wired without the daemon (in-process fallback)
        cid = f"pod{i:02d}" + "0" * 10
        alloc.allocate(cid, "eth0")
        write_cache(cache, cid, f"web-{i}", "app=web")
        live.add(Attachment(cid, "eth0", ()).host_veth)
    prefix = f"/nwt-podsync-{time.monotonic_ns()}"

    async def scenario() -> tuple[dict[str, PodRecord], int]:
        async with EtcdClient(EtcdSettings((etcd_endpoint,), "/x")) as etcd:
            stale = PodRecord("deadbeef", "default", "old", "n1", ("10.244.1.99",),
                              host_veth="nwdeadbeef0000")
            await etcd.put(f"{prefix}/pods/n1/deadbeef", stale.to_json())

            async def links(names: list[str]) -> set[str]:
                return live & set(names)

            sync = PodSync(etcd, PodSyncSettings("n1", prefix, str(data), NET, str(cache)),
                           links)
            first = await sync.sync_once()
            again = await sync.sync_once()
            kvs, _ = await etcd.get_prefix(f"{prefix}/pods/n1/")
            return {r.container_id: r for r in map(lambda kv: PodRecord.from_json(kv.value),
                                                   kvs)}, first * 100 + again

    records, counts = asyncio.run(scenario())
    assert counts == 6 * 100 + 0  # 5 written + 1 removed, then nothing to do
    assert sorted(r.name for r in records.values()) == [f"web-{i}" for i in range(5)]
    assert all(r.labels == {"app": "web"} and len(r.ips) == 1 for r in records.values())


def test_writes_lost_in_an_etcd_outage_are_retried_until_etcd_is_back(
        etcd_factory: Callable[[], EtcdProcess], tmp_path: Path) -> None:
    server = etcd_factory()
    data, cache = tmp_path / "data", tmp_path / "cache"
    alloc = NodeAllocator(str(data), NET, [IPRange(IPv4Network("10.244.2.0/24"))])
    cid = "c0ffee" * 4
    ip = alloc.allocate(cid, "eth0")[0]
    write_cache(cache, cid, "api-0", "app=api")
    prefix = "/nwt-podsync-outage"

    async def scenario() -> tuple[float, PodRecord]:
        async with EtcdClient(EtcdSettings((server.endpoint,), "/x"), timeout=1.0) as etcd:
            host_veth = Attachment(cid, "eth0", ()).host_veth

            async def links(names: list[str]) -> set[str]:
                return {host_veth} & set(names)

            sync = PodSync(etcd, PodSyncSettings("n1", prefix, str(data), NET, str(cache),
                                                 interval=3600, retry=0.2), links)
            host = CniHost("/nonexistent.sock", asyncio.get_running_loop(), daemon_metrics(),
                           etcd=etcd, services_prefix=prefix, node_name="n1", sync=sync)
            await sync.sync_once()  # nothing yet
            runner = asyncio.create_task(sync.run())
            await asyncio.to_thread(server.stop)
            pod = PodInfo("ADD", NET, cid, "eth0", "/run/netns/p", "default", "api-0", "",
                          {"app": "api"}, (str(ip.ip) + "/24",), host_veth)
            await host._put(pod)  # fails: etcd is down
            await asyncio.to_thread(server.start)
            started = time.monotonic()
            while time.monotonic() - started < 30:
                kv = await etcd.get(f"{prefix}/pods/n1/{cid}")
                if kv is not None:
                    runner.cancel()
                    return time.monotonic() - started, PodRecord.from_json(kv.value)
                await asyncio.sleep(0.1)
            runner.cancel()
            raise AssertionError("the record never came back after the outage")

    took, record = asyncio.run(scenario())
    assert record.name == "api-0" and record.labels == {"app": "api"}
    print(f"record written {took:.2f}s after etcd came back")
