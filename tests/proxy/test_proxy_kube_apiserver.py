"""The proxy's Kubernetes source against the real control plane (kube-apiserver, etcd and the
EndpointSlice controller of kube-controller-manager, built by deploy/controlplane.sh): the source
must drive a recording sink to exactly the model the API's objects describe, for services of every
type, slices the real controller writes as pods come, go, turn unready and terminate, named ports,
watches that end, 410 Gone (from etcd compaction, and from the watch cache after a restart) and an
apiserver restart.

Faults the real apiserver cannot be made to produce stay in tests/proxy/test_proxy_kube_source.py on
the test server of our own (tests/support/kubeapi_server.py): a stream cut mid-event and HTTP 500s.
"""

from __future__ import annotations

import asyncio
import logging

import pytest
from netweft.daemon.controlplane import ControlPlane  # noqa: E402
from netweft.kv.etcd import EtcdClient, EtcdSettings  # noqa: E402
from netweft.proxy.model import (  # noqa: E402
    EndpointPort,
    Protocol,
    ServiceKey,
    ServiceType,
)
from support.kube_cluster import Cluster, converged, running_source, until  # noqa: E402


def run(coro_fn, plane: ControlPlane) -> None:  # type: ignore[no-untyped-def]
    """Run ``coro_fn(cluster)`` with an admin Cluster on ``plane``."""
    async def main() -> None:
        cluster = Cluster(plane)
        try:
            await coro_fn(cluster)
        finally:
            await cluster.close()

    asyncio.run(main())


def tcp(port: int, target: int | str, name: str = "") -> dict:
    entry: dict = {"port": port, "targetPort": target, "protocol": "TCP"}
    if name:
        entry["name"] = name
    return entry


def test_every_service_type_from_the_real_apiserver(control_plane: ControlPlane) -> None:
    async def scenario(cluster: Cluster) -> None:
        ns = await cluster.namespace("types")
        sel = {"app": "x"}
        await cluster.service(ns, "plain", {"selector": sel, "ports": [
            tcp(80, "http", "http"), {"name": "dns", "port": 53, "protocol": "UDP"}]})
        await cluster.service(ns, "np", {"type": "NodePort", "selector": sel,
                                         "ports": [tcp(80, 8080)]})
        await cluster.service(ns, "lb", {
            "type": "LoadBalancer", "selector": sel, "ports": [tcp(443, 8443, "https")],
            "externalTrafficPolicy": "Local", "loadBalancerSourceRanges": ["198.51.100.0/24"]})
        await cluster.patch_service(ns, "lb", {"status": {"loadBalancer": {"ingress": [
            {"ip": "203.0.113.7"}]}}}, status=True)
        await cluster.service(ns, "ext", {"selector": sel, "ports": [tcp(80, 80)],
                                          "externalIPs": ["192.0.2.50"],
                                          "internalTrafficPolicy": "Local",
                                          "sessionAffinity": "ClientIP",
                                          "sessionAffinityConfig": {"clientIP": {
                                              "timeoutSeconds": 60}}})
        await cluster.service(ns, "name", {"type": "ExternalName",
                                           "externalName": "example.org"})
        await cluster.service(ns, "headless", {"clusterIP": "None", "selector": sel,
                                                "ports": [tcp(80, 80)]})
        await cluster.service(ns, "other", {"selector": sel, "ports": [tcp(80, 80)]},
                              labels={"service.kubernetes.io/service-proxy-name": "other"})

        async with running_source(control_plane.admin_kubeconfig) as (source, sink):
            await converged(cluster, sink, "initial list")
            assert sink.synced_count == 1
            mine = {k.name: s for k, s in sink.services.items() if k.namespace == ns}
            assert set(mine) == {"plain", "np", "lb", "ext"}
            assert ServiceKey("default", "kubernetes") in sink.services
            assert mine["plain"].type == ServiceType.CLUSTER_IP
            assert [(p.name, p.protocol, p.port, p.target_port) for p in mine["plain"].ports] == [
                ("http", Protocol.TCP, 80, "http"), ("dns", Protocol.UDP, 53, 53)]
            node_port = mine["np"].ports[0].node_port
            assert node_port is not None and 30000 <= node_port <= 32767  # the apiserver chose it
            lb = mine["lb"]
            assert lb.type == ServiceType.LOAD_BALANCER and lb.external_traffic_local
            assert lb.load_balancer_ips == ("203.0.113.7",)
            assert lb.load_balancer_source_ranges == ("198.51.100.0/24",)
            assert lb.health_check_node_port and 30000 <= lb.health_check_node_port <= 32767
            ext = mine["ext"]
            assert ext.external_ips == ("192.0.2.50",) and ext.internal_traffic_local
            assert ext.session_affinity and ext.affinity_timeout == 60

            # Changes while watching: NodePort -> ClusterIP (the apiserver drops the node port),
            # a service handed to another proxy, a headless one deleted, one deleted.
            await cluster.patch_service(ns, "np", {"spec": {"type": "ClusterIP", "ports": [
                tcp(80, 8080)]}})
            await cluster.patch_service(ns, "plain", {"metadata": {"labels": {
                "service.kubernetes.io/service-proxy-name": "other"}}})
            await cluster.patch_service(ns, "other", {"metadata": {"labels": {
                "service.kubernetes.io/service-proxy-name": None}}})
            await cluster.delete_service(ns, "ext")
            await converged(cluster, sink, "watched changes")
            mine = {k.name: s for k, s in sink.services.items() if k.namespace == ns}
            assert set(mine) == {"np", "lb", "other"}
            assert mine["np"].type == ServiceType.CLUSTER_IP
            assert mine["np"].ports[0].node_port is None
            assert all(r.lists == 1 for r in source.reflectors)
        await cluster.delete_namespace(ns)

    run(scenario, control_plane)


def test_endpoint_slices_from_the_real_controller(control_plane: ControlPlane) -> None:
    async def scenario(cluster: Cluster) -> None:
        ns = await cluster.namespace("slices")
        for node in ("kube-node-a", "kube-node-b"):
            await cluster.node(node)
        labels = {"app": "web"}
        await cluster.service(ns, "web", {"selector": labels, "ports": [
            tcp(80, "http", "http"), {"name": "metrics", "port": 9100, "targetPort": 9100,
                                      "protocol": "TCP"}]})
        key = ServiceKey(ns, "web")

        async with running_source(control_plane.admin_kubeconfig) as (source, sink):
            await converged(cluster, sink, "service without pods")
            assert key not in sink.endpoints

            def addresses() -> dict[str, tuple[bool, bool, bool]]:
                return {e.address: (e.ready, e.serving, e.terminating)
                        for e in sink.endpoints.get(key, ())}

            # Scale up: three pods; the named port "http" is 8080 on two, 8081 on the third.
            for i, (node, http) in enumerate([("kube-node-a", 8080), ("kube-node-b", 8080),
                                              ("kube-node-b", 8081)]):
                await cluster.pod(ns, f"web-{i}", node, f"10.244.7.{10 + i}", labels,
                                  {"http": http, "metrics": 9100})
            await until(lambda: (len(addresses()) == 3), "three endpoints")
            await converged(cluster, sink, "three pods")
            assert addresses() == {f"10.244.7.{10 + i}": (True, True, False) for i in range(3)}
            by_ip = {e.address: e for e in sink.endpoints[key]}
            assert by_ip["10.244.7.10"].node == "kube-node-a"
            assert by_ip["10.244.7.12"].node == "kube-node-b"
            assert EndpointPort("http", 8080, Protocol.TCP) in by_ip["10.244.7.10"].ports
            assert EndpointPort("http", 8081, Protocol.TCP) in by_ip["10.244.7.12"].ports
            assert EndpointPort("metrics", 9100, Protocol.TCP) in by_ip["10.244.7.12"].ports

            # More pods, one of them not ready from the start.
            await cluster.pod(ns, "web-3", "kube-node-a", "10.244.7.13", labels,
                              {"http": 8080, "metrics": 9100})
            await cluster.pod(ns, "web-4", "kube-node-a", "10.244.7.14", labels,
                              {"http": 8080, "metrics": 9100}, ready=False)
            await until(lambda: (len(addresses()) == 5), "five endpoints")
            await converged(cluster, sink, "five pods")
            assert addresses()["10.244.7.14"] == (False, False, False)

            # Readiness flips both ways.
            await cluster.report(ns, "web-1", "10.244.7.11", ready=False)
            await cluster.report(ns, "web-4", "10.244.7.14", ready=True)
            await until(lambda: (addresses()["10.244.7.11"][0] is False
                                      and addresses()["10.244.7.14"][0] is True),
                        "readiness changes in the slices")
            await converged(cluster, sink, "readiness changed")
            assert addresses()["10.244.7.11"] == (False, False, False)
            assert addresses()["10.244.7.14"] == (True, True, False)

            # Terminating (deleted with a grace period, nobody finishes it): serving+terminating.
            await cluster.delete_pod(ns, "web-2", grace=600)
            await until(lambda: (addresses()["10.244.7.12"][2]), "terminating endpoint")
            await converged(cluster, sink, "terminating pod")
            assert addresses()["10.244.7.12"] == (False, True, True)

            # Scale down to nothing.
            for i in range(5):
                await cluster.delete_pod(ns, f"web-{i}", grace=0)
            await until(lambda: (key not in sink.endpoints), "no endpoints left")
            await converged(cluster, sink, "all pods gone")
            assert key not in sink.endpoints
            assert all(r.lists == 1 for r in source.reflectors)
        await cluster.delete_namespace(ns)

    run(scenario, control_plane)


def test_the_controller_manager_allocates_node_pod_cidrs(control_plane: ControlPlane) -> None:
    """The fixture's controller-manager runs node IPAM (--allocate-node-cidrs --cluster-cidr)."""
    async def scenario(cluster: Cluster) -> None:
        await cluster.node("kube-node-cidr")

        async def allocated() -> bool:
            return bool(await cluster.pod_cidr("kube-node-cidr"))

        await until(allocated, "a podCIDR on the new node")
        cidr = await cluster.pod_cidr("kube-node-cidr")
        assert cidr is not None and cidr.startswith("10.244.") and cidr.endswith("/24")

    run(scenario, control_plane)


def test_a_list_in_pages_reports_every_object_once(control_plane: ControlPlane) -> None:
    """The source lists in pages (``limit`` + ``continue``, LIST_CHUNK objects a page): with
    pages of 2 objects, 7 Services and their slices all arrive, each reported once (one full
    list per kind), and the model equals the API's."""
    async def scenario(cluster: Cluster) -> None:
        ns = await cluster.namespace("pages")
        for i in range(7):
            await cluster.service(ns, f"s{i}", {"ports": [tcp(80, 8080, "http")]})
            await cluster.create({  # no selector: no controller owns this slice
                "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                "metadata": {"name": f"s{i}-a", "namespace": ns,
                             "labels": {"kubernetes.io/service-name": f"s{i}"}},
                "addressType": "IPv4",
                "endpoints": [{"addresses": [f"10.244.9.{i + 1}"]}],
                "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}]})
        async with running_source(control_plane.admin_kubeconfig, list_chunk=2) as (
                source, sink):
            await converged(cluster, sink, "initial list in pages of 2")
            assert all(r.lists == 1 for r in source.reflectors)
            mine = {k.name for k in sink.services if k.namespace == ns}
            assert mine == {f"s{i}" for i in range(7)}
            assert all(len(sink.endpoints[ServiceKey(ns, f"s{i}")]) == 1 for i in range(7))
        await cluster.delete_namespace(ns)

    run(scenario, control_plane)


def test_watches_that_end_are_renewed_without_a_relist(control_plane: ControlPlane) -> None:
    async def scenario(cluster: Cluster) -> None:
        ns = await cluster.namespace("renew")
        async with running_source(control_plane.admin_kubeconfig, watch_timeout=1) as (
                source, sink):
            await converged(cluster, sink, "initial list")
            await asyncio.sleep(2.5)  # the apiserver ends each watch after timeoutSeconds=1
            await cluster.service(ns, "late", {"ports": [tcp(80, 80)]})
            await converged(cluster, sink, "a change after renewed watches")
            assert all(r.lists == 1 for r in source.reflectors)
        await cluster.delete_namespace(ns)

    run(scenario, control_plane)


async def _advance_and_compact(plane: ControlPlane, writes: int = 5) -> int:
    """Move etcd's revision past everything the source has seen (keys outside /registry), then
    compact all history up to there; returns the compacted revision."""
    assert plane.etcd is not None
    async with EtcdClient(EtcdSettings(endpoints=(plane.etcd.endpoint,))) as client:
        for i in range(writes):
            await client.put(f"/netweft-test/advance/{i}", str(i))
        revision = await client.current_revision()
        await client.compact(revision)
        return revision


def test_watch_from_a_compacted_revision_relists(
        control_plane_factory, caplog: pytest.LogCaptureFixture) -> None:  # type: ignore[no-untyped-def]
    """Without the watch cache every watch goes to etcd: after compaction a watch renewed from
    the source's last resourceVersion gets 410 Gone as an ERROR event, and the source lists
    again and ends in the exact model."""
    plane = control_plane_factory(controller_manager=False,
                                  apiserver_args=("--watch-cache=false",))
    caplog.set_level(logging.INFO, logger="netweft.proxy.kube")

    async def scenario(cluster: Cluster) -> None:
        ns = await cluster.namespace("gone")
        await cluster.service(ns, "before", {"ports": [tcp(80, 80)]})
        async with running_source(plane.admin_kubeconfig, watch_timeout=1) as (source, sink):
            await converged(cluster, sink, "initial list")
            await _advance_and_compact(plane)
            await until(lambda: (all(r.lists >= 2 for r in source.reflectors)),
                        "both reflectors listed again after 410")
            await cluster.service(ns, "after", {"ports": [tcp(81, 81)]})
            await converged(cluster, sink, "after the relist")
            assert sink.synced_count >= 2
        assert "is gone (410" in caplog.text

    run(scenario, plane)


def test_apiserver_restart_with_compacted_history(
        control_plane_factory, caplog: pytest.LogCaptureFixture) -> None:  # type: ignore[no-untyped-def]
    """The apiserver goes away (the source retries with backoff and reports no deletion), etcd
    moves on and is compacted meanwhile, the apiserver comes back on the same port with a fresh
    watch cache: the source's watch from its old resourceVersion gets 410, it lists again and
    follows changes made after the restart."""
    plane = control_plane_factory(controller_manager=False)
    caplog.set_level(logging.INFO, logger="netweft.proxy.kube")

    async def scenario(cluster: Cluster) -> None:
        ns = await cluster.namespace("restart")
        await cluster.service(ns, "kept", {"ports": [tcp(80, 80)]})
        async with running_source(plane.admin_kubeconfig) as (source, sink):
            await converged(cluster, sink, "initial list")
            before = dict(sink.services)
            await asyncio.to_thread(plane.stop_apiserver)
            await asyncio.sleep(2)  # the source's watches break; it retries
            await _advance_and_compact(plane)
            assert sink.services == before  # an outage is not a deletion
            await asyncio.to_thread(plane.start_apiserver)
            await cluster.service(ns, "new", {"ports": [tcp(81, 81)]})
            await cluster.delete_service(ns, "kept")
            await converged(cluster, sink, "after the restart", deadline=90)
            assert all(r.lists >= 2 for r in source.reflectors)
        assert "is gone (410" in caplog.text

    run(scenario, plane)
