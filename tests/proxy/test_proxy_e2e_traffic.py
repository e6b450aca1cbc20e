"""The real ``netweft proxy`` process, in both modes, fed by the etcd source, carrying traffic:
etcd and the proxy run in the testbed's node namespace, pods on its bridge, the client outside.
A service created with ``netweft service create`` and pod records as the node daemon writes them
become reachable through the NodePort and the ClusterIP; removing a pod record takes that pod
out; ``/healthz`` and ``/metrics`` answer."""

from __future__ import annotations

import collections
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from netweft.daemon.etcd_process import EtcdProcess
from support.polling import wait_for
from support.processes import stop_group
from support.proxy_testbed import Testbed, run_in

pytestmark = pytest.mark.lab
NETWEFT = str(Path(sys.executable).parent / "netweft")
PREFIX = "/nwp-e2e"

PODS = """
import asyncio, sys
from netweft.kv.etcd import EtcdClient, EtcdSettings
from netweft.proxy.podrecords import delete_pod, put_pod
from netweft.proxy.records import PodRecord
async def main():
    async with EtcdClient(EtcdSettings.from_strings(sys.argv[1]), timeout=30) as etcd:
        if sys.argv[2] == "add":
            for cid, ip in (("c1", "10.244.1.11"), ("c2", "10.244.1.12")):
                pod = PodRecord(cid, "default", f"web-{cid}", "node1", (ip,), {"app": "web"})
                await put_pod(etcd, sys.argv[3], pod)
        else:
            await delete_pod(etcd, sys.argv[3], "node1", "c1")
asyncio.run(main())
"""


def http_get(ns: str, url: str) -> tuple[int, str]:
    code = ("import sys, urllib.request, urllib.error\n"
            "try:\n r = urllib.request.urlopen(sys.argv[1], timeout=5); print(r.status)\n"
            " print(r.read().decode())\n"
            "except urllib.error.HTTPError as e:\n print(e.code); print(e.read().decode())\n")
    out = run_in(ns, [sys.executable, "-c", code, url]).stdout
    status, _, body = out.partition("\n")
    return int(status), body


@pytest.mark.parametrize("mode", ["nftables", "iptables"])
def test_proxy_process_carries_traffic(bed: Testbed, mode: str, tmp_path: Path) -> None:
    for ip in ("10.244.1.11", "10.244.1.12"):
        bed.add_pod(ip)
    etcd = EtcdProcess(netns=bed.node).start()
    proxy = None
    log = tmp_path / "proxy.log"
    try:
        env = dict(os.environ, NETWEFT_ETCD_ENDPOINTS=etcd.endpoint)
        service = [NETWEFT, "service", "create", "web", "--port", "80:8080/tcp", "--selector",
                   "app=web", "--type", "NodePort", "--node-port", "30080", "--json",
                   "--services-prefix", PREFIX]
        created: dict[str, object] = {}

        def create() -> bool:
            proc = subprocess.run(["ip", "netns", "exec", bed.node, *service], env=env,
                                  capture_output=True, text=True, timeout=60)
            if proc.returncode == 0:
                created.update(json.loads(proc.stdout))
            return proc.returncode == 0
        wait_for(create, timeout=60, interval=0.3, what="etcd answers and the service is created")
        cluster_ip = str(created["clusterIP"])
        subprocess.run(["ip", "netns", "exec", bed.node, sys.executable, "-c", PODS,
                        etcd.endpoint, "add", PREFIX], check=True, timeout=60)
        with open(log, "wb") as out:
            proxy = subprocess.Popen(
                ["ip", "netns", "exec", bed.node, NETWEFT, "proxy", "--source", "etcd",
                 "--mode", mode, "--services-prefix", PREFIX, "--node-name", "node1",
                 "--node-ip", bed.node_ip, "--cluster-cidr", "10.244.0.0/16",
                 "--min-sync-interval", "0.1"],
                env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)

        def reaches_both() -> bool:
            assert proxy is not None and proxy.poll() is None, log.read_text()
            got = collections.Counter(a.server for a in bed.connect(
                bed.client, bed.node_ip, 30080, count=20, timeout=1.0))
            return set(got) == {"10.244.1.11", "10.244.1.12"}
        wait_for(reaches_both, timeout=60, interval=0.3, what="NodePort reaches both pods")
        got = {a.server for a in bed.connect(bed.client, cluster_ip, 80, count=20)}
        assert got == {"10.244.1.11", "10.244.1.12"}

        status, body = http_get(bed.node, "http://127.0.0.1:10256/healthz")
        assert status == 200 and json.loads(body)["healthy"] is True
        status, body = http_get(bed.node, "http://127.0.0.1:10256/metrics")
        assert status == 200 and 'netweft_proxy_services{mode="' + mode + '"} 1' in body

        subprocess.run(["ip", "netns", "exec", bed.node, sys.executable, "-c", PODS,
                        etcd.endpoint, "del", PREFIX], check=True, timeout=60)

        def only_second() -> bool:
            got = {a.server for a in bed.connect(bed.client, bed.node_ip, 30080, count=20)}
            return got == {"10.244.1.12"}
        wait_for(only_second, timeout=60, interval=0.3, what="the removed pod is out")
        assert proxy.poll() is None, log.read_text()
    finally:
        if proxy is not None:
            stop_group(proxy)
        etcd.remove()
