"""The Kubernetes source's converters, and its handling of faults the real kube-apiserver
cannot be made to produce, over real HTTP against tests/support/kubeapi_server.py (the real
list/watch wire format) through lightkube unchanged:

- a watch stream cut mid-event (half a JSON line, then a reset) — the real apiserver only ever
  ends a stream between events, also when it is stopped;
- HTTP 500 answers to lists and watches;
- 410 Gone as an HTTP status on the watch request: the real apiserver (v1.37, with and without
  its watch cache) answers an expired resourceVersion with an ERROR event, which
  tests/proxy/test_proxy_kube_apiserver.py covers against it;
- all of these at random between random changes.

Everything the real apiserver can do (every Service type, EndpointSlices from the real controller,
watches that end, compaction, restarts) is tested against it in
tests/proxy/test_proxy_kube_apiserver.py.
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from netweft.proxy.model import (  # noqa: E402
    Endpoint,
    EndpointPort,
    Protocol,
    Service,
    ServiceKey,
    ServicePort,
    ServiceType,
)
from netweft.proxy.sources.kube import KubeSource  # noqa: E402
from netweft.proxy.sources.kubeconvert import (  # noqa: E402
    endpoints_from_slice,
    merge_endpoints,
    service_from_kube,
    slice_service,
)
from support import kubeapi_server as kapi  # noqa: E402
from support.kube_scenarios import (  # noqa: E402
    converged,
    ep,
    populate,
    random_changes_with_faults,
    run_with_source,
    tcp,
)
from support.polling import eventually  # noqa: E402
from support.proxy_sink import RecordingSink  # noqa: E402

# --- the converters, by hand ------------------------------------------------------------------


def test_clusterip_service_with_named_and_numeric_target_ports() -> None:
    obj = kapi.service("web", "10.96.0.10", [tcp(80, 8080, "http"), tcp(443, "https", "tls"),
                                             {"port": 53, "protocol": "UDP", "name": "dns"}])
    assert service_from_kube(obj) == Service(
        key=ServiceKey("default", "web"), type=ServiceType.CLUSTER_IP, cluster_ips=("10.96.0.10",),
        ports=(ServicePort("http", Protocol.TCP, 80, 8080), ServicePort("tls", Protocol.TCP, 443,
               "https"), ServicePort("dns", Protocol.UDP, 53, 53)))


def test_nodeport_loadbalancer_affinity_and_policies() -> None:
    obj = kapi.service(
        "lb", "10.96.0.20", [tcp(80, 8080, "http", node_port=30080)], namespace="shop",
        type="LoadBalancer", externalIPs=["192.0.2.50", "2001:db8::1"],
        sessionAffinity="ClientIP", sessionAffinityConfig={"clientIP": {"timeoutSeconds": 60}},
        externalTrafficPolicy="Local", internalTrafficPolicy="Local", healthCheckNodePort=31000,
        loadBalancerSourceRanges=["198.51.100.0/24"])
    obj["spec"]["clusterIPs"] = ["10.96.0.20", "fd00::20"]
    obj["status"] = {"loadBalancer": {"ingress": [{"ip": "203.0.113.7"}, {"hostname": "x"}]}}
    assert service_from_kube(obj) == Service(
        key=ServiceKey("shop", "lb"), type=ServiceType.LOAD_BALANCER, cluster_ips=("10.96.0.20",),
        ports=(ServicePort("http", Protocol.TCP, 80, 8080, 30080),),
        external_ips=("192.0.2.50",), load_balancer_ips=("203.0.113.7",),
        load_balancer_source_ranges=("198.51.100.0/24",), session_affinity=True,
        affinity_timeout=60, external_traffic_local=True, internal_traffic_local=True,
        health_check_node_port=31000)
    # A ClusterIP service never carries node ports, even when the object still has them.
    plain = kapi.service("p", "10.96.0.21", [tcp(80, node_port=30001)])
    assert service_from_kube(plain).ports == (ServicePort("", Protocol.TCP, 80, 80),)


def test_services_that_are_not_proxied() -> None:
    ports = [tcp(80)]
    assert service_from_kube(kapi.service("h", "None", ports)) is None
    assert service_from_kube(kapi.service("e", "", ports)) is None
    assert service_from_kube(kapi.service("x", "", ports, type="ExternalName",
                                          externalName="example.org")) is None
    assert service_from_kube(kapi.service(
        "o", "10.96.0.3", ports, labels={"service.kubernetes.io/service-proxy-name": "other"}
    )) is None
    assert service_from_kube(kapi.service(
        "l", "10.96.0.4", ports, labels={"service.kubernetes.io/headless": ""})) is None
    assert service_from_kube(kapi.service("v6", "fd00::1", ports)) is None


def test_slice_conditions_ports_and_merge() -> None:
    ports = [{"name": "http", "port": 8080, "protocol": "TCP"}]
    obj = kapi.endpoint_slice("web-1", "web", [
        ep("10.244.1.5"),
        {"addresses": ["10.244.2.5"], "nodeName": "node2"},                   # no conditions
        ep("10.244.3.5", "node3", ready=False, serving=True, terminating=True),
        ep("10.244.4.5", "node4", ready=False),                              # serving follows
    ], ports)
    http = (EndpointPort("http", 8080, Protocol.TCP),)
    assert slice_service(obj) == ServiceKey("default", "web")
    assert endpoints_from_slice(obj) == (
        Endpoint("10.244.1.5", http, "node1"),
        Endpoint("10.244.2.5", http, "node2"),
        Endpoint("10.244.3.5", http, "node3", ready=False, serving=True, terminating=True),
        Endpoint("10.244.4.5", http, "node4", ready=False, serving=False),
    )
    assert endpoints_from_slice(kapi.endpoint_slice(
        "web-v6", "web", [ep("fd00::5")], ports, address_type="IPv6")) == ()
    other = kapi.endpoint_slice("web-2", "web", [ep("10.244.1.5"), ep("10.244.0.9")],
                                [{"name": "metrics", "port": 9090, "protocol": "TCP"}])
    merged = merge_endpoints([endpoints_from_slice(obj), endpoints_from_slice(other)])
    assert [e.address for e in merged] == ["10.244.0.9", "10.244.1.5", "10.244.2.5",
                                           "10.244.3.5", "10.244.4.5"]
    assert merged[1].ports == (EndpointPort("http", 8080), EndpointPort("metrics", 9090))


# --- over HTTP --------------------------------------------------------------------------------


def test_dropped_connections_resume_without_a_relist(tmp_path: Path) -> None:
    async def scenario(server: kapi.KubeApiServer, source: KubeSource,
                       sink: RecordingSink) -> None:
        await converged(server, sink, "initial list")
        await server.wait_watches(2)
        for round_ in range(3):
            assert server.drop_watches() == 2
            # While the source is cut off, things change.
            server.apply(kapi.service(f"new{round_}", f"10.96.1.{round_ + 1}", [tcp(80)]))
            server.apply(kapi.endpoint_slice(f"new{round_}-a", f"new{round_}",
                                             [ep(f"10.244.9.{round_ + 1}")], [tcp(80)]))
            server.delete("Service", "default", "web") if round_ == 1 else None
            await converged(server, sink, f"after drop {round_}")
            await server.wait_watches(2)
        assert all(r.lists == 1 for r in source.reflectors), "a dropped watch must resume"
        versions = [int(q["resourceVersion"]) for q in server.watch_requests(kapi.SERVICES)]
        assert len(versions) == 4 and versions == sorted(versions) and versions[-1] > 1009
        assert sink.synced_count == 1

    run_with_source(scenario, tmp_path, setup=populate)


def test_gone_as_event_and_as_http_status_relists(tmp_path: Path) -> None:
    async def scenario(server: kapi.KubeApiServer, source: KubeSource,
                       sink: RecordingSink) -> None:
        await converged(server, sink, "initial list")
        await server.wait_watches(2)

        # The watch cache drops the watchers: ERROR event with a 410 Status.
        server.apply(kapi.service("extra", "10.96.2.1", [tcp(80)]))
        server.compact()
        server.delete("Service", "default", "extra")
        server.delete("EndpointSlice", "default", "web-b")
        server.expire_watches()
        await eventually(lambda: all(r.lists == 2 for r in source.reflectors), "relisted")
        await converged(server, sink, "after the ERROR 410 event")
        assert sink.synced_count >= 2

        # History compacted while the source is disconnected; reconnects get HTTP 410.
        await server.wait_watches(2)
        server.gone_as_http = True
        server.drop_watches()
        server.apply(kapi.service("web", "10.96.0.10", [tcp(80, 8081, "http")]))
        server.apply(kapi.endpoint_slice("late", "web", [ep("10.244.7.7", "node7")],
                                         [{"name": "http", "port": 8081, "protocol": "TCP"}]))
        server.compact()
        server.apply(kapi.service("after", "10.96.2.2", [tcp(81)]))
        await converged(server, sink, "after HTTP 410")
        assert server.gone_sent["http"] == 2
        assert all(r.lists == 3 for r in source.reflectors)
        assert server.gone_sent["event"] >= 2

    run_with_source(scenario, tmp_path, setup=populate)


def test_server_errors_back_off_and_recover(tmp_path: Path) -> None:
    def setup(server: kapi.KubeApiServer) -> None:
        populate(server)
        server.fail_next(4)  # the first lists fail with HTTP 500

    async def scenario(server: kapi.KubeApiServer, source: KubeSource,
                       sink: RecordingSink) -> None:
        await converged(server, sink, "recovered from 500s")
        await eventually(lambda: sink.synced_count == 1, "synced")
        await server.wait_watches(2)
        server.fail_next(2)
        server.drop_watches()
        server.apply(kapi.service("x", "10.96.3.3", [tcp(80)]))
        await converged(server, sink, "recovered from 500s on re-watch")

    run_with_source(scenario, tmp_path, setup=setup)


@pytest.mark.parametrize("seed", [5, 11, 23])
def test_random_changes_and_faults_end_in_the_exact_model(tmp_path: Path, seed: int) -> None:
    rng = random.Random(seed)

    async def scenario(server: kapi.KubeApiServer, source: KubeSource,
                       sink: RecordingSink) -> None:
        await converged(server, sink, "initial list")
        await random_changes_with_faults(server, rng, 240)
        await converged(server, sink, "after 240 random changes and faults")
        assert sum(r.lists for r in source.reflectors) > 2  # the faults did force relists

    run_with_source(scenario, tmp_path, setup=populate)
