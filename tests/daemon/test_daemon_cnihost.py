"""The daemon's CNI hooks write and remove pod records in a real etcd (the proxy's input)."""

from __future__ import annotations

import asyncio
import json

from netweft.cni.plugin import PodInfo
from netweft.daemon.cnihost import CniHost
from netweft.daemon.metrics import daemon_metrics
from netweft.kv.etcd import EtcdClient, EtcdSettings


def test_add_writes_and_del_removes_the_pod_record(etcd_endpoint: str) -> None:
    async def scenario() -> tuple[dict[str, object], bool]:
        async with EtcdClient(EtcdSettings((etcd_endpoint,), "/x")) as etcd:
            host = CniHost("/nonexistent.sock", asyncio.get_running_loop(), daemon_metrics(),
                           etcd=etcd, services_prefix="/nwd-test-svc", node_name="node-a")
            pod = PodInfo("ADD", "netweft", "c0ffee0123456789", "eth0", "/run/netns/p",
                          "default", "web-1", "", {"app": "web"}, ("10.244.3.5/24",),
                          "nw0123456789ab", ports={"http": 8080})
            await host._put(pod)
            kv = await etcd.get("/nwd-test-svc/pods/node-a/c0ffee0123456789")
            assert kv is not None
            record = json.loads(kv.value)
            await host._delete(pod.container_id)
            gone = await etcd.get("/nwd-test-svc/pods/node-a/c0ffee0123456789") is None
            return record, gone

    record, gone = asyncio.run(scenario())
    assert record["ips"] == ["10.244.3.5"] and record["labels"] == {"app": "web"}
    assert record["namespace"] == "default" and record["name"] == "web-1"
    assert record["node"] == "node-a"
    assert record["ports"] == {"http": 8080} and record["hostVeth"] == "nw0123456789ab"
    assert gone
