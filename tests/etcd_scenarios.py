"""Shared pieces of the etcd source tests: the model etcd's records mean, random changes."""

from __future__ import annotations

import contextlib
import random

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
