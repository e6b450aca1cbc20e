"""The daemon's CNI hooks write and remove pod records in a real etcd (the service proxy's input).

Needs proxy/podrecords.py (branch proxysrc); skipped until it is merged.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field

import pytest

from daemon.cnihost import CniHost
from daemon.metrics import daemon_metrics
from ipam.etcd import EtcdClient, EtcdSettings

pytest.importorskip("proxy.podrecords")


@dataclass
class Pod:  # the fields of cni.plugin.PodInfo the hooks read
    container_id: str
    pod_namespace: str = ""
    pod_name: str = ""
    ips: tuple[str, ...] = ()
    labels: dict[str, str] = field(default_factory=dict)
    command: str = "ADD"


def test_add_writes_and_del_removes_the_pod_record(etcd_endpoint: str) -> None:
    async def scenario() -> tuple[dict[str, object], bool]:
        async with EtcdClient(EtcdSettings((etcd_endpoint,), "/x")) as etcd:
            etcd.connect()
            host = CniHost("/nonexistent.sock", asyncio.get_running_loop(), daemon_metrics(),
                           etcd=etcd, services_prefix="/nwd-test-svc", node_name="node-a")
            host._records = __import__("proxy.podrecords", fromlist=["put_pod"])
            pod = Pod("c0ffee0123456789", "default", "web-1", ("10.244.3.5/24",), {"app": "web"})
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
    assert gone
