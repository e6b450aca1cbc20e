"""The etcd service source against a real etcd: service records + pod records -> exactly the right
Services and endpoints, through changes, a restart of etcd, and compaction while it was away."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable

from netweft.daemon.etcd_process import EtcdProcess  # noqa: E402
from netweft.kv.backoff import Backoff  # noqa: E402
from netweft.kv.etcd import EtcdClient, EtcdSettings  # noqa: E402
from netweft.kv.memory import MemoryKV  # noqa: E402
from netweft.proxy.model import (  # noqa: E402
    Endpoint,
    EndpointPort,
    Protocol,
    Service,
    ServicePort,
    ServiceType,
)
from netweft.proxy.podrecords import delete_pod, put_pod, sync_pods  # noqa: E402
from netweft.proxy.records import (  # noqa: E402
    PodIndex,
    PodRecord,
    PortRecord,
    RecordError,
    ServiceRecord,
    endpoints_for,
    pods_dir,
    selects,
    service_key,
    services_dir,
)
from netweft.proxy.sources.etcd import EtcdSource  # noqa: E402
from support.etcd_scenarios import converge, random_changes, truth  # noqa: E402
from support.polling import eventually  # noqa: E402
from support.proxy_sink import RecordingSink  # noqa: E402


def web_record(**changes: object) -> ServiceRecord:
    base = dict(namespace="default", name="web", type=ServiceType.CLUSTER_IP,
                cluster_ip="10.96.0.10",
                ports=(PortRecord("http", Protocol.TCP, 80, 8080),
                       PortRecord("metrics", Protocol.TCP, 9090, "metrics")),
                selector={"app": "web"})
    base.update(changes)
    return ServiceRecord(**base)  # type: ignore[arg-type]


def pod(cid: str, ip: str, node: str = "node1", namespace: str = "default",
        labels: dict[str, str] | None = None, ready: bool = True,
        ports: dict[str, int] | None = None) -> PodRecord:
    return PodRecord(cid, namespace, f"pod-{cid}", node, (ip,), labels or {"app": "web"}, ready,
                     ports or {})


# --- pure ---------------------------------------------------------------------------------------


def test_records_round_trip_and_refuse_bad_fields() -> None:
    record = web_record(type=ServiceType.NODE_PORT, session_affinity=True, affinity_timeout=60,
                        external_ips=("192.0.2.9",), external_traffic_local=True)
    assert ServiceRecord.from_json(record.to_json()) == record
    p = pod("c1", "10.244.1.5", ports={"metrics": 9100})
    assert PodRecord.from_json(p.to_json()) == p
    for bad, field in [('{"namespace": "d", "name": "x", "clusterIP": "10.96.0.1"}', "ports"),
                       ('{"namespace": "d", "name": "x", "clusterIP": "x", "ports": [{"port": 1}]}',
                        "clusterIP"),
                       ('{"namespace": "d", "name": "x", "clusterIP": "10.96.0.1", '
                        '"ports": [{"port": 70000}]}', "ports[0].port"),
                       ('{"namespace": "d", "name": "x", "clusterIP": "10.96.0.1", '
                        '"ports": [{"port": 1, "protocol": "ICMP"}]}', "ports[0].protocol")]:
        try:
            ServiceRecord.from_json(bad)
        except RecordError as exc:
            assert str(exc).startswith(field), exc
        else:
            raise AssertionError(f"accepted {bad}")


def test_endpoints_select_by_labels_namespace_and_resolve_named_ports() -> None:
    pods = [
        pod("a", "10.244.1.5", ports={"metrics": 9100}),
        pod("b", "10.244.2.5", node="node2", ready=False),          # no named port "metrics"
        pod("c", "10.244.3.5", namespace="other"),                  # other namespace
        pod("d", "10.244.4.5", labels={"app": "db"}),               # not selected
        PodRecord("e", "default", "pod-e", "node1", ("fd00::5", "10.244.5.5"),
                  {"app": "web", "tier": "x"}),
    ]
    http = EndpointPort("http", 8080)
    assert endpoints_for(web_record(), pods) == (
        Endpoint("10.244.1.5", (http, EndpointPort("metrics", 9100)), "node1"),
        Endpoint("10.244.2.5", (http,), "node2", ready=False, serving=False),
        Endpoint("10.244.5.5", (http,), "node1"),
    )
    assert endpoints_for(web_record(selector={}), pods) == ()
    # A stale record for a reused address loses to the ready one, whatever the order.
    stale = pod("z", "10.244.1.5", ready=False)
    assert endpoints_for(web_record(), [stale, *pods]) == endpoints_for(web_record(), pods)
    assert endpoints_for(web_record(), [*pods, stale]) == endpoints_for(web_record(), pods)


def test_pod_index_selects_like_a_full_scan() -> None:
    rng = random.Random(3)
    index = PodIndex()
    for _ in range(2000):
        key = f"k{rng.randint(0, 60)}"
        if rng.random() < 0.3:
            index.remove(key)
            continue
        labels = {k: rng.choice("xyz") for k in rng.sample(["app", "tier", "ver"],
                                                           rng.randint(0, 3))}
        index.put(key, PodRecord(key, rng.choice(["a", "b"]), key, "n", ("10.244.0.1",), labels))
    for ns in ("a", "b"):
        for selector in ({}, {"app": "x"}, {"app": "y", "tier": "z"}, {"ver": "x", "app": "z"}):
            full = [p for p in index.pods.values()
                    if p.namespace == ns and selects(selector, p.labels)]
            assert sorted(index.selected(ns, selector), key=lambda p: p.container_id) == \
                sorted(full, key=lambda p: p.container_id)
    for key in list(index.pods):
        index.remove(key)
    assert index.by_label == {}


# --- against etcd -------------------------------------------------------------------------------


def run(endpoint: str, body: Callable[[EtcdClient, EtcdSettings], object]) -> None:
    settings = EtcdSettings.from_strings(endpoint)

    async def main() -> None:
        async with EtcdClient(settings, timeout=30) as etcd:
            await body(etcd, settings)  # type: ignore[misc]

    asyncio.run(main())


def test_list_then_watch_reaches_the_exact_model(etcd_endpoint: str, etcd_prefix: str) -> None:
    prefix = etcd_prefix + "-svc"

    async def body(etcd: EtcdClient, settings: EtcdSettings) -> None:
        web = web_record()
        await etcd.put(service_key(prefix, web.key), web.to_json())
        await put_pod(etcd, prefix, pod("a", "10.244.1.5", ports={"metrics": 9100}))
        await put_pod(etcd, prefix, pod("b", "10.244.2.5", node="node2"))
        await put_pod(etcd, prefix, pod("c", "10.244.3.5", namespace="other"))
        # A damaged record is ignored, not fatal.
        await etcd.put(f"{services_dir(prefix)}default/broken", "{not json")

        source = EtcdSource(settings, prefix, backoff=lambda: Backoff(0.05, 0.5))
        sink = RecordingSink()
        task = asyncio.create_task(source.run(sink))
        try:
            await eventually(lambda: sink.synced_count == 1, "synced")
            http = EndpointPort("http", 8080)
            assert sink.services == {web.key: Service(
                web.key, ServiceType.CLUSTER_IP, ("10.96.0.10",),
                (ServicePort("http", Protocol.TCP, 80, 8080),
                 ServicePort("metrics", Protocol.TCP, 9090, "metrics")))}
            assert sink.endpoints == {web.key: (
                Endpoint("10.244.1.5", (http, EndpointPort("metrics", 9100)), "node1"),
                Endpoint("10.244.2.5", (http,), "node2"))}

            # Changes: a pod goes, one comes, one gets relabelled, a second service appears
            # in another namespace, then the first changes its selector.
            await delete_pod(etcd, prefix, "node1", "a")
            await put_pod(etcd, prefix, pod("d", "10.244.1.9"))
            await put_pod(etcd, prefix, pod("b", "10.244.2.5", node="node2",
                                            labels={"app": "other"}))
            db = ServiceRecord("other", "db", ServiceType.NODE_PORT, "10.96.0.20",
                               (PortRecord("", Protocol.UDP, 53, 5353, 30053),), {"app": "web"})
            await etcd.put(service_key(prefix, db.key), db.to_json())
            expected = await truth(etcd, prefix)
            await eventually(lambda: (sink.services, sink.endpoints) == expected, "changes")
            assert [e.address for e in sink.endpoints[web.key]] == ["10.244.1.9"]
            assert sink.services[db.key].ports[0].node_port == 30053

            await etcd.put(service_key(prefix, web.key),
                           web_record(selector={"app": "other"}).to_json())
            await etcd.delete(service_key(prefix, db.key))
            expected = await truth(etcd, prefix)
            await eventually(lambda: (sink.services, sink.endpoints) == expected, "selector")
            assert [e.address for e in sink.endpoints[web.key]] == ["10.244.2.5"]
            assert db.key not in sink.services and db.key not in sink.endpoints
            assert source.lists == 1
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    run(etcd_endpoint, body)


def test_sync_pods_makes_a_nodes_records_exact(etcd_endpoint: str, etcd_prefix: str) -> None:
    prefix = etcd_prefix + "-svc"

    async def body(etcd: EtcdClient, settings: EtcdSettings) -> None:
        await put_pod(etcd, prefix, pod("old", "10.244.1.2"))
        await put_pod(etcd, prefix, pod("keep", "10.244.1.3"))
        await put_pod(etcd, prefix, pod("other-node", "10.244.2.3", node="node2"))
        wanted = [pod("keep", "10.244.1.3"), pod("new", "10.244.1.4")]
        assert await sync_pods(etcd, prefix, "node1", wanted) == 2
        assert await sync_pods(etcd, prefix, "node1", wanted) == 0
        kvs, _ = await etcd.get_prefix(pods_dir(prefix))
        assert sorted(kv.key.rsplit("/", 2)[-2] + "/" + kv.key.rsplit("/", 1)[-1]
                      for kv in kvs) == ["node1/keep", "node1/new", "node2/other-node"]
        assert await delete_pod(etcd, prefix, "node1", "new")
        assert not await delete_pod(etcd, prefix, "node1", "new")  # a repeated DEL

    run(etcd_endpoint, body)


def test_compaction_while_away_and_an_etcd_restart_end_in_the_exact_model(
        etcd_factory: Callable[[], EtcdProcess]) -> None:
    server = etcd_factory()
    prefix = "/nws-proxy"
    rng = random.Random(7)

    async def body(etcd: EtcdClient, settings: EtcdSettings) -> None:
        await random_changes(etcd, prefix, rng, 40)
        source = EtcdSource(settings, prefix, backoff=lambda: Backoff(0.05, 0.5))
        sink = RecordingSink()

        task = asyncio.create_task(source.run(sink))
        await eventually(lambda: sink.synced_count == 1, "synced")
        await converge(etcd, prefix, sink, "initial")
        await random_changes(etcd, prefix, rng, 40)
        await converge(etcd, prefix, sink, "watched")

        # The source goes away; things change; etcd compacts past what it saw.
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        seen = source.revision
        await random_changes(etcd, prefix, rng, 60)
        await etcd.compact(await etcd.current_revision())
        assert seen is not None and seen < await etcd.current_revision()
        task = asyncio.create_task(source.run(sink))
        await eventually(lambda: source.lists == 2, "re-listed after compaction")
        await converge(etcd, prefix, sink, "after compaction")

        # etcd restarts under a running source: it resumes (no re-list) and converges.
        await asyncio.to_thread(server.restart)
        await random_changes(etcd, prefix, rng, 40)
        await converge(etcd, prefix, sink, "after an etcd restart")
        assert source.lists == 2
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    run(server.endpoint, body)


def test_source_on_the_memory_store_converges_through_breaks_and_compaction() -> None:
    """The same list-then-watch contract, pure (MemoryKV): broken streams resume without a
    re-list, a compaction while away re-lists once, and the model is always exact."""
    kv = MemoryKV()
    prefix = "/nws-mem"
    rng = random.Random(11)

    async def main() -> None:
        await random_changes(kv, prefix, rng, 30)
        source = EtcdSource(EtcdSettings(), prefix, backoff=lambda: Backoff(0.01, 0.05), kv=kv)
        sink = RecordingSink()

        task = asyncio.create_task(source.run(sink))
        await eventually(lambda: sink.synced_count == 1, "synced")
        await converge(kv, prefix, sink, "initial")
        for _ in range(3):
            await random_changes(kv, prefix, rng, 20)
            kv.break_watches()
            await converge(kv, prefix, sink, "after a broken stream")
        assert source.lists == 1
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await random_changes(kv, prefix, rng, 30)
        await kv.compact(await kv.current_revision())
        task = asyncio.create_task(source.run(sink))
        await eventually(lambda: source.lists == 2, "re-listed after compaction")
        await converge(kv, prefix, sink, "after compaction")
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    asyncio.run(main())
