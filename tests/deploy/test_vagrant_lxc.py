"""Issue 14: ``vagrant/run.sh --provider lxc --nodes 3`` brings up a real Vagrant cluster (Debian's
vagrant + vagrant-lxc + lxc, a box built from debootstrap), checks it and removes it, touching
nothing in the root network namespace. Slow (minutes; the box is cached by content under
/var/cache/netweft/boxes, so only the first run builds it)."""

from __future__ import annotations

import glob
import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
RUN_SH = ROOT / "vagrant" / "run.sh"


def _root_netns_state() -> dict[str, str]:
    """Links, addresses and routes of the root network namespace (the test's own)."""
    def out(*cmd: str) -> str:
        return subprocess.run(cmd, capture_output=True, text=True, check=True).stdout

    return {"links": out("ip", "-o", "link", "show"), "addrs": out("ip", "-o", "addr", "show"),
            "routes": out("ip", "route", "show", "table", "all")}


def _runs() -> set[str]:
    return set(glob.glob("/var/tmp/netweft-vagrant.*"))


@pytest.mark.slow
@pytest.mark.lab
def test_run_sh_lxc_three_nodes_pass_the_check_and_leave_nothing_behind() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root (network namespaces, lxc)")
    before_state, before_runs = _root_netns_state(), _runs()
    before_netns = set(os.listdir("/run/netns")) if os.path.isdir("/run/netns") else set()
    proc = subprocess.run(["bash", str(RUN_SH), "--provider", "lxc", "--nodes", "3"],
                          capture_output=True, text=True, timeout=1500)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-6000:]
    for line in ("pod-pod across nodes: 6/6 ok", "node-pod: 9/9 ok",
                 "node-service (ClusterIP): 3/3 ok", "outside-NodePort: 3/3 ok",
                 "NodePort from outside: node1 ok  node2 ok  node3 ok"):
        assert line in out, out[-6000:]
    after_netns = set(os.listdir("/run/netns")) if os.path.isdir("/run/netns") else set()
    assert not {n for n in after_netns - before_netns if n.startswith("nwvg-")}
    assert _runs() == before_runs
    assert _root_netns_state() == before_state


def test_run_sh_refuses_bad_arguments_with_one_line() -> None:
    for args, word in ((["--nodes", "1"], "--nodes"), (["--backend", "ipip"], "--backend"),
                       (["--provider", "virtualbox"], "--provider")):
        proc = subprocess.run(["bash", str(RUN_SH), *args], capture_output=True, text=True,
                              timeout=30)
        assert proc.returncode == 2
        assert word in proc.stderr.splitlines()[0]


@pytest.mark.slow
@pytest.mark.lab
def test_a_failed_vagrant_up_still_removes_the_namespaces_and_the_run(tmp_path: Path) -> None:
    """A box whose root filesystem tarball holds nothing (a real failure of vagrant-lxc's
    template, "Failed to extract rootfs"): run.sh exits non-zero and leaves nothing behind."""
    if os.geteuid() != 0:
        pytest.skip("needs root (network namespaces, lxc)")
    key = subprocess.run(["bash", str(ROOT / "vagrant" / "box" / "build.sh"), "--print-key",
                          "lxc"], capture_output=True, text=True, check=True).stdout.strip()
    box = tmp_path / "boxes" / f"lxc-{key}"
    box.mkdir(parents=True)
    (tmp_path / "empty").mkdir()
    subprocess.run(["tar", "-C", str(tmp_path / "empty"), "-czf", str(box / "rootfs.tar.gz"),
                    "."], check=True)
    (box / "lxc-config").write_text((ROOT / "vagrant" / "box" / "lxc-config").read_text())
    (box / "metadata.json").write_text('{"provider": "lxc", "version": "1.0.0"}\n')
    (box / ".built").write_text(key + "\n")
    before_state, before_runs = _root_netns_state(), _runs()
    before_netns = set(os.listdir("/run/netns")) if os.path.isdir("/run/netns") else set()
    proc = subprocess.run(["bash", str(RUN_SH), "--nodes", "2"], capture_output=True, text=True,
                          timeout=600, env={**os.environ, "NETWEFT_CACHE": str(tmp_path)})
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, out[-4000:]
    assert "vagrant up failed" in out, out[-4000:]
    assert "removed the cluster, the namespaces" in out, out[-4000:]
    after_netns = set(os.listdir("/run/netns")) if os.path.isdir("/run/netns") else set()
    assert not {n for n in after_netns - before_netns if n.startswith("nwvg-")}
    assert _runs() == before_runs
    assert _root_netns_state() == before_state
