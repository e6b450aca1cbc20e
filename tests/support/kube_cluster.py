"""Admin-side helpers for tests against the real control plane (tests/conftest.py
``control_plane``): namespaces, Nodes, Pods reported running the way a kubelet would report them
(there is no kubelet here), Services, and the proxy model the API's objects describe.

Pods are created already bound to a Node (``spec.nodeName``), then their status is written
through the ``status`` subresource (phase Running, ``podIP(s)``, the Ready condition): that is
all the real EndpointSlice controller in kube-controller-manager reads to build the slices.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

from lightkube import ALL_NS, ApiError, AsyncClient, KubeConfig, codecs
from lightkube.resources.core_v1 import Namespace, Node, Pod, Service
from lightkube.types import PatchType
from netweft.daemon.controlplane import ControlPlane
from netweft.kv.backoff import Backoff
from netweft.proxy.sources.kube import KubeEndpointSlice, KubeService, KubeSource

from support.kube_scenarios import Model, model_from_objects
from support.polling import eventually
from support.proxy_sink import RecordingSink

Obj = dict[str, Any]
_names = itertools.count()


def unique(prefix: str) -> str:
    """A DNS-1123 name unique within this test session."""
    return f"{prefix}-{next(_names)}"


class Cluster:
    """An admin AsyncClient on a control plane plus object helpers (all async)."""

    def __init__(self, plane: ControlPlane) -> None:
        self.plane = plane
        config = KubeConfig.from_file(str(plane.admin_kubeconfig))
        self.client = AsyncClient(config=config, trust_env=False)

    async def close(self) -> None:
        await self.client.close()

    async def create(self, obj: Obj) -> Any:
        return await self.client.create(codecs.from_dict(obj))

    async def namespace(self, prefix: str = "t") -> str:
        name = unique(prefix)
        await self.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})
        return name

    async def node(self, name: str) -> None:
        """A Node object (kube-controller-manager's node IPAM gives it a podCIDR)."""
        with contextlib.suppress(ApiError):  # already there (the session plane is shared)
            await self.create({"apiVersion": "v1", "kind": "Node", "metadata": {"name": name}})

    async def pod(self, namespace: str, name: str, node: str, ip: str, labels: dict[str, str],
                  ports: dict[str, int], ready: bool = True) -> None:
        """A Pod bound to ``node`` with named container ports, reported Running at ``ip``."""
        await self.create({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": namespace, "labels": labels},
            "spec": {"nodeName": node, "containers": [{
                "name": "app", "image": "registry.invalid/netweft-test:1",
                "ports": [{"name": n, "containerPort": p} for n, p in ports.items()]}]},
        })
        await self.report(namespace, name, ip, ready)

    async def report(self, namespace: str, name: str, ip: str, ready: bool) -> None:
        """Write the pod's status as a kubelet would (status subresource)."""
        flag = "True" if ready else "False"
        status = {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}],
                  "conditions": [{"type": "PodScheduled", "status": "True"},
                                 {"type": "Initialized", "status": "True"},
                                 {"type": "ContainersReady", "status": flag},
                                 {"type": "Ready", "status": flag}]}
        await self.client.patch(Pod.Status, name, {"status": status}, namespace=namespace,
                                patch_type=PatchType.MERGE)

    async def delete_pod(self, namespace: str, name: str, grace: int = 0) -> None:
        """Delete a pod; with ``grace`` > 0 it stays Terminating (no kubelet finishes it)."""
        await self.client.delete(Pod, name, namespace=namespace, grace_period=grace)

    async def service(self, namespace: str, name: str, spec: Obj,
                      labels: dict[str, str] | None = None) -> None:
        await self.create({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": name, "namespace": namespace, "labels": labels or {}},
            "spec": spec})

    async def patch_service(self, namespace: str, name: str, patch: Obj,
                            status: bool = False) -> None:
        await self.client.patch(Service.Status if status else Service, name, patch,
                                namespace=namespace, patch_type=PatchType.MERGE)

    async def delete_service(self, namespace: str, name: str) -> None:
        await self.client.delete(Service, name, namespace=namespace)

    async def delete_namespace(self, name: str) -> None:
        """Delete a namespace's pods at once (grace 0), then the namespace."""
        async for pod in self.client.list(Pod, namespace=name):
            with contextlib.suppress(ApiError):
                await self.client.delete(Pod, pod.metadata.name, namespace=name, grace_period=0)
        with contextlib.suppress(ApiError):
            await self.client.delete(Namespace, name)

    async def pod_cidr(self, node: str) -> str | None:
        return (await self.client.get(Node, node)).spec.podCIDR

    async def model(self) -> Model:
        """The proxy model of everything in the API right now (all namespaces)."""
        services = [o.to_dict() async for o in self.client.list(KubeService, namespace=ALL_NS)]
        slices = [o.to_dict() async for o in self.client.list(KubeEndpointSlice,
                                                              namespace=ALL_NS)]
        slices.sort(key=lambda o: (o["metadata"]["namespace"], o["metadata"]["name"]))
        return model_from_objects(services, slices)


async def until(check: Callable[[], Awaitable[bool] | bool], what: str, deadline: float = 60.0,
                interval: float = 0.1) -> None:
    """:func:`support.polling.eventually`, polling every 0.1 s (each check is an API call)."""
    await eventually(check, what, deadline, interval)


async def converged(cluster: Cluster, sink: RecordingSink, what: str,
                    deadline: float = 60.0) -> None:
    """The source's model equals what the API's objects mean."""
    async def check() -> bool:
        return (sink.services, sink.endpoints) == await cluster.model()

    try:
        await until(check, what, deadline)
    except AssertionError:
        api = await cluster.model()
        raise AssertionError(f"never reached: {what}\nsource: {sink.services} "
                             f"{sink.endpoints}\napi: {api}") from None


@contextlib.asynccontextmanager
async def running_source(kubeconfig: Path, watch_timeout: int = 300,
                         list_chunk: int | None = 500,
                         ) -> AsyncIterator[tuple[KubeSource, RecordingSink]]:
    """A KubeSource on ``kubeconfig`` feeding a RecordingSink, cancelled on exit; a source that
    died on its own fails the test. ``list_chunk``: objects per list page."""
    source = KubeSource(str(kubeconfig), backoff=lambda: Backoff(0.05, 1.0),
                        watch_timeout=watch_timeout, list_chunk=list_chunk)
    sink = RecordingSink()
    task = asyncio.create_task(source.run(sink))
    try:
        yield source, sink
        assert not task.done(), f"the source stopped: {task.exception()}"
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
