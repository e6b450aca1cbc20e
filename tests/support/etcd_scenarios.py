"""Shared pieces of the etcd tests: the model etcd's records mean, random changes, waiting for a
source to converge, and a lease watch followed into a set of keys."""

from __future__ import annotations

import asyncio
import contextlib
import random

from netweft.ipam.lease import Lease
from netweft.ipam.leases import LeaseStore
from netweft.kv.protocol import KV
from netweft.proxy.model import Endpoint, Protocol, Service, ServiceKey, ServiceType
from netweft.proxy.podrecords import delete_pod, put_pod
from netweft.proxy.records import (
    PodRecord,
    PortRecord,
    RecordError,
    ServiceRecord,
    endpoints_for,
    pods_dir,
    service_key,
    services_dir,
)

from support.polling import eventually
from support.proxy_sink import RecordingSink

Model = tuple[dict[ServiceKey, Service], dict[ServiceKey, tuple[Endpoint, ...]]]


def expected_from(services: list[ServiceRecord], pods: list[PodRecord]) -> Model:
    svc = {r.key: r.to_service() for r in services}
    eps = {r.key: e for r in services if (e := endpoints_for(r, pods))}
    return svc, eps


async def truth(etcd: KV, prefix: str) -> Model:
    skvs, _ = await etcd.get_prefix(services_dir(prefix))
    pkvs, _ = await etcd.get_prefix(pods_dir(prefix))
    services = []
    for kv in skvs:
        with contextlib.suppress(RecordError):
            services.append(ServiceRecord.from_json(kv.value))
    return expected_from(services, [PodRecord.from_json(kv.value) for kv in pkvs])


async def random_changes(etcd: KV, prefix: str, rng: random.Random, count: int) -> None:
    for _ in range(count):
        roll = rng.random()
        name = f"s{rng.randint(0, 5)}"
        ns = rng.choice(["default", "other"])
        if roll < 0.25:
            record = ServiceRecord(ns, name, rng.choice(list(ServiceType)),
                                   f"10.96.0.{rng.randint(1, 250)}",
                                   (PortRecord("http", Protocol.TCP, 80,
                                               rng.choice([8080, "http"])),),
                                   {"app": rng.choice(["a", "b"])})
            await etcd.put(service_key(prefix, record.key), record.to_json())
        elif roll < 0.35:
            await etcd.delete(service_key(prefix, ServiceKey(ns, name)))
        elif roll < 0.8:
            await put_pod(etcd, prefix, PodRecord(
                f"c{rng.randint(0, 15)}", ns, "p", f"node{rng.randint(1, 3)}",
                (f"10.244.{rng.randint(0, 3)}.{rng.randint(1, 9)}",),
                {"app": rng.choice(["a", "b"])}, rng.random() < 0.8,
                rng.choice([{}, {"http": 8081}])))
        else:
            await delete_pod(etcd, prefix, f"node{rng.randint(1, 3)}", f"c{rng.randint(0, 15)}")


async def converge(etcd: KV, prefix: str, sink: RecordingSink, what: str) -> None:
    """Until ``sink`` holds the model of etcd's records now (fails after eventually()'s
    deadline)."""
    expected = await truth(etcd, prefix)
    await eventually(lambda: (sink.services, sink.endpoints) == expected, what)


def follow_leases(store: LeaseStore, leases: list[Lease], revision: int, view: set[str],
                  retry_delay: float) -> asyncio.Task[None]:
    """A task applying ``store.watch(leases, revision)`` to ``view`` (etcd keys)."""

    async def consume() -> None:
        async for events in store.watch(leases, revision, retry_delay=retry_delay):
            for ev in events:
                (view.add if ev.kind == "added" else view.discard)(store.key_for(ev.lease))

    return asyncio.create_task(consume())
