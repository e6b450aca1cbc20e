"""Interop with the real flanneld (issue 12 items 1-2, etcd mode): mixed labs where some nodes
run flanneld v0.28 (deploy/flannel.sh) and the others netweft's daemon, on one etcd.

Every test uses the real programs: flanneld, the reference bridge/host-local plugins, etcd,
netweft's daemon and CNI plugin; probes are real pings and TCP connections between namespaces.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import uuid
from collections.abc import Iterator
from ipaddress import IPv4Address
from pathlib import Path

import pytest
from netweft.daemon.lab import flannel
from netweft.daemon.lab.lab import Lab, down
from netweft.daemon.lab.topology import LabSpec

pytestmark = pytest.mark.lab


@pytest.fixture
def need_flanneld() -> flannel.FlannelBuild:
    if os.geteuid() != 0:
        pytest.skip("needs root (network namespaces)")
    try:
        return flannel.load_build()
    except flannel.FlannelMissing as exc:  # deploy/setup.sh builds it: a missing one fails
        pytest.fail(str(exc))


@pytest.fixture
def prefix() -> Iterator[str]:
    name = f"nwf{uuid.uuid4().hex[:4]}"
    yield name
    down(name)


def _up(prefix: str, backend: str, nodes: int, flannel_nodes: int, pods: int = 1) -> Lab:
    return Lab.up(LabSpec(prefix=prefix, nodes=nodes, pods_per_node=pods, backend=backend,
                          proxy=False, flannel_nodes=flannel_nodes))


def _assert_all_paths(lab: Lab) -> None:
    report = lab.check(iperf_seconds=0)
    assert report.ok, report.render() + "\n" + _logs(lab)


def _logs(lab: Lab) -> str:
    out = []
    for node in lab.topo.nodes:
        out.append(f"--- {node.name} ({lab.daemon_kind(node)}) {node.daemon_log}")
        try:
            with open(node.daemon_log, errors="replace") as f:
                out.append("".join(f.readlines()[-15:]))
        except OSError:
            out.append("(no log)")
    return "\n".join(out)


def _assert_root_namespace_untouched() -> None:
    """flanneld set up its iptables chains in its node namespace only (read, never changed)."""
    for cmd in (["iptables-save"], ["nft", "list", "ruleset"]):
        out = subprocess.run(cmd, capture_output=True, text=True).stdout
        assert "flannel" not in out.lower(), f"{cmd[0]} in the root namespace: {out}"


def _restart(lab: Lab, name: str) -> None:
    node = lab.topo.node(name)
    lab.stop_daemon(node)
    lab.start_daemon(node)
    lab.wait_daemon_ready(node)


def _leases(lab: Lab) -> dict[str, dict]:
    raw = lab.etcd.get_prefix(f"{lab.topo.spec.etcd_prefix}/subnets/")
    return {k: json.loads(v) for k, v in raw.items()}


@pytest.mark.parametrize("backend", ["vxlan", "host-gw"])
def test_mixed_cluster_every_path_both_directions(need_flanneld: flannel.FlannelBuild,
                                                  prefix: str, backend: str) -> None:
    """node1 runs flanneld, node2 netweft: pod<->pod across both kinds, node<->pod, masquerade
    to the outside host; the two kinds' leases carry the same fields."""
    lab = _up(prefix, backend, nodes=2, flannel_nodes=1)
    assert lab.daemon_kind(lab.topo.node("node1")) == "flanneld"
    _assert_all_paths(lab)
    leases = list(_leases(lab).values())
    assert len(leases) == 2
    flannels = [v for v in leases if "NetweftNodeID" not in v]
    netwefts = [v for v in leases if "NetweftNodeID" in v]
    assert len(flannels) == len(netwefts) == 1
    # netweft's lease is Flannel's plus its node identity (documented in daemon/README.md)
    assert set(netwefts[0]) - {"NetweftNodeID"} == set(flannels[0])
    assert {v["BackendType"] for v in leases} == {backend}
    if backend == "vxlan":
        assert all(set(v["BackendData"]) == {"VNI", "VtepMAC"} for v in leases)
    _assert_root_namespace_untouched()
    envs = [flannel.parse_subnet_env(Path(n.subnet_env).read_text()) for n in lab.topo.nodes]
    assert set(envs[0]) == set(envs[1])
    assert envs[0]["FLANNEL_MTU"] == envs[1]["FLANNEL_MTU"]


@pytest.mark.parametrize("backend", ["vxlan", "host-gw"])
def test_netweft_node_joins_a_running_flannel_cluster_and_each_side_restarts(
        need_flanneld: flannel.FlannelBuild, prefix: str, backend: str) -> None:
    lab = _up(prefix, backend, nodes=2, flannel_nodes=2)
    _assert_all_paths(lab)
    joined = lab.add_node(pods=1)
    assert not lab.runs_flanneld(joined)
    _assert_all_paths(lab)
    subnets = {n.name: lab.node_subnet(n) for n in lab.topo.nodes}
    _restart(lab, "node1")           # flanneld
    _restart(lab, joined.name)       # netweft
    assert {n.name: lab.node_subnet(n) for n in lab.topo.nodes} == subnets
    _assert_all_paths(lab)


@pytest.mark.parametrize("backend", ["vxlan", "host-gw"])
def test_flanneld_node_joins_a_netweft_cluster(need_flanneld: flannel.FlannelBuild,
                                               prefix: str, backend: str) -> None:
    lab = _up(prefix, backend, nodes=2, flannel_nodes=0)
    joined = lab.add_node(pods=1, flanneld=True)
    assert lab.runs_flanneld(joined)
    _assert_all_paths(lab)


def _ping_stats(out: str) -> tuple[int, int]:
    """(transmitted, received) from iputils ping's summary line."""
    for line in out.splitlines():
        if "packets transmitted" in line:
            parts = line.split(",")
            return int(parts[0].split()[0]), int(parts[1].split()[0])
    raise AssertionError(f"no ping summary in {out!r}")


@pytest.mark.parametrize("backend", ["vxlan", "host-gw"])
def test_migrating_flannel_nodes_to_netweft_keeps_subnets_and_loses_no_packet(
        need_flanneld: flannel.FlannelBuild, prefix: str, backend: str) -> None:
    """Node by node: stop flanneld, start netweft with the same subnet.env. A ping every 20 ms
    between pods on the two nodes runs throughout and loses nothing; every subnet and VTEP MAC
    stays."""
    lab = _up(prefix, backend, nodes=2, flannel_nodes=2)
    _assert_all_paths(lab)
    before = {n.name: lab.node_subnet(n) for n in lab.topo.nodes}
    macs = {k: v.get("BackendData", {}).get("VtepMAC") for k, v in _leases(lab).items()}
    dst: IPv4Address = lab.pod_ip("node1-pod1")
    ping = subprocess.Popen(
        ["ip", "netns", "exec", lab.pod("node2-pod1").netns, "ping", "-n", "-i", "0.02",
         "-W", "2", str(dst)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        for name in ("node1", "node2"):
            lab.migrate_node(name)
            assert not lab.runs_flanneld(lab.topo.node(name))
    finally:
        ping.send_signal(signal.SIGINT)
        out, _ = ping.communicate(timeout=10)
    sent, received = _ping_stats(out)
    assert sent > 10 and received == sent, out
    assert {n.name: lab.node_subnet(n) for n in lab.topo.nodes} == before
    assert {k: v.get("BackendData", {}).get("VtepMAC")
            for k, v in _leases(lab).items()} == macs
    # netweft's IPAM continues host-local's allocations: a new pod never gets a running
    # pod's address (Flannel's network name, so the same host-local directory)
    new = lab.add_pod("node1")
    assert new.address.ip not in {s.ip for s in lab.pods.values() if s.pod.name != new.pod}
    _assert_all_paths(lab)
