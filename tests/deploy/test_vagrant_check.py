"""vagrant/check.py's pure parts: which probes a Vagrant cluster check runs, and the matrix it
prints (the same layout as ``lab check``). The probes themselves run in
tests/deploy/test_vagrant_lxc.py against a real cluster."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _load_check():
    spec = importlib.util.spec_from_file_location("vagrant_check", ROOT / "vagrant" / "check.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


check = _load_check()
NODES = [check.Node(f"node{i}", f"192.0.2.{10 + i}") for i in (1, 2, 3)]
PODS = {"node1": "10.244.1.2", "node2": "10.244.2.2", "node3": "10.244.3.2"}


def _plan():
    return check.plan_probes(NODES, PODS, "10.96.0.10", 80, 30080)


def test_every_pod_pings_every_pod_on_another_node_from_inside_its_netns() -> None:
    cross = [p for p in _plan() if p.kind == check.POD_CROSS]
    assert {(p.src, p.dst) for p in cross} == {
        (f"node{a}/demo", f"node{b}/demo") for a in (1, 2, 3) for b in (1, 2, 3) if a != b}
    probe = next(p for p in cross if p.src == "node1/demo" and p.dst == "node3/demo")
    assert probe.via == "node1"
    assert probe.command.startswith("sudo ip netns exec demo ping ")
    assert probe.command.endswith(" 10.244.3.2")


def test_every_node_reaches_every_pod_and_the_cluster_ip() -> None:
    plan = _plan()
    assert {(p.src, p.dst) for p in plan if p.kind == check.NODE_POD} == {
        (f"node{a}", f"node{b}/demo") for a in (1, 2, 3) for b in (1, 2, 3)}
    service = [p for p in plan if p.kind == check.NODE_SERVICE]
    assert [(p.via, p.dst_ip, p.port) for p in service] == [
        (f"node{i}", "10.96.0.10", 80) for i in (1, 2, 3)]
    assert all("--port 80" in p.command for p in service)


def test_nodeport_is_probed_from_this_host_on_every_node() -> None:
    nodeport = [p for p in _plan() if p.kind == check.NODEPORT]
    assert [(p.src, p.via, p.dst_ip, p.port) for p in nodeport] == [
        (check.OUTSIDE, "", f"192.0.2.{10 + i}", 30080) for i in (1, 2, 3)]


def test_a_node_without_a_pod_gets_no_pod_probes() -> None:
    plan = check.plan_probes(NODES, {"node1": "10.244.1.2"}, "10.96.0.10", 80, 30080)
    assert not [p for p in plan if p.kind == check.POD_CROSS]
    assert {p.dst for p in plan if p.kind == check.NODE_POD} == {"node1/demo"}


def test_matrix_marks_each_probe_and_the_nodeport_line() -> None:
    results = [check.Result(p, not (p.src == "node2/demo" and p.dst == "node3/demo"))
               for p in _plan()]
    lines = check.render_matrix(NODES, results).splitlines()
    assert lines[0].split() == ["from", "\\", "to", "node1/demo", "node2/demo", "node3/demo",
                                "service"]
    rows = {ln.split()[0]: ln.split()[1:] for ln in lines[1:-1]}
    assert rows["node1/demo"] == ["-", "ok", "ok"]
    assert rows["node2/demo"] == ["ok", "-", "FAIL"]
    assert rows["node1"] == ["ok", "ok", "ok", "ok"]
    assert lines[-1] == "NodePort from outside: node1 ok  node2 ok  node3 ok"


def test_summary_counts_per_kind_and_names_each_failure() -> None:
    plan = _plan()
    results = [check.Result(p, p.kind != check.NODEPORT or p.dst != "node2", "refused")
               for p in plan]
    lines = check.summarize(results, check.KINDS)
    assert lines[:4] == ["pod-pod across nodes: 6/6 ok", "node-pod: 9/9 ok",
                         "node-service (ClusterIP): 3/3 ok", "outside-NodePort: 2/3 ok"]
    assert lines[4:] == ["FAIL outside-NodePort: outside -> node2 (192.0.2.12): refused"]


def test_demo_output_parsing() -> None:
    assert check.parse_pod_ip("noise\ndemo pod 10.244.2.5\n") == "10.244.2.5"
    assert check.parse_cluster_ip("demo service 10.96.0.17:80 NodePort 30080\n") == "10.96.0.17"
    with pytest.raises(ValueError):
        check.parse_pod_ip("Error: no conflist")


def test_ssh_sessions_to_one_node_are_limited_while_other_nodes_run_in_parallel() -> None:
    """An emulated VM cannot take many key exchanges at once (the libvirt route's probes all
    exited 255 with 4 sessions per node): at most ``per_node`` sessions per node."""
    import subprocess
    import threading
    import time
    from concurrent.futures import ThreadPoolExecutor

    lock = threading.Lock()
    active: dict[str, int] = {}
    peak: dict[str, int] = {}

    def fake_run(argv, **kwargs):  # records concurrency; no ssh is started (pure logic)
        node = argv[-2]
        with lock:
            active[node] = active.get(node, 0) + 1
            peak[node] = max(peak.get(node, 0), active[node])
        time.sleep(0.05)
        with lock:
            active[node] -= 1
        return subprocess.CompletedProcess(argv, 0, "", "")

    cluster = check.Cluster("ssh_config", per_node=1, connect_timeout=60, run=fake_run)
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda n: cluster.ssh(n, "true"), ["node1", "node2"] * 4))
    assert peak == {"node1": 1, "node2": 1}
    seen: list[list[str]] = []
    check.Cluster("c", run=lambda a, **k: seen.append(a) or subprocess.CompletedProcess(a, 0)).ssh(
        "node1", "true")
    assert "ConnectTimeout=10" in seen[0] and "LogLevel=ERROR" in seen[0]
