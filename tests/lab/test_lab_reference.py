"""The lab's own machinery on the hand-programmed reference dataplane (no daemon, no CNI plugin):
underlay, outside host, the check matrix and iperf3, `lab exec`, and `lab down` after a crash."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import uuid

import pytest
from netweft.daemon import netns
from netweft.daemon.lab import procs
from netweft.daemon.lab.lab import Lab, down
from netweft.daemon.lab.topology import STATE_ROOT, LabSpec

pytestmark = pytest.mark.lab

NETWEFT = [sys.executable, "-m", "netweft.daemon.cli"]


def _prefix() -> str:
    return f"nwl{uuid.uuid4().hex[:4]}"


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*NETWEFT, "lab", *args], capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("backend", ["vxlan", "host-gw"])
def test_reference_lab_through_the_cli(need_root: None, backend: str) -> None:
    prefix = _prefix()
    try:
        up = _run("up", "--prefix", prefix, "--nodes", "2", "--pods-per-node", "2",
                  "--backend", backend, "--dataplane", "reference")
        assert up.returncode == 0, up.stderr
        again = _run("up", "--prefix", prefix, "--dataplane", "reference")
        assert again.returncode == 1 and "already exists" in again.stderr
        chk = _run("check", "--prefix", prefix, "--iperf-seconds", "1")
        assert chk.returncode == 0, chk.stdout + chk.stderr
        assert "pod-pod across nodes: 8/8 ok" in chk.stdout
        assert "pod-outside (masquerade): 4/4 ok" in chk.stdout
        assert "Gbit/s" in chk.stdout
        ex = _run("exec", "--prefix", prefix, "node1", "--", "ip", "-br", "addr", "show", "eth0")
        assert ex.returncode == 0 and "192.0.2.11/24" in ex.stdout
        bad = _run("exec", "--prefix", prefix, "node9", "--", "true")
        assert bad.returncode == 1 and "NODE: no 'node9'" in bad.stderr
        st = _run("status", "--prefix", prefix)
        assert st.returncode == 0 and "node2-pod2" in st.stdout
    finally:
        dn = _run("down", "--prefix", prefix)
    assert dn.returncode == 0, dn.stderr
    assert netns.list_names(f"{prefix}-") == []
    assert not os.path.exists(os.path.join(STATE_ROOT, prefix))


def test_check_fails_when_a_path_breaks(need_root: None) -> None:
    prefix = _prefix()
    try:
        lab = Lab.up(LabSpec(prefix=prefix, nodes=2, pods_per_node=1, dataplane="reference"))
        # drop node2's route to node1's pods: cross-node probes must fail, others not
        lab.exec("node2", ["ip", "route", "del", "10.244.1.0/24"], check=True)
        report = lab.check(iperf_seconds=0)
        assert not report.ok
        failed = {(r.probe.src, r.probe.dst) for r in report.results if not r.ok}
        assert ("node2-pod1", "node1-pod1") in failed
        assert ("node1-pod1", "outside") not in failed
        assert "check: FAILED" in report.render()
    finally:
        down(prefix)


def test_down_cleans_up_after_a_crash(need_root: None) -> None:
    """State dir gone, PID files gone, a stray process in a node: down still removes it all."""
    prefix = _prefix()
    try:
        lab = Lab.up(LabSpec(prefix=prefix, nodes=2, pods_per_node=1, dataplane="reference"))
        stray = procs.start(lab.topo.nodes[0].netns, ["sleep", "300"],
                            os.path.join(lab.state_dir, "pids", "stray.pid"), "/dev/null")
        whoami = procs.read_pidfile(lab.pidfile("whoami"))
        assert whoami is not None and procs.is_running(whoami)
        shutil.rmtree(lab.state_dir)               # the crash lost every record
        removed = down(prefix)
        assert any("leftover" in item for item in removed)
        assert procs.wait_gone(stray, 5) and procs.wait_gone(whoami, 5)
        assert netns.list_names(f"{prefix}-") == []
        assert down(prefix) == []                  # idempotent
    finally:
        down(prefix)
