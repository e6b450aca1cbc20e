"""End to end in a network namespace of our own: the sources drive the real `netweft proxy`, which
programs nftables in that namespace.

- etcd: `netweft service create` + pod records (as the node daemon writes them) -> proxy ->
  ruleset; a pod record removed and the service deleted disappear from the kernel.
- Kubernetes: tests/support/kubeapi_server.py runs as a process inside the namespace; the proxy
  follows it through a kubeconfig across a dropped connection and a compaction (410 -> re-list).

Needs `netweft proxy` (daemon/commands/proxy.py, branch `proxy`) and root."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from netweft.daemon.etcd_process import EtcdProcess  # noqa: E402
from support.processes import stop_group

TESTS = Path(__file__).parents[1]
KUBEAPI_SERVER = TESTS / "support" / "kubeapi_server.py"
NETWEFT = str(Path(sys.executable).parent / "netweft")
NODE_IP = "192.0.2.1"


@pytest.fixture
def node_ns(netns_factory: Callable[[str], str]) -> str:
    """A namespace with a veth pair (both ends inside) carrying the node address."""
    ns = netns_factory("se2e")
    for cmd in (["link", "add", "nwsa", "type", "veth", "peer", "name", "nwsb"],
                ["addr", "add", f"{NODE_IP}/24", "dev", "nwsa"],
                ["link", "set", "nwsa", "up"], ["link", "set", "nwsb", "up"]):
        subprocess.run(["ip", "-n", ns, *cmd], check=True)
    return ns


def in_ns(ns: str, *cmd: str) -> list[str]:
    return ["ip", "netns", "exec", ns, *cmd]


def ruleset(ns: str) -> str:
    return subprocess.run(in_ns(ns, "nft", "list", "ruleset"), capture_output=True, text=True,
                          check=True).stdout


def wait_ruleset(ns: str, check: Callable[[str], bool], what: str, deadline: float = 60) -> None:
    end = time.monotonic() + deadline
    text = ""
    while time.monotonic() < end:
        text = ruleset(ns)
        if check(text):
            return
        time.sleep(0.2)
    raise AssertionError(f"never reached: {what}\n{text}")


def start_proxy(ns: str, log: Path, env: dict[str, str], *args: str) -> subprocess.Popen[bytes]:
    with open(log, "wb") as out:
        return subprocess.Popen(
            in_ns(ns, NETWEFT, "proxy", "--node-name", "node1", "--cluster-cidr", "10.244.0.0/16",
                  "--node-ip", NODE_IP, "--healthz-port", "0", "--min-sync-interval", "0.1",
                  *args),
            env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


@pytest.fixture
def etcd_in(node_ns: str) -> Iterator[EtcdProcess]:
    server = EtcdProcess(netns=node_ns).start()
    try:
        yield server
    finally:
        server.remove()


def test_etcd_records_reach_the_kernel(node_ns: str, etcd_in: EtcdProcess, tmp_path: Path) -> None:
    env = dict(os.environ, NETWEFT_ETCD_ENDPOINTS=etcd_in.endpoint,
               NETWEFT_SERVICES_PREFIX="/nws-e2e")
    end = time.monotonic() + 60  # a fresh etcd may take a while to elect itself on a busy machine
    while subprocess.run(in_ns(node_ns, NETWEFT, "service", "list"), env=env,
                         capture_output=True).returncode != 0:
        assert time.monotonic() < end, "etcd in the namespace never answered"
        time.sleep(0.5)
    r = subprocess.run(in_ns(node_ns, NETWEFT, "service", "create", "web", "--port", "80:8080/tcp",
                             "--selector", "app=web", "--type", "NodePort", "--node-port",
                             "30080", "--json"),
                       env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    cluster_ip = json.loads(r.stdout)["clusterIP"]
    pods = """
import asyncio, sys
from netweft.kv.etcd import EtcdClient, EtcdSettings
from netweft.proxy.podrecords import delete_pod, put_pod
from netweft.proxy.records import PodRecord
async def main():
    async with EtcdClient(EtcdSettings.from_strings(sys.argv[1]), timeout=30) as etcd:
        if sys.argv[2] == "add":
            for cid, ip, node in (("c1", "10.244.1.5", "node1"), ("c2", "10.244.2.5", "node2")):
                pod = PodRecord(cid, "default", f"web-{cid}", node, (ip,), {"app": "web"})
                await put_pod(etcd, "/nws-e2e", pod)
        else:
            await delete_pod(etcd, "/nws-e2e", "node1", "c1")
asyncio.run(main())
"""
    proxy = start_proxy(node_ns, tmp_path / "proxy.log", env, "--source", "etcd",
                        "--services-prefix", "/nws-e2e")
    try:
        subprocess.run(in_ns(node_ns, sys.executable, "-c", pods, etcd_in.endpoint, "add"),
                       check=True, timeout=60)
        wait_ruleset(node_ns, lambda t: all(s in t for s in (
            cluster_ip, "30080", "10.244.1.5 . 8080", "10.244.2.5 . 8080")), "service + pods")
        subprocess.run(in_ns(node_ns, sys.executable, "-c", pods, etcd_in.endpoint, "del"),
                       check=True, timeout=60)
        wait_ruleset(node_ns, lambda t: "10.244.1.5" not in t and "10.244.2.5 . 8080" in t,
                     "a pod record removed")
        r = subprocess.run(in_ns(node_ns, NETWEFT, "service", "delete", "web"), env=env,
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr
        wait_ruleset(node_ns, lambda t: cluster_ip not in t and "30080" not in t, "service deleted")
        assert proxy.poll() is None, (tmp_path / "proxy.log").read_text()
    finally:
        stop_group(proxy)


def test_kube_api_reaches_the_kernel_across_drops_and_410(node_ns: str, tmp_path: Path) -> None:
    server = subprocess.Popen(in_ns(node_ns, sys.executable, str(KUBEAPI_SERVER)),
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                              start_new_session=True, cwd=str(TESTS.parent))
    assert server.stdin is not None and server.stdout is not None

    def send(**cmd: object) -> None:
        server.stdin.write(json.dumps(cmd) + "\n")  # type: ignore[union-attr]
        server.stdin.flush()  # type: ignore[union-attr]
        assert server.stdout.readline().strip() == "ok"  # type: ignore[union-attr]

    def service(name: str, ip: str) -> dict:
        return {"kind": "Service", "metadata": {"name": name, "namespace": "default"},
                "spec": {"type": "ClusterIP", "clusterIP": ip, "clusterIPs": [ip],
                         "ports": [{"name": "http", "port": 80, "targetPort": 8080}]}}

    def slice_(name: str, svc: str, addresses: list[str]) -> dict:
        return {"kind": "EndpointSlice", "addressType": "IPv4",
                "metadata": {"name": name, "namespace": "default",
                             "labels": {"kubernetes.io/service-name": svc}},
                "endpoints": [{"addresses": [a], "nodeName": "node1"} for a in addresses],
                "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}]}

    proxy = None
    try:
        url = server.stdout.readline().strip()
        assert url.startswith("http://127.0.0.1:"), url
        kubeconfig = tmp_path / "kubeconfig"
        kubeconfig.write_text(json.dumps({
            "apiVersion": "v1", "kind": "Config", "current-context": "t",
            "clusters": [{"name": "t", "cluster": {"server": url}}],
            "users": [{"name": "t", "user": {"token": "t"}}],
            "contexts": [{"name": "t", "context": {"cluster": "t", "user": "t"}}]}))
        send(apply=service("web", "10.96.0.10"))
        send(apply=slice_("web-a", "web", ["10.244.1.5", "10.244.1.6"]))
        proxy = start_proxy(node_ns, tmp_path / "proxy.log", dict(os.environ), "--source", "kube",
                            "--kubeconfig", str(kubeconfig))
        wait_ruleset(node_ns, lambda t: "10.96.0.10" in t and "10.244.1.6 . 8080" in t, "initial")
        # Cut the watches, change things, compact: the proxy must re-list and catch up.
        send(drop=True)
        send(apply=slice_("web-a", "web", ["10.244.1.7"]))
        send(apply=service("db", "10.96.0.20"))
        send(apply=slice_("db-a", "db", ["10.244.2.9"]))
        send(compact=True)
        wait_ruleset(node_ns, lambda t: "10.244.1.5" not in t and "10.244.1.7 . 8080" in t
                     and "10.96.0.20" in t and "10.244.2.9 . 8080" in t, "after 410")
        send(delete=["Service", "default", "web"])
        wait_ruleset(node_ns, lambda t: "10.96.0.10" not in t, "service deleted")
        assert proxy.poll() is None, (tmp_path / "proxy.log").read_text()
    finally:
        if proxy is not None:
            stop_group(proxy)
        server.stdin.close()
        stop_group(server)
