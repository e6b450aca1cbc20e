"""How long the service sources take from start to the first synced() at scale, each compared
with the bare fetch of the same data in the same run (the ratio is the sources' own cost).

- Kubernetes: N Services + N EndpointSlices (3 endpoints each) served by
  tests/support/kubeapi_server.py over real HTTP; reference: lightkube listing both kinds as
  dicts, no conversion.
- etcd: N service records + 3N pod records in a private etcd; reference: one get_prefix of the
  same keys and json.loads of every value.

    .venv/bin/python bench/proxy_sources.py --services 10000 --rounds 3
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from lightkube import ALL_NS, AsyncClient, KubeConfig  # noqa: E402
from netweft.daemon.etcd_process import EtcdProcess  # noqa: E402
from netweft.kv.etcd import EtcdClient, EtcdSettings  # noqa: E402
from netweft.proxy.model import Protocol, ServiceType  # noqa: E402
from netweft.proxy.records import PodRecord, PortRecord, ServiceRecord, pod_key, service_key  # noqa: E402
from netweft.proxy.sources.etcd import EtcdSource  # noqa: E402
from netweft.proxy.sources.kube import KubeEndpointSlice, KubeService, KubeSource  # noqa: E402
from support import kubeapi_server as kapi  # noqa: E402


class CountingSink:
    def __init__(self) -> None:
        self.done = asyncio.Event()
        self.services = 0
        self.endpoint_sets = 0

    def service_updated(self, service: object) -> None:
        self.services += 1

    def service_deleted(self, key: object) -> None:
        pass

    def endpoints_updated(self, key: object, endpoints: tuple[object, ...]) -> None:
        self.endpoint_sets += 1

    def synced(self) -> None:
        self.done.set()


def ip(i: int, base: int) -> str:
    return f"10.{base + i // 65536}.{i // 256 % 256}.{i % 256}"


async def kube_round(n: int) -> tuple[float, float]:
    server = kapi.KubeApiServer()
    await server.start()
    http = [{"name": "http", "port": 8080, "protocol": "TCP"}]
    for i in range(n):
        server.apply(kapi.service(f"s{i}", ip(i, 96), [{"name": "http", "port": 80,
                                                        "targetPort": 8080}]))
        server.apply(kapi.endpoint_slice(
            f"s{i}-a", f"s{i}", [{"addresses": [ip(3 * i + k, 200)], "nodeName": "n1",
                                  "conditions": {"ready": True}} for k in range(3)], http))
    with tempfile.NamedTemporaryFile("w", suffix=".kubeconfig", delete=False) as f:
        f.write(server.kubeconfig())
    try:
        start = time.perf_counter()
        client = AsyncClient(config=KubeConfig.from_file(f.name).get(), trust_env=False)
        for res in (KubeService, KubeEndpointSlice):
            items = [o.to_dict() async for o in client.list(res, namespace=ALL_NS)]
            assert len(items) == n
        await client.close()
        reference = time.perf_counter() - start

        sink = CountingSink()
        start = time.perf_counter()
        task = asyncio.create_task(KubeSource(f.name).run(sink))
        await sink.done.wait()
        ours = time.perf_counter() - start
        assert sink.services == n and sink.endpoint_sets == n
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    finally:
        Path(f.name).unlink()
        await server.stop()
    return ours, reference


async def etcd_round(endpoint: str, prefix: str, n: int) -> tuple[float, float]:
    settings = EtcdSettings.from_strings(endpoint)
    async with EtcdClient(settings, timeout=60) as etcd:
        await etcd.delete_prefix(prefix + "/")
        for i in range(n):
            rec = ServiceRecord("default", f"s{i}", ServiceType.CLUSTER_IP, ip(i, 96),
                                (PortRecord("http", Protocol.TCP, 80, 8080),), {"app": f"a{i}"})
            await etcd.put(service_key(prefix, rec.key), rec.to_json())
            for k in range(3):
                pod = PodRecord(f"c{i}-{k}", "default", f"p{i}-{k}", f"n{k}",
                                (ip(3 * i + k, 200),), {"app": f"a{i}"})
                await etcd.put(pod_key(prefix, pod.node, pod.container_id), pod.to_json())
        start = time.perf_counter()
        kvs, _ = await etcd.get_prefix(prefix + "/")
        values = [json.loads(kv.value) for kv in kvs]
        reference = time.perf_counter() - start
        assert len(values) == 4 * n
    sink = CountingSink()
    start = time.perf_counter()
    task = asyncio.create_task(EtcdSource(settings, prefix).run(sink))
    await sink.done.wait()
    ours = time.perf_counter() - start
    assert sink.services == n and sink.endpoint_sets == n
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    return ours, reference


def report(name: str, rounds: list[tuple[float, float]]) -> None:
    ours = statistics.median(r[0] for r in rounds)
    ref = statistics.median(r[1] for r in rounds)
    print(f"{name}: source {ours * 1000:.0f} ms, bare fetch {ref * 1000:.0f} ms, "
          f"ratio {ours / ref:.2f} (median of {len(rounds)})")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--services", type=int, default=10000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    kube = [asyncio.run(kube_round(args.services)) for _ in range(args.rounds)]
    report(f"kube  {args.services} services + slices", kube)
    server = EtcdProcess().start()
    try:
        etcd = [asyncio.run(etcd_round(server.endpoint, "/nws-bench", args.services))
                for _ in range(args.rounds)]
    finally:
        server.remove()
    report(f"etcd  {args.services} services + {3 * args.services} pods", etcd)


if __name__ == "__main__":
    main()
