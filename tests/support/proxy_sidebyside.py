"""Identical little worlds for running the real kube-proxy and `netweft proxy` side by side on
the same Services and EndpointSlices (tests/proxy/test_proxy_vs_kubeproxy.py).

One world per proxy, each made of its own namespaces with the same addresses::

    outside 192.0.2.1 ─┐
    node A  192.0.2.11 ├─ br0 (underlay namespace)      node A: the proxy under test,
    node B  192.0.2.12 ┘                                    cni0 10.244.1.1/24 + pods
                                                         node B: no proxy, cni0 10.244.2.1/24
                                                                 + pods (remote endpoints)

Both proxies act as node A (same Node name, same InternalIP), read the same API through a relay
of the apiserver's loopback port into node A, and see the same pods: every pod is created in
every world at the same address, and once in the API (bound to node A or B, reported Running by
tests/support/kube_cluster.py). A client pod on node A (not an endpoint) and the outside host are
the clients. Pods run the proxy testbed's who-am-I server (answers ``"<own ip> <peer ip>"``).
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from netweft.daemon.kubeproxy_run import KubeProxy, KubeProxySettings, http_get_in_netns, metric
from netweft.daemon.nsrelay import NsRelay

from support.proxy_testbed import Attempt, Testbed

NETWEFT = str(Path(sys.executable).parent / "netweft")
OUTSIDE_IP, NODE_A_IP, NODE_B_IP = "192.0.2.1", "192.0.2.11", "192.0.2.12"
BRIDGE_A, BRIDGE_B = "10.244.1.1", "10.244.2.1"
CLIENT_POD = "10.244.1.250"
CLUSTER_CIDR = "10.244.0.0/16"
EXTERNAL_NET = "203.0.113.0/24"      # externalIPs and LoadBalancer IPs, routed to node A
SERVICE_CIDR = "10.96.0.0/12"
HEALTHZ_PORT = 10256
METRICS_PORT = 10249
def _ip(ns: str, *args: str) -> None:
    subprocess.run(["ip", "-n", ns, *args], check=True, capture_output=True)


def _sysctl(ns: str, *settings: str) -> None:
    subprocess.run(["ip", "netns", "exec", ns, "sysctl", "-qw", *settings], check=True,
                   capture_output=True)


@dataclass
class World:
    """One copy of the topology; ``a``/``b``: the nodes' pod testbeds (pods via ``add_pod``);
    ``proxy``: what serves node A (a KubeProxy, or the netweft process)."""

    label: str
    underlay: str
    node_a: str
    node_b: str
    outside: str
    a: Testbed
    b: Testbed
    client: str = ""                  # the client pod's namespace
    kube_proxy: KubeProxy | None = None
    netweft: subprocess.Popen[bytes] | None = None
    relay: NsRelay | None = None
    log: Path | None = None
    pods: dict[str, str] = field(default_factory=dict)     # ip -> namespace

    def connect(self, from_ns: str, host: str, port: int, proto: str = "tcp", count: int = 1,
                timeout: float = 2.0, source_port: int = 0) -> list[Attempt]:
        return self.a.connect(from_ns, host, port, proto, count, timeout, source_port)

    def http(self, from_ns: str, host: str, port: int, path: str = "/") -> tuple[int, str]:
        """GET ``http://host:port/path`` from namespace ``from_ns``: (status, body); (0, error)
        when nothing answers."""
        code = ("import sys, urllib.request, urllib.error\n"
                "try:\n r = urllib.request.urlopen(sys.argv[1], timeout=3); s, b = r.status, "
                "r.read()\nexcept urllib.error.HTTPError as e:\n s, b = e.code, e.read()\n"
                "except OSError as e:\n s, b = 0, str(e).encode()\n"
                "print(s); sys.stdout.write(b.decode())")
        proc = subprocess.run(["ip", "netns", "exec", from_ns, sys.executable, "-c", code,
                               f"http://{host}:{port}{path}"], capture_output=True, text=True,
                              timeout=30)
        status, _, body = proc.stdout.partition("\n")
        return int(status or 0), body

    def stop(self) -> None:
        self.a.close()
        self.b.close()
        if self.kube_proxy is not None:
            self.kube_proxy.stop()
        if self.netweft is not None and self.netweft.poll() is None:
            self.netweft.terminate()
            try:
                self.netweft.wait(15)
            except subprocess.TimeoutExpired:
                self.netweft.kill()
                self.netweft.wait()
        if self.relay is not None:
            self.relay.stop()

    def alive(self) -> None:
        """Fail if the proxy has died (with its log's tail)."""
        if self.kube_proxy is not None:
            self.kube_proxy.check_alive()
        if self.netweft is not None and self.netweft.poll() is not None:
            tail = self.log.read_text()[-2000:] if self.log else ""
            raise AssertionError(f"netweft proxy in {self.label} exited: {tail}")


def build_world(label: str, make_ns: Callable[[str], str]) -> World:
    """Namespaces and links of one world (no proxy, no pods but the client pod)."""
    ul, na, nb, out = make_ns("ul"), make_ns("na"), make_ns("nb"), make_ns("out")
    _ip(ul, "link", "add", "br0", "type", "bridge")
    _ip(ul, "link", "set", "br0", "up")
    for ns, ip, port in ((out, OUTSIDE_IP, "uo"), (na, NODE_A_IP, "ua"), (nb, NODE_B_IP, "ub")):
        _ip(ul, "link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", ns)
        _ip(ul, "link", "set", port, "master", "br0", "up")
        _ip(ns, "addr", "add", f"{ip}/24", "dev", "eth0")
        _ip(ns, "link", "set", "eth0", "up")
    for ns, bridge, other_net, other_ip in ((na, BRIDGE_A, "10.244.2.0/24", NODE_B_IP),
                                            (nb, BRIDGE_B, "10.244.1.0/24", NODE_A_IP)):
        _ip(ns, "link", "add", "cni0", "type", "bridge")
        _ip(ns, "addr", "add", f"{bridge}/24", "dev", "cni0")
        _ip(ns, "link", "set", "cni0", "up")
        _ip(ns, "route", "add", other_net, "via", other_ip)
        _ip(ns, "route", "add", "default", "via", OUTSIDE_IP)
        # forwarding; every ICMP error counted (no per-host rate limit)
        _sysctl(ns, "net.ipv4.ip_forward=1", "net.ipv4.icmp_ratelimit=0")
    for net, via in (("10.244.1.0/24", NODE_A_IP), ("10.244.2.0/24", NODE_B_IP),
                     (SERVICE_CIDR, NODE_A_IP), (EXTERNAL_NET, NODE_A_IP)):
        _ip(out, "route", "add", net, "via", via)
    a = Testbed(na, out, node_ip=NODE_A_IP, client_ip=OUTSIDE_IP, bridge_ip=BRIDGE_A,
                make_ns=make_ns)
    b = Testbed(nb, out, node_ip=NODE_B_IP, client_ip=OUTSIDE_IP, bridge_ip=BRIDGE_B,
                make_ns=make_ns)
    world = World(label, ul, na, nb, out, a, b)
    world.client = a.add_pod(CLIENT_POD, serve=()).netns
    return world


def start_kube_proxy(world: World, mode: str, node: str, kubeconfig: Path, api_port: int,
                     workdir: Path) -> None:
    """The real kube-proxy as node A of ``world`` (its defaults, but for what keeps it in its
    namespace)."""
    workdir.mkdir(parents=True, exist_ok=True)
    world.kube_proxy = KubeProxy(world.node_a, KubeProxySettings(
        node, NODE_A_IP, kubeconfig, mode=mode, cluster_cidr=CLUSTER_CIDR,
        healthz_port=HEALTHZ_PORT, metrics_port=METRICS_PORT),
        relay_port=api_port, workdir=workdir).start()


def start_netweft(world: World, mode: str, node: str, kubeconfig: Path, api_port: int,
                  workdir: Path) -> None:
    """`netweft proxy --source kube` as node A of ``world``."""
    workdir.mkdir(parents=True, exist_ok=True)
    world.relay = NsRelay(world.node_a, api_port).start()
    world.log = workdir / "netweft-proxy.log"
    with open(world.log, "wb") as out:
        world.netweft = subprocess.Popen(
            ["ip", "netns", "exec", world.node_a, NETWEFT, "proxy", "--source", "kube",
             "--kubeconfig", str(kubeconfig), "--mode", mode, "--node-name", node,
             "--node-ip", NODE_A_IP, "--cluster-cidr", CLUSTER_CIDR,
             "--healthz-port", str(HEALTHZ_PORT), "--min-sync-interval", "0.1", "-v"],
            stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)


def wait_synced(world: World, timeout: float = 120.0) -> None:
    """Until the world's proxy reports a first sync (its metrics)."""
    if world.kube_proxy is not None:
        world.kube_proxy.wait_synced(timeout=timeout)
        return
    deadline = time.monotonic() + timeout
    while True:
        world.alive()
        status, body = http_get_in_netns(world.node_a, HEALTHZ_PORT, "/metrics")
        if status == 200 and (metric(body, "netweft_proxy_last_sync_timestamp_seconds") or 0):
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"netweft proxy in {world.label} never synced")
        time.sleep(0.2)


def close_worlds(worlds: Iterator[World] | list[World]) -> None:
    for world in worlds:
        world.stop()
