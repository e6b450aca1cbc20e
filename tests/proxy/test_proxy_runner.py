"""Change tracking, rate-limited syncing, conntrack cleanup decisions, health-check and status
endpoints. The tracker/runner tests use an in-memory source and a recording dataplane (pure
logic); the HTTP tests serve from inside a namespace this test creates."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import Callable, Mapping

import pytest
from netweft.proxy.conntrack import FlowFilter, stale_udp_flows
from netweft.proxy.dataplane import SyncResult
from netweft.proxy.metrics import ProxyMetrics
from netweft.proxy.model import (
    Endpoint,
    EndpointPort,
    Protocol,
    Service,
    ServiceKey,
    ServicePort,
    ServiceType,
)
from netweft.proxy.plan import NodeContext, ServicePlan, plan_service
from netweft.proxy.runner import ProxyRunner, RunnerOptions
from netweft.proxy.sources.base import ChangeSink
from netweft.proxy.tracker import ChangeTracker
from support.imports import loaded_by

NODE = NodeContext("n1", ("192.0.2.11",), ("10.244.0.0/16",))
KEY = ServiceKey("ns", "web")


def web(**kw: object) -> Service:
    return Service(KEY, ServiceType.CLUSTER_IP, ("10.96.0.10",),
                   (ServicePort("http", Protocol.TCP, 80, 8080),), **kw)  # type: ignore[arg-type]


def ep(ip: str, node: str = "n1", proto: Protocol = Protocol.TCP, **kw: bool) -> Endpoint:
    return Endpoint(ip, (EndpointPort("http", 8080, proto),), node=node, **kw)


# -- tracker -------------------------------------------------------------------------------------

def test_tracker_marks_only_real_changes() -> None:
    wakes: list[int] = []
    t = ChangeTracker(on_change=lambda: wakes.append(1))
    t.service_updated(web())
    t.endpoints_updated(KEY, (ep("10.244.1.2"), ep("10.244.1.3")))
    assert not t.pending                       # nothing before the initial list is complete
    t.synced()
    batch = t.take()
    assert batch.full and batch.keys == {KEY}
    t.service_updated(web())                   # same object again
    t.endpoints_updated(KEY, (ep("10.244.1.3"), ep("10.244.1.2")))   # same set, other order
    assert not t.pending
    t.endpoints_updated(ServiceKey("ns", "orphan"), (ep("10.244.1.9"),))  # no Service yet
    assert not t.pending
    t.service_updated(web(session_affinity=True))
    t.service_deleted(ServiceKey("ns", "never-seen"))
    batch = t.take()
    assert not batch.full and batch.keys == {KEY}
    t.service_deleted(KEY)
    assert t.take().keys == {KEY} and KEY not in t.services


class RecordingDataplane:
    mode = "nftables"

    def __init__(self) -> None:
        self.calls: list[tuple[dict[ServiceKey, ServicePlan | None], bool]] = []
        self.fail_next = False

    def sync(self, plans: Mapping[ServiceKey, ServicePlan | None], full: bool) -> SyncResult:
        if self.fail_next:
            self.fail_next = False
            raise RuntimeError("kernel said no")
        self.calls.append((dict(plans), full))
        return SyncResult(full, 1, 1, len(plans), 0)

    def cleanup(self) -> None:
        pass

    async def watch(self, on_foreign_change: Callable[[], None]) -> None:
        self.on_foreign_change = on_foreign_change


class ScriptedSource:
    """Reports a list, then a burst of changes, then waits."""

    def __init__(self, script: Callable[[ChangeSink], object]) -> None:
        self.script = script

    async def run(self, sink: ChangeSink) -> None:
        await self.script(sink)  # type: ignore[misc]
        await asyncio.Event().wait()


def test_runner_full_sync_then_coalesced_incremental_syncs() -> None:
    dp = RecordingDataplane()
    runner = ProxyRunner(NODE, dp, None, RunnerOptions(min_sync_interval=0.2, status_port=None,
                                                       health_check_ports=False))
    others = [ServiceKey("ns", f"s{i}") for i in range(3)]

    async def script(sink: ChangeSink) -> None:
        sink.service_updated(web())
        sink.endpoints_updated(KEY, (ep("10.244.1.2"),))
        for k in others:
            sink.service_updated(Service(k, ServiceType.CLUSTER_IP, ("10.96.1.1",),
                                         (ServicePort("", Protocol.TCP, 80, 80),)))
        sink.synced()
        await runner.synced_event.wait()
        runner.synced_event.clear()
        for i in range(50):                    # a burst: one sync, not fifty
            sink.endpoints_updated(KEY, (ep(f"10.244.1.{i + 3}"),))
        sink.service_deleted(others[0])
        await runner.synced_event.wait()

    async def main() -> None:
        task = asyncio.create_task(runner.run(ScriptedSource(script)))
        await asyncio.wait_for(runner.synced_event.wait(), 10)
        while len(dp.calls) < 2:
            await asyncio.sleep(0.05)
        task.cancel()

    asyncio.run(main())
    (first, full1), (second, full2) = dp.calls[:2]
    assert full1 and set(first) == {KEY, *others}
    assert not full2 and set(second) == {KEY, others[0]} and second[others[0]] is None
    plan = second[KEY]
    assert plan is not None and [str(b) for b in plan.frontends[0].endpoints] == [
        "10.244.1.52:8080"]
    assert runner.metrics.syncs == 2


def test_runner_full_resync_now_and_then() -> None:
    dp = RecordingDataplane()
    runner = ProxyRunner(NODE, dp, None, RunnerOptions(
        min_sync_interval=0.0, status_port=None, health_check_ports=False,
        full_resync_interval=0.2))

    async def script(sink: ChangeSink) -> None:
        sink.service_updated(web())
        sink.synced()

    async def main() -> None:
        task = asyncio.create_task(runner.run(ScriptedSource(script)))
        deadline = asyncio.get_running_loop().time() + 10
        while sum(1 for _, full in dp.calls if full) < 3:
            assert asyncio.get_running_loop().time() < deadline
            await asyncio.sleep(0.05)
        task.cancel()

    asyncio.run(main())
    assert all(full for _, full in dp.calls[:3]) and set(dp.calls[1][0]) == {KEY}


def test_rules_changed_by_others_make_a_full_sync_at_once() -> None:
    """The dataplane's watch reports a foreign change: the next sync is full and does not wait
    for the rate limit (10 s here)."""
    dp = RecordingDataplane()
    runner = ProxyRunner(NODE, dp, None, RunnerOptions(
        min_sync_interval=10.0, status_port=None, health_check_ports=False))

    async def script(sink: ChangeSink) -> None:
        sink.service_updated(web())
        sink.synced()

    async def main() -> None:
        task = asyncio.create_task(runner.run(ScriptedSource(script)))
        await asyncio.wait_for(runner.synced_event.wait(), 10)
        runner.synced_event.clear()
        dp.on_foreign_change()
        await asyncio.wait_for(runner.synced_event.wait(), 5)   # not the 10 s rate limit
        task.cancel()

    asyncio.run(main())
    assert [full for _, full in dp.calls] == [True, True] and set(dp.calls[1][0]) == {KEY}
    assert runner.metrics.repairs == 1


def test_runner_failed_sync_requests_a_full_resync() -> None:
    dp = RecordingDataplane()
    runner = ProxyRunner(NODE, dp, None, RunnerOptions(status_port=None,
                                                       health_check_ports=False))
    runner.tracker.service_updated(web())
    runner.tracker.synced()
    runner.sync_once()
    runner.tracker.endpoints_updated(KEY, (ep("10.244.1.2"),))
    dp.fail_next = True
    with pytest.raises(RuntimeError):
        runner.sync_once()
    assert runner.metrics.sync_errors == 1
    runner.sync_once()
    assert dp.calls[-1][1] is True             # the retry is a full sync
    assert runner.plans[KEY].frontends[0].endpoints


# -- conntrack -----------------------------------------------------------------------------------

def _plan(eps: tuple[Endpoint, ...], **kw: object) -> ServicePlan:
    svc = Service(KEY, ServiceType.NODE_PORT, ("10.96.0.53",),
                  (ServicePort("http", Protocol.UDP, 53, 8080, 30053),), **kw)  # type: ignore[arg-type]
    return plan_service(svc, eps, NODE)


def test_stale_udp_flows() -> None:
    a, b = ep("10.244.1.2", proto=Protocol.UDP), ep("10.244.1.3", proto=Protocol.UDP)
    assert stale_udp_flows(_plan((a, b)), _plan((a, b))) == []
    assert stale_udp_flows(_plan((a, b)), _plan((b,))) == [
        FlowFilter(53, "10.96.0.53", "10.244.1.2"), FlowFilter(30053, None, "10.244.1.2")]
    # from "no endpoints" (rejecting) to serving: clear what the reject left behind
    assert stale_udp_flows(_plan(()), _plan((a,))) == [
        FlowFilter(53, "10.96.0.53", None), FlowFilter(30053, None, None)]
    assert stale_udp_flows(_plan((a,)), None) == [
        FlowFilter(53, "10.96.0.53", "10.244.1.2"), FlowFilter(30053, None, "10.244.1.2")]
    assert FlowFilter(30053, None, "10.244.1.2").args() == [
        "-p", "udp", "--orig-port-dst", "30053", "--dst-nat", "10.244.1.2"]


def test_metrics_text() -> None:
    m = ProxyMetrics()
    m.sync_duration.observe(0.003)
    m.sync_errors = 2
    text = m.render()
    assert 'netweft_proxy_sync_duration_seconds_bucket{le="0.005"} 1' in text
    assert 'netweft_proxy_sync_errors_total{mode="nftables"} 2' in text


def test_metrics_histogram_counts_a_value_on_a_bound_in_that_bucket_and_sums() -> None:
    m = ProxyMetrics()
    for seconds in (0.005, 0.0051, 30.0):
        m.full_sync_duration.observe(seconds)
    text = m.render()
    name = "netweft_proxy_full_sync_duration_seconds"
    assert f'{name}_bucket{{le="0.0025"}} 0.0' in text
    assert f'{name}_bucket{{le="0.005"}} 1.0' in text
    assert f'{name}_bucket{{le="0.01"}} 2.0' in text
    assert f'{name}_bucket{{le="10.0"}} 2.0' in text
    assert f'{name}_bucket{{le="+Inf"}} 3.0' in text
    assert f"{name}_count 3.0" in text and f"{name}_sum 30.0101" in text


def test_prometheus_client_is_imported_only_when_metrics_are_rendered() -> None:
    """The proxy pays for prometheus_client at the first scrape, not before its first sync."""
    code = ("from netweft.proxy.runner import ProxyRunner\n"
            "from netweft.proxy.metrics import ProxyMetrics\n"
            "m = ProxyMetrics(); m.sync_duration.observe(0.1)\n")
    assert loaded_by(code, ("prometheus_client",)) == []
    assert loaded_by(code + "m.render()\n", ("prometheus_client",)) != []


# -- HTTP endpoints, served inside a namespace ---------------------------------------------------

HTTP_SCRIPT = r"""
import asyncio, json, sys, urllib.request, urllib.error
from netweft.proxy.healthcheck import HealthCheckPorts, StatusHandler, start_http
from netweft.proxy.metrics import ProxyMetrics
from netweft.proxy.model import *
from netweft.proxy.plan import NodeContext, plan_service

node = NodeContext("n1", (), ())
svc = Service(ServiceKey("ns", "web"), ServiceType.NODE_PORT, ("10.96.0.10",),
              (ServicePort("http", Protocol.TCP, 80, 8080, 30080),),
              external_traffic_local=True, health_check_node_port=32100)
local = Endpoint("10.244.1.2", (EndpointPort("http", 8080),), node="n1")
remote = Endpoint("10.244.2.2", (EndpointPort("http", 8080),), node="n2")

def get(port, path="/"):
    try:
        r = urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5)
        return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()

async def main():
    ports = HealthCheckPorts("127.0.0.1")
    out = {}
    await ports.update({svc.key: plan_service(svc, (local, remote), node)})
    out["local"] = await asyncio.to_thread(get, 32100)
    await ports.update({svc.key: plan_service(svc, (remote,), node)})
    out["remote"] = await asyncio.to_thread(get, 32100)
    await ports.update({})
    try:
        await asyncio.to_thread(get, 32100)
        out["closed"] = False
    except OSError:
        out["closed"] = True
    status = StatusHandler(ProxyMetrics().render)
    server = await start_http("127.0.0.1", 10256, status)
    out["healthz_before"] = (await asyncio.to_thread(get, 10256, "/healthz"))[0]
    status.last_ok = 1.0
    out["healthz_after"] = (await asyncio.to_thread(get, 10256, "/healthz"))[0]
    out["metrics"] = await asyncio.to_thread(get, 10256, "/metrics")
    server.close()
    print(json.dumps(out))

asyncio.run(main())
"""


def test_health_check_node_port_and_status(netns_factory: Callable[[str], str]) -> None:
    ns = netns_factory("phttp")
    proc = subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-c", HTTP_SCRIPT],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    status, body = out["local"]
    assert status == 200 and json.loads(body) == {
        "service": {"namespace": "ns", "name": "web"}, "localEndpoints": 1,
        "serviceProxyHealthy": True}
    status, body = out["remote"]
    assert status == 503 and json.loads(body)["localEndpoints"] == 0
    assert out["closed"] is True
    assert out["healthz_before"] == 503 and out["healthz_after"] == 200
    assert out["metrics"][0] == 200 and "netweft_proxy_rules" in out["metrics"][1]


def test_node_address_change_is_followed_by_a_full_sync_with_the_new_addresses() -> None:
    """Issue 9 item 5 (proxy half): the NodePort addresses found at start are followed while
    running; a changed address makes a full sync at once, rendered with the new addresses
    (before, they were read once and NodePorts stayed on the old address)."""
    dp = RecordingDataplane()
    nodes: list[NodeContext] = []
    dp.set_node = nodes.append  # type: ignore[attr-defined]
    seen = iter([("192.0.2.11",), ("192.0.2.11",), ("192.0.2.99",)])
    runner = ProxyRunner(NODE, dp, None, RunnerOptions(
        min_sync_interval=10.0, status_port=None, health_check_ports=False,
        node_ips=lambda: next(seen, ("192.0.2.99",)), node_ip_interval=0.05))

    async def script(sink: ChangeSink) -> None:
        sink.service_updated(web())
        sink.synced()

    async def main() -> None:
        task = asyncio.create_task(runner.run(ScriptedSource(script)))
        deadline = asyncio.get_running_loop().time() + 10
        while len(dp.calls) < 2:                # not the 10 s rate limit
            assert asyncio.get_running_loop().time() < deadline
            await asyncio.sleep(0.02)
        task.cancel()

    asyncio.run(main())
    assert [full for _, full in dp.calls] == [True, True]
    assert [n.node_ips for n in nodes] == [("192.0.2.99",)]
    assert runner.node.node_ips == ("192.0.2.99",)
    assert runner.set_node_ips(("192.0.2.99",)) is False   # unchanged: nothing to do
    assert runner.set_node_ips(()) is False                 # none found: keep the last known


def test_nftables_full_load_after_set_node_carries_the_new_node_ports_addresses() -> None:
    from netweft.proxy.dataplane import NftablesDataplane
    dp = NftablesDataplane(NODE, applier=object())  # type: ignore[arg-type]  # never applied
    dp.set_node(NodeContext("n1", ("192.0.2.99",), ("10.244.0.0/16",)))
    text = dp.state.full_transaction(sort=True).render()
    assert "192.0.2.99" in text and "192.0.2.11" not in text
