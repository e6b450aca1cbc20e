"""``lab check``: the connectivity matrix and a throughput figure.

:func:`plan_probes` is pure (topology + pod addresses -> probes); :func:`run_probes` runs them
concurrently with bounded counts and timeouts (``ping -c 2 -W 1``; whoami connections time out
after 3 s), and :func:`iperf` measures pod-to-pod throughput across two nodes.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from ipaddress import IPv4Address
from typing import Any, Protocol

from netweft.daemon.lab.topology import INTERNET_IP, WHOAMI_PORT, Topology

PING = ("ping", "-n", "-q", "-c", "2", "-i", "0.2", "-W", "1")
PARALLEL = 16

POD_SAME = "pod-pod same node"
POD_CROSS = "pod-pod across nodes"
NODE_POD = "node-pod"
POD_OUTSIDE = "pod-outside (masquerade)"
POD_SERVICE = "pod-service (ClusterIP)"
NODEPORT = "outside-NodePort"
KINDS = (POD_SAME, POD_CROSS, NODE_POD, POD_OUTSIDE, POD_SERVICE, NODEPORT)


@dataclass(frozen=True)
class Probe:
    kind: str
    src: str                  # pod or node name
    src_ns: str
    dst: str                  # pod name or "outside"
    dst_ip: IPv4Address
    expect_source: IPv4Address | None = None   # pod-outside: the address the far end must see
    port: int | None = None                     # a whoami connection (any answer) instead of ping


@dataclass(frozen=True)
class ProbeResult:
    probe: Probe
    ok: bool
    detail: str = ""


@dataclass(frozen=True)
class Throughput:
    src: str
    dst: str
    bits_per_second: float

    @property
    def gbits(self) -> float:
        return self.bits_per_second / 1e9


def plan_probes(topo: Topology, addresses: dict[str, IPv4Address]) -> list[Probe]:
    """Every pod to every other pod; every node to every pod; every pod to the outside."""
    probes: list[Probe] = []
    pods = [p for p in topo.pods if p.name in addresses]
    node_ip = {n.name: n.ip for n in topo.nodes}
    for src in pods:
        for dst in pods:
            if src.name == dst.name:
                continue
            kind = POD_SAME if src.node == dst.node else POD_CROSS
            probes.append(Probe(kind, src.name, src.netns, dst.name, addresses[dst.name]))
    for node in topo.nodes:
        for dst in pods:
            probes.append(Probe(NODE_POD, node.name, node.netns, dst.name, addresses[dst.name]))
    for src in pods:
        probes.append(Probe(POD_OUTSIDE, src.name, src.netns, "outside", INTERNET_IP,
                            expect_source=node_ip[src.node], port=WHOAMI_PORT))
    return probes


def plan_service_probes(topo: Topology, addresses: dict[str, IPv4Address],
                        cluster_ip: IPv4Address, port: int, node_port: int) -> list[Probe]:
    """Every pod to the service's cluster IP; the outside host to every node's NodePort."""
    probes = [Probe(POD_SERVICE, p.name, p.netns, "service", cluster_ip, port=port)
              for p in topo.pods if p.name in addresses]
    probes += [Probe(NODEPORT, "outside", f"{topo.prefix}-outside", n.name, n.ip, port=node_port)
               for n in topo.nodes]
    return probes


def _run(cmd: Sequence[str], timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(cmd), capture_output=True, text=True, timeout=timeout)


def run_probe(probe: Probe) -> ProbeResult:
    try:
        if probe.port is None:
            proc = _run(["ip", "netns", "exec", probe.src_ns, *PING, str(probe.dst_ip)], 10)
            if proc.returncode == 0:
                return ProbeResult(probe, True)
            summary = [ln for ln in proc.stdout.splitlines() if "packet" in ln]
            return ProbeResult(probe, False, summary[0] if summary else proc.stderr.strip())
        proc = _run(["ip", "netns", "exec", probe.src_ns, sys.executable, "-m",
                     "netweft.daemon.lab.whoami", "ask", str(probe.dst_ip),
                     "--port", str(probe.port)],
                    15)
    except subprocess.TimeoutExpired:
        return ProbeResult(probe, False, "timed out")
    if proc.returncode != 0:
        return ProbeResult(probe, False, proc.stderr.strip().splitlines()[-1:][0]
                           if proc.stderr.strip() else f"exit {proc.returncode}")
    seen = proc.stdout.strip()
    if probe.expect_source is not None and seen != str(probe.expect_source):
        return ProbeResult(probe, False, f"seen as {seen}, expected {probe.expect_source}")
    return ProbeResult(probe, True, f"seen as {seen}")


def run_probes(probes: Sequence[Probe], parallel: int = PARALLEL) -> list[ProbeResult]:
    with ThreadPoolExecutor(max_workers=parallel) as pool:
        return list(pool.map(run_probe, probes))


def wait_listening(ns: str, port: int, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        out = _run(["ip", "netns", "exec", ns, "ss", "-Hltn", f"sport = :{port}"], 5).stdout
        if out.strip():
            return True
        time.sleep(0.05)
    return False


def iperf(server_ns: str, server_ip: IPv4Address, client_ns: str, seconds: float = 3.0,
          port: int = 5201, extra: Sequence[str] = ()) -> float:
    """iperf3 TCP throughput (bits/s, receiver side) from ``client_ns`` to ``server_ip``."""
    data = iperf_json(server_ns, server_ip, client_ns, seconds, port, extra)
    return float(data["end"]["sum_received"]["bits_per_second"])


def iperf_json(server_ns: str, server_ip: IPv4Address, client_ns: str, seconds: float = 3.0,
               port: int = 5201, extra: Sequence[str] = ()) -> dict[str, Any]:
    """The client's ``iperf3 -J`` report of a TCP run from ``client_ns`` to ``server_ip``
    (``end.sum_received.bits_per_second``, ``end.cpu_utilization_percent``, ...)."""
    server = subprocess.Popen(
        ["ip", "netns", "exec", server_ns, "iperf3", "-s", "-1", "-p", str(port),
         "-B", str(server_ip)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )
    try:
        if not wait_listening(server_ns, port):
            raise RuntimeError(f"iperf3 server in {server_ns} did not start")
        proc = _run(["ip", "netns", "exec", client_ns, "iperf3", "-c", str(server_ip), "-p",
                     str(port), "-t", str(seconds), "-J", *extra], seconds + 30)
        data = json.loads(proc.stdout or "{}")
        if proc.returncode != 0 or "error" in data:
            raise RuntimeError(f"iperf3 {client_ns} -> {server_ip}: "
                               f"{data.get('error', proc.stderr.strip())}")
        return data  # type: ignore[no-any-return]
    finally:
        if server.poll() is None:
            server.terminate()
        try:
            server.wait(timeout=5)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def iperf_pair(topo: Topology) -> tuple[str, str] | None:
    """(client pod, server pod) on the first and last nodes that have pods (None if < 2)."""
    nodes = [n for n in topo.nodes if topo.pods_on(n.name)]
    if len(nodes) < 2:
        return None
    return topo.pods_on(nodes[0].name)[0].name, topo.pods_on(nodes[-1].name)[0].name


class ProbeResultView(Protocol):
    """What the renderers read of a probe's result (:class:`ProbeResult`, or vagrant/check.py's):
    ``ok``, ``detail`` and a ``probe`` with ``kind``, ``src``, ``dst`` and ``dst_ip``."""

    @property
    def ok(self) -> bool: ...

    @property
    def detail(self) -> str: ...

    @property
    def probe(self) -> Any: ...


def render_grid(srcs: Sequence[str], cols: Sequence[str], results: Sequence[ProbeResultView],
                nodeport_kind: str = NODEPORT) -> str:
    """The matrix ``lab check`` and vagrant/check.py print: one row per source, ``ok``/``FAIL``
    per (source, column) probe, ``-`` for a source to itself, blank where nothing was probed;
    then one line for the probes of ``nodeport_kind`` (destination = the node)."""
    by_pair = {(r.probe.src, r.probe.dst): r for r in results}
    width = max([len(c) for c in cols] + [4]) + 1
    first = max([len(s) for s in srcs] + [8]) + 1
    lines = ["from \\ to".ljust(first) + "".join(c.rjust(width) for c in cols)]
    for src in srcs:
        cells = []
        for dst in cols:
            r = by_pair.get((src, dst))
            cells.append(("-" if src == dst else "") if r is None else ("ok" if r.ok else "FAIL"))
        lines.append(src.ljust(first) + "".join(c.rjust(width) for c in cells))
    nodeports = [r for r in results if r.probe.kind == nodeport_kind]
    if nodeports:
        lines.append("NodePort from outside: " + "  ".join(
            f"{r.probe.dst} {'ok' if r.ok else 'FAIL'}" for r in nodeports))
    return "\n".join(lines)


def render_matrix(topo: Topology, results: Sequence[ProbeResult]) -> str:
    """Rows are sources (pods, then nodes), columns destination pods; then the outside column."""
    dsts = [p.name for p in topo.pods if any(r.probe.dst == p.name for r in results)]
    srcs = [p.name for p in topo.pods if any(r.probe.src == p.name for r in results)]
    srcs += [n.name for n in topo.nodes if any(r.probe.src == n.name for r in results)]
    cols = [*dsts, "outside"]
    if any(r.probe.dst == "service" for r in results):
        cols.append("service")
    return render_grid(srcs, cols, results)


def summarize(results: Sequence[ProbeResultView], kinds: Sequence[str] = KINDS) -> list[str]:
    """One ``KIND: good/all ok`` line per kind with probes, then one line per failed probe."""
    lines = []
    for kind in kinds:
        of_kind = [r for r in results if r.probe.kind == kind]
        if not of_kind:
            continue
        good = sum(r.ok for r in of_kind)
        lines.append(f"{kind}: {good}/{len(of_kind)} ok")
    for r in results:
        if not r.ok:
            lines.append(f"FAIL {r.probe.kind}: {r.probe.src} -> {r.probe.dst} "
                         f"({r.probe.dst_ip}): {r.detail}")
    return lines


@dataclass
class PingFlow:
    """A steady ping between two namespaces' addresses, for "no packet lost while X" checks."""

    proc: subprocess.Popen[str]

    def wait(self, timeout: float) -> tuple[int, int]:
        """(sent, received) once the flow ends."""
        out, _ = self.proc.communicate(timeout=timeout)
        return ping_counts(out)

    def stop(self, linger: float = 1.0) -> tuple[int, int]:
        """End the flow now (SIGINT: ping waits up to ``-W`` for the last reply and prints its
        summary); (sent, received)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
        return self.wait(timeout=linger + 10)


def start_ping_flow(src_ns: str, dst: IPv4Address, count: int, interval: float) -> PingFlow:
    proc = subprocess.Popen(
        ["ip", "netns", "exec", src_ns, "ping", "-n", "-q", "-c", str(count),
         "-i", str(interval), "-W", "1", str(dst)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    return PingFlow(proc)


def ping_counts(output: str) -> tuple[int, int]:
    """(transmitted, received) from ping's summary line."""
    for line in output.splitlines():
        if "packets transmitted" in line:
            parts = line.split(",")
            sent = int(parts[0].split()[0])
            received = int(parts[1].split()[0])
            return sent, received
    return 0, 0
