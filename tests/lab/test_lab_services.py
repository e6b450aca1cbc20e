"""Services end to end in the multi-node lab, in both proxy modes (issue 5, "Lab end to end").

One lab per proxy mode (3 nodes, vxlan): real etcd, a `netweft daemon` and a `netweft proxy
--mode <mode> --source etcd` per node, pods wired by the CNI plugin with their labels, services
created with `netweft service create`. The proxy's etcd source turns the daemons' pod records
into endpoints; nothing in the path is faked.

Layout: node1 runs only the lab's own pod (the client: no endpoint of any service below lives on
node1); the test pods on node2/node3 run the proxy testbed's TCP+UDP who-am-I server on
:data:`APP_PORT` (answers ``"<own ip> <peer ip>"``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import pytest
from netweft.daemon import netns
from netweft.daemon.lab.lab import Lab, down
from netweft.daemon.lab.topology import GATEWAY_IP, LabSpec
from netweft.proxy.constants import NFT_TABLE
from support import proxy_testbed as testbed
from support.polling import poll_until
from support.proxy_testbed import Attempt

pytestmark = [pytest.mark.lab, pytest.mark.slow]

APP_PORT = 9090
NODE_PORT = 30090            # eTP Cluster
LOCAL_NODE_PORT = 30091      # eTP Local
CONVERGE = 20.0              # bound for the proxies to follow a change (polling, not a sleep)
CLIENT = "node1-pod1"        # the lab's own pod on node1: no service endpoint on node1


@dataclass
class Cluster:
    lab: Lab
    mode: str
    ips: dict[str, str] = field(default_factory=dict)          # service name -> cluster IP
    roles: dict[str, list[str]] = field(default_factory=dict)  # app label -> pod names
    servers: list[subprocess.Popen[str]] = field(default_factory=list)

    def ns(self, name: str) -> str:
        return self.lab.namespace_of(name)

    def ip(self, pod: str) -> str:
        return str(self.lab.pod_ip(pod))

    def add_pod(self, node: str, app: str) -> str:
        """A CNI-wired pod labelled ``app=<app>`` on ``node`` serving TCP+UDP who-am-I."""
        net = self.lab.add_pod(node, labels={"app": app})
        name = next(n for n, s in self.lab.pods.items() if s.ip == net.address.ip)
        self.servers.append(testbed.start_server(
            self.ns(name), str(net.address.ip), (f"tcp:{APP_PORT}", f"udp:{APP_PORT}")))
        self.roles.setdefault(app, []).append(name)
        return name

    def delete_pod(self, name: str) -> None:
        self.lab.delete_pod(name)       # also kills the pod's processes
        for pods in self.roles.values():
            if name in pods:
                pods.remove(name)

    def create_service(self, name: str, *args: str) -> str:
        proc = self.lab.netweft_in_etcd_ns(["service", "create", name, *args, "--json"])
        assert proc.returncode == 0, proc.stderr
        self.ips[name] = json.loads(proc.stdout)["clusterIP"]
        return self.ips[name]

    def connect(self, src: str, host: str, port: int, proto: str = "tcp", count: int = 1,
                timeout: float = 2.0, source_port: int = 0) -> list[Attempt]:
        """``count`` connections (TCP) or datagrams (UDP, one socket) from ``src``'s
        namespace (a pod, a node or ``outside``) with the testbed's client."""
        proc = testbed.run_in(self.ns(src), [
            sys.executable, "-c", testbed.CLIENT, proto, host, str(port), str(count),
            str(timeout), str(source_port)], timeout=count * timeout + 30)
        return [Attempt(r.get("server"), r.get("peer"), r.get("error"), r["seconds"])
                for r in json.loads(proc.stdout)]

    def app_ips(self, app: str) -> set[str]:
        return {self.ip(p) for p in self.roles.get(app, [])}


def until(pred: Callable[[], bool], timeout: float = CONVERGE, step: float = 0.2) -> bool:
    return bool(poll_until(pred, timeout, step))


def servers(attempts: list[Attempt]) -> Counter[str | None]:
    return Counter(a.server for a in attempts)


@pytest.fixture(scope="module", params=["nftables", "iptables"])
def cluster(request: pytest.FixtureRequest) -> Iterator[Cluster]:
    if os.geteuid() != 0:
        pytest.skip("needs root (network namespaces)")
    mode: str = request.param
    prefix = f"nwv{uuid.uuid4().hex[:4]}"
    spec = LabSpec(prefix=prefix, nodes=3, pods_per_node=1, backend="vxlan",
                   proxy_mode=mode)
    c: Cluster | None = None
    try:
        c = Cluster(Lab.up(spec), mode)
        for node, app in (("node2", "web"), ("node3", "web"), ("node3", "web"),
                          ("node2", "scale"), ("node3", "scale"), ("node3", "scale"),
                          ("node2", "udp"), ("node2", "hair")):
            c.add_pod(node, app)
        c.create_service("web", "--port", f"80:{APP_PORT}/tcp", "--selector", "app=web")
        c.create_service("web-np", "--port", f"80:{APP_PORT}/tcp", "--selector", "app=web",
                         "--type", "NodePort", "--node-port", str(NODE_PORT))
        c.create_service("web-local", "--port", f"80:{APP_PORT}/tcp", "--selector", "app=web",
                         "--type", "NodePort", "--node-port", str(LOCAL_NODE_PORT),
                         "--external-traffic-policy", "Local")
        c.create_service("web-sticky", "--port", f"80:{APP_PORT}/tcp", "--selector", "app=web",
                         "--affinity")
        c.create_service("empty", "--port", f"80:{APP_PORT}/tcp", "--selector", "app=nothing")
        c.create_service("scale", "--port", f"80:{APP_PORT}/tcp", "--selector", "app=scale")
        c.create_service("dns", "--port", f"53:{APP_PORT}/udp", "--selector", "app=udp")
        c.create_service("hair", "--port", f"80:{APP_PORT}/tcp", "--selector", "app=hair")
        yield c
    finally:
        down(prefix)
        if c is not None:
            for proc in c.servers:
                proc.kill()
                proc.wait()
        assert netns.list_names(f"{prefix}-") == []


def test_proxy_programs_the_requested_mode(cluster: Cluster) -> None:
    """Every node's proxy runs the lab's mode: the other mode's rules are absent."""
    for node in cluster.lab.topo.nodes:
        nft = testbed.run_in(node.netns, ["nft", "list", "table", "ip", NFT_TABLE], check=False)
        ipt = testbed.run_in(node.netns, ["iptables-save", "-t", "nat"], check=False)
        assert ipt.returncode == 0, ipt.stderr
        has_ipt = ":NETWEFT-SERVICES" in ipt.stdout
        assert (nft.returncode == 0, has_ipt) == (
            (True, False) if cluster.mode == "nftables" else (False, True)), node.name


def test_clusterip_from_another_node_reaches_all_endpoints_evenly(cluster: Cluster) -> None:
    web = cluster.app_ips("web")
    assert len(web) == 3 and not any(
        cluster.lab.pod(p).node == "node1" for p in cluster.roles["web"])
    ip = cluster.ips["web"]
    assert until(lambda: set(servers(cluster.connect(CLIENT, ip, 80, count=30))) == web)
    seen = servers(cluster.connect(CLIENT, ip, 80, count=200))
    assert set(seen) == web, seen            # every attempt answered, by an endpoint
    # roughly even: each of 3 endpoints gets at least half its fair share (66)
    assert min(seen.values()) >= 33, seen


def test_nodeport_from_outside_cluster(cluster: Cluster) -> None:
    web = cluster.app_ips("web")
    for node in cluster.lab.topo.nodes:       # node1 has no endpoint: forwarded across nodes
        assert until(lambda node=node: {a.server for a in cluster.connect(
            "outside", str(node.ip), NODE_PORT, count=10)} <= web), node.name


def test_external_traffic_policy_local_keeps_client_ip_and_drops_without_endpoints(
        cluster: Cluster) -> None:
    node2 = cluster.lab.topo.node("node2")
    local = {cluster.ip(p) for p in cluster.roles["web"] if cluster.lab.pod(p).node == "node2"}

    def answered_locally() -> bool:
        attempts = cluster.connect("outside", str(node2.ip), LOCAL_NODE_PORT, count=10)
        return all(a.server in local for a in attempts)

    assert until(answered_locally)
    attempts = cluster.connect("outside", str(node2.ip), LOCAL_NODE_PORT, count=20)
    assert {a.server for a in attempts} == local
    assert {a.peer for a in attempts} == {str(GATEWAY_IP)}   # the client's own address
    # node1 has no local endpoint: dropped (as kube-proxy does), neither answered nor refused
    node1 = cluster.lab.topo.node("node1")
    attempts = cluster.connect("outside", str(node1.ip), LOCAL_NODE_PORT, count=2, timeout=1.5)
    assert [a.error for a in attempts] == ["timeout", "timeout"], attempts


def test_session_affinity_sticks_to_one_endpoint(cluster: Cluster) -> None:
    ip = cluster.ips["web-sticky"]
    web = cluster.app_ips("web")
    assert until(lambda: cluster.connect(CLIENT, ip, 80)[0].server in web)
    seen = servers(cluster.connect(CLIENT, ip, 80, count=50))
    assert len(seen) == 1 and set(seen) <= web, seen


def test_service_without_endpoints_is_refused_immediately(cluster: Cluster) -> None:
    ip = cluster.ips["empty"]
    # a refusal (ICMP port unreachable -> ECONNREFUSED), not a timeout; the attempt's timeout
    # is long so a silent drop could not pass as a refusal
    assert until(lambda: cluster.connect(CLIENT, ip, 80, timeout=5.0)[0].error == "refused")
    attempts = cluster.connect(CLIENT, ip, 80, count=3, timeout=5.0)
    assert [a.error for a in attempts] == ["refused"] * 3, attempts


def test_scaling_endpoints_down_then_up(cluster: Cluster) -> None:
    ip = cluster.ips["scale"]

    def follows() -> bool:
        want = cluster.app_ips("scale")
        return set(servers(cluster.connect(CLIENT, ip, 80, count=30, timeout=1.0))) == want

    assert until(follows)
    for name in cluster.roles["scale"][1:]:
        cluster.delete_pod(name)
    assert len(cluster.app_ips("scale")) == 1
    assert until(follows)
    cluster.add_pod("node3", "scale")
    cluster.add_pod("node2", "scale")
    assert len(cluster.app_ips("scale")) == 3
    assert until(follows)


def test_udp_flow_survives_endpoint_replacement(cluster: Cluster) -> None:
    ip = cluster.ips["dns"]
    sport = 40053                     # one client flow: the same 5-tuple before and after
    old = cluster.ip(cluster.roles["udp"][0])

    def answered_by(want: str) -> bool:
        got = cluster.connect(CLIENT, ip, 53, proto="udp", timeout=1.0, source_port=sport)
        return got[0].server == want

    assert until(lambda: answered_by(old))
    # a rolling replacement: the new pod first, then the old one goes away
    new_pod = cluster.add_pod("node3", "udp")
    new = cluster.ip(new_pod)
    cluster.delete_pod(cluster.roles["udp"][0])
    # without conntrack cleanup the flow stays pinned to the deleted pod's address until the
    # entry times out (refreshed by every datagram: never)
    assert until(lambda: answered_by(new))


def test_hairpin_pod_reaches_itself_through_cluster_ip(cluster: Cluster) -> None:
    pod = cluster.roles["hair"][0]
    own = cluster.ip(pod)
    ip = cluster.ips["hair"]
    assert until(lambda: cluster.connect(pod, ip, 80, timeout=1.0)[0].server == own)
    attempts = cluster.connect(pod, ip, 80, count=5)
    assert {a.server for a in attempts} == {own}, attempts
