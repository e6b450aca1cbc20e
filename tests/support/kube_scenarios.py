"""Shared pieces of the Kubernetes source tests: object builders, the model the test API server's
objects mean, a runner for source + server, and random changes with faults."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path
from typing import Any

from netweft.kv.backoff import Backoff
from netweft.proxy.model import Endpoint, Service, ServiceKey
from netweft.proxy.sources.base import ChangeSink
from netweft.proxy.sources.kube import KubeSource
from netweft.proxy.sources.kubeconvert import (
    endpoints_from_slice,
    merge_endpoints,
    service_from_kube,
    slice_service,
)

from support import kubeapi_server as kapi
from support.polling import eventually
from support.proxy_sink import RecordingSink

Model = tuple[dict[ServiceKey, Service], dict[ServiceKey, tuple[Endpoint, ...]]]


def expected_model(server: kapi.KubeApiServer) -> Model:
    """What the test server's objects mean, computed straight from its store."""
    return model_from_objects(server.objects[kapi.SERVICES.path].values(),
                              (obj for _, obj in sorted(
                                  server.objects[kapi.ENDPOINT_SLICES.path].items())))


def model_from_objects(services: Iterable[dict], slices: Iterable[dict]) -> Model:
    """What Service and EndpointSlice objects (as the API serves them) mean to the proxy."""
    model: dict[ServiceKey, Service] = {}
    for obj in services:
        svc = service_from_kube(obj)
        if svc is not None:
            model[svc.key] = svc
    groups: dict[ServiceKey, list[tuple[Endpoint, ...]]] = {}
    for obj in slices:
        owner = slice_service(obj)
        if owner is not None:
            groups.setdefault(owner, []).append(endpoints_from_slice(obj))
    endpoints = {k: merged for k, g in groups.items() if (merged := merge_endpoints(g))}
    return model, endpoints


def model_of(sink: RecordingSink) -> Model:
    return sink.services, sink.endpoints


def run_with_source(
    scenario: Callable[[kapi.KubeApiServer, KubeSource, Any], Awaitable[None]],
    tmp_path: Path, setup: Callable[[kapi.KubeApiServer], None] | None = None,
    watch_timeout: int = 300, make_sink: Callable[[], ChangeSink] = RecordingSink,
) -> None:
    """Start the test API server (``setup`` fills it), a KubeSource on it through a kubeconfig
    file, feeding ``make_sink()``; run ``scenario(server, source, sink)``; tear down."""
    async def main() -> None:
        server = kapi.KubeApiServer()
        await server.start()
        if setup is not None:
            setup(server)
        config = tmp_path / "kubeconfig"
        config.write_text(server.kubeconfig())
        source = KubeSource(str(config), backoff=lambda: Backoff(0.02, 0.2),
                            watch_timeout=watch_timeout)
        sink = make_sink()
        task = asyncio.create_task(source.run(sink))
        try:
            await scenario(server, source, sink)
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            await server.stop()
        assert not task.done() or task.cancelled() or task.exception() is None

    asyncio.run(main())


async def converged(server: kapi.KubeApiServer, sink: RecordingSink, what: str) -> None:
    await eventually(lambda: model_of(sink) == expected_model(server), what)


def tcp(port: int, target: Any = None, name: str = "", node_port: int | None = None) -> dict:
    p: dict[str, Any] = {"port": port, "protocol": "TCP"}
    if name:
        p["name"] = name
    if target is not None:
        p["targetPort"] = target
    if node_port is not None:
        p["nodePort"] = node_port
    return p


def ep(address: str, node: str = "node1", **conditions: bool) -> dict:
    return {"addresses": [address], "nodeName": node,
            "conditions": conditions or {"ready": True}}


def populate(server: kapi.KubeApiServer) -> None:
    server.apply(kapi.service("web", "10.96.0.10", [tcp(80, 8080, "http")]))
    server.apply(kapi.service("dns", "10.96.0.53", [{"port": 53, "protocol": "UDP",
                                                     "name": "dns"}], namespace="kube-system"))
    server.apply(kapi.service("headless", "None", [tcp(80)]))
    server.apply(kapi.service("ext", "", [], type="ExternalName", externalName="example.org"))
    server.apply(kapi.service("mine", "10.96.0.30", [tcp(80)],
                              labels={"service.kubernetes.io/service-proxy-name": "other"}))
    http = [{"name": "http", "port": 8080, "protocol": "TCP"}]
    server.apply(kapi.endpoint_slice("web-a", "web", [ep("10.244.1.5"), ep("10.244.2.6")], http))
    server.apply(kapi.endpoint_slice("web-b", "web", [ep("10.244.3.7", "node3", ready=False)],
                                     http))
    server.apply(kapi.endpoint_slice("dns-a", "dns", [ep("10.244.1.53")],
                                     [{"name": "dns", "port": 53, "protocol": "UDP"}],
                                     namespace="kube-system"))
    server.apply(kapi.endpoint_slice("headless-a", "headless", [ep("10.244.1.8")], http,
                                     labels={"service.kubernetes.io/headless": ""}))


def random_change(rng: random.Random, server: kapi.KubeApiServer, step: int) -> None:
    names = [f"s{i}" for i in range(8)]
    namespaces = ["default", "other"]
    name, namespace = rng.choice(names), rng.choice(namespaces)
    roll = rng.random()
    services = server.objects[kapi.SERVICES.path]
    slices = server.objects[kapi.ENDPOINT_SLICES.path]
    if roll < 0.35:
        labels = rng.choice([None, None, None, {"service.kubernetes.io/service-proxy-name": "o"},
                             {"app": "x"}])
        cluster_ip = rng.choice([f"10.96.{step % 250}.{rng.randint(1, 250)}", "None"])
        ports = [tcp(80, rng.choice([8080, "http"]), "http")]
        if rng.random() < 0.5:
            ports.append({"name": "dns", "port": 53, "protocol": "UDP"})
        server.apply(kapi.service(name, cluster_ip, ports, namespace=namespace, labels=labels,
                                  type=rng.choice(["ClusterIP", "NodePort"])))
    elif roll < 0.45 and (namespace, name) in services:
        server.delete("Service", namespace, name)
    elif roll < 0.85:
        slice_name = f"{name}-{rng.choice('ab')}"
        endpoints = [ep(f"10.244.{rng.randint(0, 3)}.{rng.randint(1, 6)}",
                        f"node{rng.randint(1, 3)}",
                        **rng.choice([{}, {"ready": False}, {"ready": False, "serving": True,
                                                             "terminating": True}]))
                     for _ in range(rng.randint(0, 3))]
        server.apply(kapi.endpoint_slice(
            slice_name, name, endpoints, [{"name": "http", "port": 8080, "protocol": "TCP"}],
            namespace=namespace, address_type=rng.choice(["IPv4", "IPv4", "IPv4", "IPv6"])))
    else:
        existing = sorted(k for k in slices if k[0] == namespace)
        if existing:
            server.delete("EndpointSlice", *rng.choice(existing))


async def random_changes_with_faults(server: kapi.KubeApiServer, rng: random.Random,
                                     steps: int) -> None:
    """``steps`` random changes; between them, now and then: dropped watches, compaction with
    an ERROR 410 event or an HTTP 410 on reconnect, bookmarks, HTTP 500s."""
    for step in range(steps):
        random_change(rng, server, step)
        fault = rng.random()
        if fault < 0.04:
            server.drop_watches()
        elif fault < 0.07:
            server.compact()
            server.expire_watches()
        elif fault < 0.09:
            server.gone_as_http = rng.random() < 0.5
            server.compact()
            server.drop_watches()
        elif fault < 0.11:
            server.bookmark()
        elif fault < 0.12:
            server.fail_next(1)
            server.drop_watches()
        if rng.random() < 0.3:
            await asyncio.sleep(0.01)  # let the source read some events mid-stream
