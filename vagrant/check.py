"""Check a Vagrant cluster made by ``vagrant/run.sh``, and print a matrix like ``lab check``.

Runs where the nodes' network is directly reachable (run.sh's network namespace, whose address
on that network belongs to no node), talking to the nodes with OpenSSH and the config of
``vagrant ssh-config`` (one ``vagrant ssh`` costs seconds of Ruby start-up; ``ssh -F`` does not):

1. ``demo.sh add`` on every node: a pod (CNI plugin) with a whoami server and label app=demo;
2. ``demo.sh service`` on node1: the NodePort Service ``demo`` selecting those pods;
3. the Service must answer through node1's NodePort from here within ``--settle`` seconds
   (the proxies sync from etcd);
4. probes: every pod pings every other pod (kind ``pod-pod across nodes``), every node pings
   every pod (``node-pod``), every node reaches the Service's ClusterIP (``node-service
   (ClusterIP)``), and this host, which is not a node, reaches every node's NodePort
   (``outside-NodePort``). A probe is tried up to 3 times, 1 s apart.

Exit status 0 if every probe passed, 1 otherwise. Runs with netweft installed (the checkout's
.venv; run.sh makes it with deploy/setup.sh): the matrix and summary are ``lab check``'s
(:mod:`netweft.daemon.lab.check`), the NodePort client is the lab's whoami. Planning is a pure
function (:func:`plan_probes`); tests/deploy/test_vagrant_check.py covers it and the rendering.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from netweft.daemon.lab.check import NODE_POD, NODEPORT, POD_CROSS, render_grid, summarize
from netweft.daemon.lab.whoami import ask as ask_whoami

NODE_SERVICE = "node-service (ClusterIP)"
KINDS = (POD_CROSS, NODE_POD, NODE_SERVICE, NODEPORT)
OUTSIDE = "outside"
SERVICE = "service"
DEMO = "/opt/netweft/vagrant/demo.sh"
WHOAMI = "/opt/netweft/.venv/bin/python -m netweft.daemon.lab.whoami"
PING = "ping -n -q -c 2 -i 0.2 -W 1"


@dataclass(frozen=True)
class Node:
    name: str          # the Vagrant machine name, also its ssh host alias: node1
    ip: str            # its address on the cluster network


@dataclass(frozen=True)
class Probe:
    kind: str
    src: str           # a pod ("node2/demo"), a node ("node2") or OUTSIDE
    dst: str           # a pod, SERVICE, or a node (NodePort)
    via: str           # the node whose shell runs the probe; "" = this host
    command: str       # shell command on ``via`` (empty for this host's TCP probes)
    dst_ip: str
    port: int | None = None


@dataclass(frozen=True)
class Result:
    probe: Probe
    ok: bool
    detail: str = ""


def pod_name(node: str) -> str:
    return f"{node}/demo"


def plan_probes(nodes: Sequence[Node], pods: dict[str, str], cluster_ip: str, port: int,
                node_port: int) -> list[Probe]:
    """The probes for ``nodes``, the pods' addresses by node name, and the demo Service
    (``cluster_ip``:``port``, ``node_port`` on every node). Pure."""
    probes: list[Probe] = []
    for src in nodes:
        for dst in nodes:
            if src.name != dst.name and dst.name in pods and src.name in pods:
                probes.append(Probe(POD_CROSS, pod_name(src.name), pod_name(dst.name), src.name,
                                    f"sudo ip netns exec demo {PING} {pods[dst.name]}",
                                    pods[dst.name]))
    for src in nodes:
        for dst in nodes:
            if dst.name in pods:
                probes.append(Probe(NODE_POD, src.name, pod_name(dst.name), src.name,
                                    f"sudo {PING} {pods[dst.name]}", pods[dst.name]))
    for src in nodes:
        probes.append(Probe(NODE_SERVICE, src.name, SERVICE, src.name,
                            f"{WHOAMI} ask {cluster_ip} --port {port} --timeout 3",
                            cluster_ip, port))
    for dst in nodes:
        probes.append(Probe(NODEPORT, OUTSIDE, dst.name, "", "", dst.ip, node_port))
    return probes


def render_matrix(nodes: Sequence[Node], results: Sequence[Result]) -> str:
    """Rows: sources (pods, then nodes); columns: destination pods, then the Service; then one
    line for the NodePort from outside (``lab check``'s layout, :func:`render_grid`)."""
    pods = [pod_name(n.name) for n in nodes
            if any(r.probe.dst == pod_name(n.name) for r in results)]
    srcs = [p for p in pods if any(r.probe.src == p for r in results)]
    srcs += [n.name for n in nodes if any(r.probe.src == n.name for r in results)]
    cols = [*pods] + ([SERVICE] if any(r.probe.dst == SERVICE for r in results) else [])
    return render_grid(srcs, cols, results)


def parse_pod_ip(output: str) -> str:
    """The address in demo.sh add's ``demo pod A.B.C.D`` line; ValueError if there is none."""
    for line in output.splitlines():
        if line.startswith("demo pod "):
            return line.split()[2]
    raise ValueError(f"no 'demo pod' line in {output.strip()[-200:]!r}")


def parse_cluster_ip(output: str) -> str:
    """The ClusterIP in demo.sh service's ``demo service A.B.C.D:PORT NodePort N`` line."""
    for line in output.splitlines():
        if line.startswith("demo service "):
            return line.split()[2].rsplit(":", 1)[0]
    raise ValueError(f"no 'demo service' line in {output.strip()[-200:]!r}")


class Cluster:
    """The nodes, reached with ``ssh -F SSH_CONFIG NODE``.

    At most ``per_node`` ssh sessions run against one node at a time: a guest under plain qemu
    emulation (the libvirt route) spends seconds of its one emulated CPU on each key exchange, so
    several at once all missed a 10 s connect timeout (every probe of a 2-VM run exited 255).
    ``connect_timeout`` (seconds) is ssh's ConnectTimeout, which also bounds the banner exchange.
    ``run`` executes the ssh argv (subprocess.run's signature); tests pass their own.
    """

    def __init__(self, ssh_config: str, per_node: int = 2, connect_timeout: float = 10,
                 run: Callable[..., subprocess.CompletedProcess] = subprocess.run) -> None:
        self.ssh_config = ssh_config
        self.per_node = per_node
        self.connect_timeout = connect_timeout
        self._run = run
        self._slots: dict[str, threading.BoundedSemaphore] = {}
        self._lock = threading.Lock()

    def _slot(self, node: str) -> threading.BoundedSemaphore:
        with self._lock:
            return self._slots.setdefault(node, threading.BoundedSemaphore(self.per_node))

    def ssh(self, node: str, command: str, timeout: float = 60) -> subprocess.CompletedProcess:
        """Run ``command`` on ``node``; raises subprocess.TimeoutExpired after ``timeout`` s
        (the wait for a free session slot on that node not included). ssh's own errors are
        printed (LogLevel ERROR; Vagrant's ssh-config says FATAL, which hides why it failed)."""
        with self._slot(node):
            return self._run(
                ["ssh", "-F", self.ssh_config, "-o", "BatchMode=yes", "-o", "LogLevel=ERROR",
                 "-o", f"ConnectTimeout={self.connect_timeout:g}", node, command],
                capture_output=True, text=True, timeout=timeout + self.connect_timeout)


def run_probe(cluster: Cluster, probe: Probe, tries: int = 3) -> Result:
    detail = ""
    for attempt in range(tries):
        if attempt:
            time.sleep(1)
        if probe.via:
            try:
                proc = cluster.ssh(probe.via, probe.command, timeout=30)
            except subprocess.TimeoutExpired:
                detail = "timed out"
                continue
            if proc.returncode == 0:
                return Result(probe, True, proc.stdout.strip()[-200:])
            text = (proc.stdout + proc.stderr).strip().splitlines()
            detail = next((ln for ln in text if "packet" in ln), text[-1] if text else
                          f"exit {proc.returncode}")
        else:
            assert probe.port is not None
            try:
                seen = ask_whoami(probe.dst_ip, probe.port)
            except OSError as exc:
                detail = str(exc)
                continue
            if seen:
                return Result(probe, True, f"seen as {seen}")
            detail = "connection closed without an answer"
    return Result(probe, False, detail)


def wait_until(check: Callable[[], bool], timeout: float, interval: float = 0.5) -> bool:
    deadline = time.monotonic() + timeout
    while True:
        if check():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="vagrant/check.py", description=__doc__.split("\n")[0])
    parser.add_argument("--ssh-config", required=True, help="output of `vagrant ssh-config`")
    parser.add_argument("--nodes", type=int, required=True, help="node1..nodeN")
    parser.add_argument("--subnet", default="192.168.56", help="the cluster network's /24 prefix;"
                        " nodeI has .(10+I)")
    parser.add_argument("--port", type=int, default=80)
    parser.add_argument("--node-port", type=int, default=30080)
    parser.add_argument("--ssh-per-node", type=int, default=2,
                        help="ssh sessions in flight to one node (1 for emulated VMs)")
    parser.add_argument("--connect-timeout", type=float, default=10,
                        help="ssh ConnectTimeout in seconds (60 for emulated VMs)")
    parser.add_argument("--settle", type=float, default=60.0,
                        help="seconds to wait for the Service to answer at node1's NodePort")
    args = parser.parse_args(argv)
    nodes = [Node(f"node{i}", f"{args.subnet}.{10 + i}") for i in range(1, args.nodes + 1)]
    cluster = Cluster(args.ssh_config, args.ssh_per_node, args.connect_timeout)

    def add_pod(node: Node) -> tuple[str, str]:
        proc = cluster.ssh(node.name, f"sudo {DEMO} add")
        if proc.returncode != 0:
            raise RuntimeError(f"{node.name}: demo.sh add: {(proc.stderr or proc.stdout).strip()}")
        return node.name, parse_pod_ip(proc.stdout)

    try:
        with ThreadPoolExecutor(max_workers=8) as pool:
            pods = dict(pool.map(add_pod, nodes))
        for name, ip in pods.items():
            print(f"pod {pod_name(name)}: {ip}", flush=True)
        proc = cluster.ssh(nodes[0].name, f"sudo {DEMO} service")
        if proc.returncode != 0:
            raise RuntimeError(f"demo.sh service: {(proc.stderr or proc.stdout).strip()}")
        cluster_ip = parse_cluster_ip(proc.stdout)
    except (RuntimeError, ValueError, subprocess.TimeoutExpired) as exc:
        print(f"check.py: {exc}", file=sys.stderr)
        return 1
    print(f"service demo: {cluster_ip}:{args.port}, NodePort {args.node_port}", flush=True)

    def answers() -> bool:
        try:
            ask_whoami(nodes[0].ip, args.node_port, timeout=1)
            return True
        except OSError:
            return False

    if not wait_until(answers, args.settle):
        print(f"check.py: the demo service does not answer at {nodes[0].ip}:{args.node_port} "
              f"after {args.settle:.0f} s (journalctl -u netweft-proxy on the nodes)",
              file=sys.stderr)
    probes = plan_probes(nodes, pods, cluster_ip, args.port, args.node_port)
    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(lambda p: run_probe(cluster, p), probes))
    print(render_matrix(nodes, results))
    for line in summarize(results, KINDS):
        print(line)
    return 0 if all(r.ok for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
