"""netweft's proxy beside the real kube-proxy (issue 12 item 3): the same Services and the
EndpointSlices the real controller-manager builds, served by kube-proxy (nftables mode, iptables
mode) and by `netweft proxy --source kube` (nftables, iptables), each as node A of an identical
world of namespaces (tests/support/proxy_sidebyside.py), with real client and server namespaces.

Every check observes each world (who answered, which source address the server saw, how an
attempt failed) and asserts that all of them show the lab's semantics, i.e. behave the same; a
failure prints every world's observation, so a difference names the proxy. Differences that are
deliberate are listed in proxy/README.md ("netweft beside kube-proxy").
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, TypeVar

import pytest
from netweft.daemon.controlplane import ControlPlane  # noqa: E402
from netweft.daemon.kubeproxy_run import node_with_address, proxier_kubeconfig  # noqa: E402
from support.kube_cluster import unique  # noqa: E402
from support.namespaces import NamespaceMaker
from support.proxy_sidebyside import (  # noqa: E402
    BRIDGE_A,
    CLIENT_POD,
    NODE_A_IP,
    NODE_B_IP,
    OUTSIDE_IP,
    World,
    build_world,
    start_kube_proxy,
    start_netweft,
    wait_synced,
)
from support.proxy_testbed import Attempt  # noqa: E402

pytestmark = [pytest.mark.slow]

# (label, runner, mode): kube-proxy first, so a failure's table reads "reference, then us"
PROXIES = [("kube-proxy/nftables", start_kube_proxy, "nftables"),
           ("kube-proxy/iptables", start_kube_proxy, "iptables"),
           ("netweft/nftables", start_netweft, "nftables"),
           ("netweft/iptables", start_netweft, "iptables")]
CONVERGE = 60.0          # bound for a proxy to follow the API (a busy 2-core machine), polled
APP = 8080               # the pods' who-am-I server, TCP and UDP
T = TypeVar("T")


@dataclass
class SideBySide:
    plane: ControlPlane
    worlds: list[World]
    node_a: str
    node_b: str
    next_ip: dict[str, int] = field(default_factory=lambda: {"A": 10, "B": 10})

    def pod_ip(self, node: str) -> str:
        index = self.next_ip[node]
        self.next_ip[node] += 1
        assert index < 240
        return f"10.244.{1 if node == 'A' else 2}.{index}"


@pytest.fixture(scope="module")
def sbs(control_plane: ControlPlane, tmp_path_factory: pytest.TempPathFactory,
        ) -> Iterator[SideBySide]:
    """Four worlds, each proxy running as node A; the Nodes in the API carry their addresses."""
    namespaces = NamespaceMaker()
    work = tmp_path_factory.mktemp("sbs")
    node_a, node_b = unique("sbs-a"), unique("sbs-b")
    node_with_address(control_plane, node_a, NODE_A_IP)
    node_with_address(control_plane, node_b, NODE_B_IP)
    kubeconfig = proxier_kubeconfig(control_plane, work / "kube-proxy.kubeconfig")
    worlds: list[World] = []
    try:
        for label, start, mode in PROXIES:
            world = build_world(label, namespaces)
            worlds.append(world)
            start(world, mode, node_a, kubeconfig, control_plane.port,
                  work / label.replace("/", "-"))
        for world in worlds:
            wait_synced(world)
        yield SideBySide(control_plane, worlds, node_a, node_b)
    finally:
        for world in worlds:
            world.stop()
        namespaces.close()


@dataclass
class Scenario:
    """One test's Kubernetes namespace and pods (in the API and in every world)."""

    sbs: SideBySide
    namespace: str
    pod_namespaces: NamespaceMaker
    pod_ips: dict[str, str] = field(default_factory=dict)      # pod name -> ip

    def kubectl(self, *args: str, input: str | None = None) -> str:
        return self.sbs.plane.kubectl(*args, input=input)

    def pod(self, name: str, node: str, app: str, ready: bool = True) -> str:
        """Pod ``name`` on node ``A``/``B`` labelled ``app``: a serving namespace in every
        world, and a Pod in the API reported Running (Ready unless ``ready`` is false)."""
        ip = self.sbs.pod_ip(node)
        for world in self.sbs.worlds:
            (world.a if node == "A" else world.b).add_pod(ip, serve=(f"tcp:{APP}", f"udp:{APP}"))
        self.kubectl("apply", "-f", "-", input=json.dumps({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": self.namespace, "labels": {"app": app}},
            "spec": {"nodeName": self.sbs.node_a if node == "A" else self.sbs.node_b,
                     "containers": [{"name": "app", "image": "registry.invalid/netweft:1",
                                     "ports": [{"name": "http", "containerPort": APP}]}]}}))
        self.pod_ips[name] = ip
        self.report(name, ready)
        return ip

    def report(self, name: str, ready: bool) -> None:
        """Write the pod's status as a kubelet would (Running; Ready or not)."""
        flag = "True" if ready else "False"
        ip = self.pod_ips[name]
        status = {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}],
                  "conditions": [{"type": t, "status": "True" if t == "PodScheduled" else flag}
                                 for t in ("PodScheduled", "Initialized", "ContainersReady",
                                           "Ready")]}
        self.kubectl("patch", "pod", name, "-n", self.namespace, "--subresource=status",
                     "--type=merge", "-p", json.dumps({"status": status}))

    def delete(self, name: str) -> None:
        """Delete the pod at once (grace 0): its endpoint goes; its server keeps running, so
        only the proxy can move traffic away from it."""
        self.kubectl("delete", "pod", name, "-n", self.namespace, "--grace-period=0",
                     "--force", "--wait=false")

    def terminate(self, name: str) -> None:
        """Delete the pod with a long grace period: it stays Terminating (no kubelet)."""
        self.kubectl("delete", "pod", name, "-n", self.namespace, "--grace-period=600",
                     "--wait=false")

    def service(self, name: str, spec: dict[str, Any]) -> dict[str, Any]:
        """Create a Service (ports default: 80 -> the pods' server, TCP); its spec as stored."""
        spec = {"ports": [{"name": "http", "port": 80, "targetPort": APP, "protocol": "TCP"}],
                **spec}
        self.kubectl("apply", "-f", "-", input=json.dumps({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": name, "namespace": self.namespace}, "spec": spec}))
        return json.loads(self.kubectl("get", "service", name, "-n", self.namespace,
                                       "-o", "json"))["spec"]


@pytest.fixture
def scn(sbs: SideBySide) -> Iterator[Scenario]:
    namespace = unique("sbs")
    sbs.plane.kubectl("create", "namespace", namespace)
    pods = NamespaceMaker()
    for world in sbs.worlds:
        world.a.make_ns = world.b.make_ns = pods
    scenario = Scenario(sbs, namespace, pods)
    try:
        yield scenario
    finally:
        for world in sbs.worlds:
            for ip in scenario.pod_ips.values():
                for bed in (world.a, world.b):
                    if ip in bed.pods:
                        bed.stop_pod(ip)
        pods.close()
        sbs.plane.kubectl("delete", "namespace", namespace, "--wait=false")


Observed = tuple[frozenset[str], frozenset[str], frozenset[str]]


def outcome(attempts: list[Attempt]) -> Observed:
    """(servers that answered, source addresses they saw, errors) of a batch of attempts."""
    return (frozenset(a.server for a in attempts if a.server),
            frozenset(a.peer for a in attempts if a.peer),
            frozenset(a.error for a in attempts if a.error))


def answered(servers: set[str], peers: set[str]) -> Observed:
    return frozenset(servers), frozenset(peers), frozenset()


def failed(error: str) -> Observed:
    return frozenset(), frozenset(), frozenset({error})


def same(sbs: SideBySide, what: str, observe: Callable[[World], T], expected: T,
         deadline: float = CONVERGE) -> None:
    """Observe every world until it shows ``expected`` (bounded: the proxies follow the API
    asynchronously); assert that all of them did, printing each world's last observation."""
    got: dict[str, T] = {}
    for world in sbs.worlds:
        end = time.monotonic() + deadline
        while True:
            world.alive()
            value = observe(world)
            if value == expected or time.monotonic() > end:
                break
            time.sleep(0.3)
        got[world.label] = value
    differ = {label: value for label, value in got.items() if value != expected}
    assert not differ, (f"{what}: expected {expected}\n"
                        + "\n".join(f"  {label}: {value}" for label, value in got.items()))


def tcp(host: str, port: int, count: int = 20, timeout: float = 2.0,
        src: Callable[[World], str] | None = None) -> Callable[[World], Observed]:
    """An observation: ``count`` TCP connections from ``src(world)`` (the client pod)."""
    return lambda w: outcome(w.connect(src(w) if src else w.client, host, port, "tcp", count,
                                       timeout))


def udp(host: str, port: int, timeout: float = 2.0,
        src: Callable[[World], str] | None = None) -> Callable[[World], Observed]:
    return lambda w: outcome(w.connect(src(w) if src else w.client, host, port, "udp", 1,
                                       timeout))


def outside(w: World) -> str:
    return w.outside


def node_host(w: World) -> str:
    return w.node_a


def health(port: int) -> Callable[[World], tuple[int, Any]]:
    """GET the health-check node port from the outside host: (status, parsed JSON body)."""
    def observe(w: World) -> tuple[int, Any]:
        status, body = w.http(w.outside, NODE_A_IP, port)
        try:
            return status, json.loads(body)
        except ValueError:
            return status, body
    return observe


# --- the semantics ---------------------------------------------------------------------------


def test_cluster_ip_reaches_every_endpoint_like_kube_proxy(scn: Scenario) -> None:
    p1, p2 = scn.pod("p1", "A", "web"), scn.pod("p2", "B", "web")
    spec = scn.service("web", {"selector": {"app": "web"}, "ports": [
        {"name": "http", "port": 80, "targetPort": APP, "protocol": "TCP"},
        {"name": "dns", "port": 53, "targetPort": APP, "protocol": "UDP"}]})
    ip = spec["clusterIP"]
    # a pod client is inside the cluster CIDR: not masqueraded
    same(scn.sbs, "ClusterIP from a pod", tcp(ip, 80), answered({p1, p2}, {CLIENT_POD}))
    # the node itself is not: masqueraded to the address of the way out
    same(scn.sbs, "ClusterIP from the node", tcp(ip, 80, src=node_host),
         answered({p1, p2}, {BRIDGE_A, NODE_A_IP}))
    # UDP: one flow goes to one endpoint
    def one_flow(w: World) -> tuple[int, bool, frozenset[str], frozenset[str]]:
        servers, peers, errors = udp(ip, 53)(w)
        return len(servers), servers <= {p1, p2}, peers, errors

    same(scn.sbs, "ClusterIP UDP from a pod", one_flow,
         (1, True, frozenset({CLIENT_POD}), frozenset()))


def test_node_port_from_another_host_like_kube_proxy(scn: Scenario) -> None:
    p1, p2 = scn.pod("p1", "A", "web"), scn.pod("p2", "B", "web")
    spec = scn.service("web", {"type": "NodePort", "selector": {"app": "web"}})
    node_port = spec["ports"][0]["nodePort"]
    # externalTrafficPolicy Cluster: masqueraded, to every endpoint
    same(scn.sbs, "NodePort from outside", tcp(NODE_A_IP, node_port, src=outside),
         answered({p1, p2}, {BRIDGE_A, NODE_A_IP}))
    same(scn.sbs, "ClusterIP of a NodePort service", tcp(spec["clusterIP"], 80),
         answered({p1, p2}, {CLIENT_POD}))


def test_node_port_from_the_node_and_its_pods_like_kube_proxy(scn: Scenario) -> None:
    p1, p2 = scn.pod("p1", "A", "web"), scn.pod("p2", "B", "web")
    hair = scn.pod("h1", "A", "hair")
    port = scn.service("web", {"type": "NodePort", "selector": {"app": "web"}})[
        "ports"][0]["nodePort"]
    hair_port = scn.service("hair", {"type": "NodePort", "selector": {"app": "hair"}})[
        "ports"][0]["nodePort"]
    # policy Cluster: every client of a node port is masqueraded, pods of the node included
    same(scn.sbs, "NodePort from a pod of the node", tcp(NODE_A_IP, port),
         answered({p1, p2}, {BRIDGE_A, NODE_A_IP}))
    same(scn.sbs, "NodePort from the node", tcp(NODE_A_IP, port, src=node_host),
         answered({p1, p2}, {BRIDGE_A, NODE_A_IP}))
    same(scn.sbs, "hairpin through a NodePort",
         tcp(NODE_A_IP, hair_port, count=5, src=lambda w: w.a.pods[hair].netns),
         answered({hair}, {BRIDGE_A}))


def test_external_ips_and_load_balancer_source_ranges_like_kube_proxy(scn: Scenario) -> None:
    p1, p2 = scn.pod("p1", "A", "web"), scn.pod("p2", "B", "web")
    scn.service("ext", {"selector": {"app": "web"}, "externalIPs": ["203.0.113.7"]})
    for name, ip, ranges in (("lb-open", "203.0.113.8", [OUTSIDE_IP + "/32"]),
                             ("lb-closed", "203.0.113.9", ["198.51.100.0/24"])):
        scn.service(name, {"type": "LoadBalancer", "selector": {"app": "web"},
                           "loadBalancerSourceRanges": ranges})
        scn.kubectl("patch", "service", name, "-n", scn.namespace, "--subresource=status",
                    "--type=merge", "-p", json.dumps(
                        {"status": {"loadBalancer": {"ingress": [{"ip": ip}]}}}))
    external = answered({p1, p2}, {BRIDGE_A, NODE_A_IP})
    same(scn.sbs, "externalIP from outside", tcp("203.0.113.7", 80, src=outside), external)
    same(scn.sbs, "LB IP from an allowed source", tcp("203.0.113.8", 80, src=outside), external)
    same(scn.sbs, "LB IP from a source outside the ranges",
         tcp("203.0.113.9", 80, count=2, timeout=1.5, src=outside), failed("timeout"))


def test_node_ports_on_other_node_addresses_differ_as_documented(scn: Scenario) -> None:
    """NodePorts answer on the node's primary address everywhere; kube-proxy's iptables mode
    also on every other local address and on 127.0.0.1 (its defaults: nodePortAddresses unset,
    localhostNodePorts true). netweft, like kube-proxy's nftables mode, does not (a deliberate
    difference, proxy/README.md)."""
    p1 = scn.pod("p1", "A", "web")
    port = scn.service("web", {"type": "NodePort", "selector": {"app": "web"}})[
        "ports"][0]["nodePort"]
    everywhere = {"kube-proxy/iptables"}

    def expect(label: str, yes: Observed, no: Observed) -> Observed:
        return yes if label in everywhere else no

    same(scn.sbs, "NodePort on the primary address", tcp(NODE_A_IP, port, count=3),
         answered({p1}, {BRIDGE_A}))
    got = {w.label: outcome(w.connect(w.node_a, "127.0.0.1", port, count=2, timeout=1.5))
           for w in scn.sbs.worlds}
    assert got == {w.label: expect(w.label, answered({p1}, {BRIDGE_A}), failed("refused"))
                   for w in scn.sbs.worlds}, got
    got = {w.label: outcome(w.connect(w.client, BRIDGE_A, port, count=2, timeout=1.5))
           for w in scn.sbs.worlds}
    assert got == {w.label: expect(w.label, answered({p1}, {BRIDGE_A}), failed("refused"))
                   for w in scn.sbs.worlds}, got


def test_cluster_ip_port_not_served_differs_as_documented(scn: Scenario) -> None:
    """A ClusterIP on a port its service does not have: kube-proxy's nftables mode rejects it
    (its ``cluster-ips`` check); its iptables mode and netweft leave the packet alone, and here
    it is routed away and never answered (a documented difference, proxy/README.md)."""
    scn.pod("p1", "A", "web")
    ip = scn.service("web", {"selector": {"app": "web"}})["clusterIP"]
    same(scn.sbs, "the served port", lambda w: tcp(ip, 80, count=1)(w)[2], frozenset())
    got = {w.label: outcome(w.connect(w.client, ip, 81, count=1, timeout=2.0))
           for w in scn.sbs.worlds}
    assert got == {w.label: failed("refused" if w.label == "kube-proxy/nftables" else "timeout")
                   for w in scn.sbs.worlds}, got


def test_external_traffic_policy_local_like_kube_proxy(scn: Scenario) -> None:
    p1, p2 = scn.pod("p1", "A", "web"), scn.pod("p2", "B", "web")
    scn.pod("p3", "B", "remote")
    # LoadBalancer (no ingress IP assigned): the type that gets a health-check node port
    spec = scn.service("web", {"type": "LoadBalancer", "selector": {"app": "web"},
                               "externalTrafficPolicy": "Local"})
    remote = scn.service("remote", {"type": "LoadBalancer", "selector": {"app": "remote"},
                                    "externalTrafficPolicy": "Local"})
    port, hc = spec["ports"][0]["nodePort"], spec["healthCheckNodePort"]
    # local endpoints only, the client's address kept
    same(scn.sbs, "eTP Local NodePort", tcp(NODE_A_IP, port, src=outside),
         answered({p1}, {OUTSIDE_IP}))
    # the policy is for external traffic: the ClusterIP still reaches every endpoint
    same(scn.sbs, "eTP Local service's ClusterIP", tcp(spec["clusterIP"], 80),
         answered({p1, p2}, {CLIENT_POD}))
    # no local endpoint: dropped, neither answered nor refused
    same(scn.sbs, "eTP Local without local endpoints",
         tcp(NODE_A_IP, remote["ports"][0]["nodePort"], count=2, timeout=1.5, src=outside),
         failed("timeout"))
    # the policy is for traffic from outside the node: the node itself and its pods reaching
    # the node port are sent to any endpoint (kube-proxy: "short-circuit" local traffic)
    p3 = scn.pod_ips["p3"]
    remote_port = remote["ports"][0]["nodePort"]
    same(scn.sbs, "eTP Local NodePort from a pod of the node", tcp(NODE_A_IP, remote_port),
         answered({p3}, {CLIENT_POD}))
    same(scn.sbs, "eTP Local NodePort from the node", tcp(NODE_A_IP, remote_port,
                                                          src=node_host),
         answered({p3}, {NODE_A_IP}))
    # the health-check node port answers for the load balancer
    same(scn.sbs, "health check with a local endpoint", health(hc), (200, {
        "service": {"namespace": scn.namespace, "name": "web"}, "localEndpoints": 1,
        "serviceProxyHealthy": True}))
    same(scn.sbs, "health check without", health(remote["healthCheckNodePort"]), (503, {
        "service": {"namespace": scn.namespace, "name": "remote"}, "localEndpoints": 0,
        "serviceProxyHealthy": True}))


def test_internal_traffic_policy_local_like_kube_proxy(scn: Scenario) -> None:
    p1, p2 = scn.pod("p1", "A", "web"), scn.pod("p2", "B", "web")
    scn.pod("p3", "B", "remote")
    spec = scn.service("web", {"type": "NodePort", "selector": {"app": "web"},
                               "internalTrafficPolicy": "Local"})
    remote = scn.service("remote", {"selector": {"app": "remote"},
                                    "internalTrafficPolicy": "Local"})
    same(scn.sbs, "iTP Local ClusterIP", tcp(spec["clusterIP"], 80),
         answered({p1}, {CLIENT_POD}))
    # the policy is for internal traffic: the NodePort still reaches every endpoint
    same(scn.sbs, "iTP Local service's NodePort",
         tcp(NODE_A_IP, spec["ports"][0]["nodePort"], src=outside),
         answered({p1, p2}, {BRIDGE_A, NODE_A_IP}))
    same(scn.sbs, "iTP Local without local endpoints",
         tcp(remote["clusterIP"], 80, count=2, timeout=1.5), failed("timeout"))


def test_client_ip_affinity_like_kube_proxy(scn: Scenario) -> None:
    pods = {scn.pod("p1", "A", "web"), scn.pod("p2", "A", "web"), scn.pod("p3", "B", "web")}
    spec = scn.service("web", {"selector": {"app": "web"}, "sessionAffinity": "ClientIP"})

    def sticky(w: World) -> tuple[int, bool, frozenset[str]]:
        servers, _, errors = tcp(spec["clusterIP"], 80, count=30)(w)
        return len(servers), servers <= pods, errors

    same(scn.sbs, "ClientIP affinity", sticky, (1, True, frozenset()))


def test_no_endpoints_are_rejected_like_kube_proxy(scn: Scenario) -> None:
    scn.pod("p1", "A", "unready", ready=False)
    spec = scn.service("empty", {"type": "NodePort", "selector": {"app": "nothing"}, "ports": [
        {"name": "http", "port": 80, "targetPort": APP, "protocol": "TCP"},
        {"name": "dns", "port": 53, "targetPort": APP, "protocol": "UDP"}]})
    unready = scn.service("unready", {"selector": {"app": "unready"}})
    ip = spec["clusterIP"]
    # refused at once (TCP reset / ICMP port unreachable): long timeouts, so a drop cannot pass
    same(scn.sbs, "no endpoints TCP", tcp(ip, 80, count=3, timeout=5.0), failed("refused"))
    same(scn.sbs, "no endpoints UDP", udp(ip, 53, timeout=5.0), failed("refused"))
    same(scn.sbs, "no endpoints NodePort from outside",
         tcp(NODE_A_IP, spec["ports"][0]["nodePort"], count=3, timeout=5.0, src=outside),
         failed("refused"))
    same(scn.sbs, "only an unready endpoint", tcp(unready["clusterIP"], 80, count=3,
                                                   timeout=5.0), failed("refused"))


def test_terminating_endpoints_like_kube_proxy(scn: Scenario) -> None:
    p1, p2 = scn.pod("p1", "A", "web"), scn.pod("p2", "B", "web")
    ip = scn.service("web", {"selector": {"app": "web"}})["clusterIP"]
    same(scn.sbs, "both ready", tcp(ip, 80), answered({p1, p2}, {CLIENT_POD}))
    # a terminating endpoint gets no new connections while a ready one exists
    scn.terminate("p2")
    same(scn.sbs, "one ready, one terminating", tcp(ip, 80), answered({p1}, {CLIENT_POD}))
    # none ready: the serving terminating ones take the traffic
    scn.terminate("p1")
    same(scn.sbs, "all terminating, serving", tcp(ip, 80), answered({p1, p2}, {CLIENT_POD}))
    # terminating and not serving: no usable endpoint at all -> refused
    scn.report("p1", ready=False)
    scn.report("p2", ready=False)
    same(scn.sbs, "all terminating, not serving", tcp(ip, 80, count=3, timeout=5.0),
         failed("refused"))


def test_terminating_local_endpoint_under_external_policy_local_like_kube_proxy(
        scn: Scenario) -> None:
    p1, p2 = scn.pod("p1", "A", "web"), scn.pod("p2", "B", "web")
    spec = scn.service("web", {"type": "NodePort", "selector": {"app": "web"},
                               "externalTrafficPolicy": "Local"})
    port = spec["ports"][0]["nodePort"]
    same(scn.sbs, "eTP Local, local ready", tcp(NODE_A_IP, port, src=outside),
         answered({p1}, {OUTSIDE_IP}))
    # the only local endpoint terminates (still serving): external traffic stays on it,
    # the cluster IP moves to the ready remote one
    scn.terminate("p1")
    same(scn.sbs, "eTP Local, local terminating", tcp(NODE_A_IP, port, src=outside),
         answered({p1}, {OUTSIDE_IP}))
    same(scn.sbs, "its ClusterIP meanwhile", tcp(spec["clusterIP"], 80),
         answered({p2}, {CLIENT_POD}))
    # not serving any more: no local endpoint -> dropped
    scn.report("p1", ready=False)
    same(scn.sbs, "eTP Local, local gone", tcp(NODE_A_IP, port, count=2, timeout=1.5,
                                                src=outside), failed("timeout"))


def test_scaling_endpoints_down_and_up_like_kube_proxy(scn: Scenario) -> None:
    p1, p2, p3 = (scn.pod(f"p{i}", node, "web") for i, node in ((1, "A"), (2, "B"), (3, "B")))
    ip = scn.service("web", {"selector": {"app": "web"}})["clusterIP"]
    same(scn.sbs, "three", tcp(ip, 80, count=30), answered({p1, p2, p3}, {CLIENT_POD}))
    scn.delete("p2")
    scn.delete("p3")
    same(scn.sbs, "one", tcp(ip, 80, count=10), answered({p1}, {CLIENT_POD}))
    p4, p5 = scn.pod("p4", "A", "web"), scn.pod("p5", "B", "web")
    same(scn.sbs, "three again", tcp(ip, 80, count=30), answered({p1, p4, p5}, {CLIENT_POD}))


def test_udp_flow_follows_endpoint_replacement_like_kube_proxy(scn: Scenario) -> None:
    """One UDP flow (same 5-tuple) while its endpoint is replaced: the old pod keeps serving,
    so only a proxy that deletes the flow's conntrack entry moves it to the new pod."""
    p1 = scn.pod("p1", "A", "dns")
    ip = scn.service("dns", {"selector": {"app": "dns"}, "ports": [
        {"name": "dns", "port": 53, "targetPort": APP, "protocol": "UDP"}]})["clusterIP"]

    def flow(w: World) -> Observed:
        return outcome(w.connect(w.client, ip, 53, "udp", 1, 1.0, source_port=40053))

    same(scn.sbs, "the flow on the first pod", flow, answered({p1}, {CLIENT_POD}))
    p2 = scn.pod("p2", "B", "dns")
    scn.delete("p1")
    same(scn.sbs, "the same flow on the new pod", flow, answered({p2}, {CLIENT_POD}))


def test_hairpin_pod_reaches_itself_like_kube_proxy(scn: Scenario) -> None:
    p1 = scn.pod("p1", "A", "hair")
    ip = scn.service("hair", {"selector": {"app": "hair"}})["clusterIP"]
    # a pod reaching itself through its service is masqueraded (to the bridge's address), or
    # its reply would never come back through the NAT
    same(scn.sbs, "hairpin", tcp(ip, 80, count=5, src=lambda w: w.a.pods[p1].netns),
         answered({p1}, {BRIDGE_A}))
