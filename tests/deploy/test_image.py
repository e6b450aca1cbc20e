"""Issue 11 item 4: netweft's image, built offline (deploy/image.sh: the boxes' Debian 12 root
filesystem with netweft installed from a wheelhouse), imported with the real `podman import` into
a podman store of its own and run by the real podman (its own config and storage, --network none,
inside a network namespace of this test): `netweft daemon --help` and the DaemonSet's CNI install
step (`netweft cni install` into a host directory mounted at /host, as deploy/kubernetes/ does).

The image is cached by content (/var/cache/netweft/images): the first run on a machine builds the
shared root filesystem and the image (minutes), later runs only import it. deploy/Containerfile,
the same image for users from python:3.11-slim, needs a registry and is not built here."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from netweft.cni.runtimes import PodmanNode

ROOT = Path(__file__).resolve().parents[2]
IMAGE_REF = "localhost/netweft:offline"
IMAGE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


@pytest.fixture(scope="module")
def netweft_image_tar() -> str:
    if os.geteuid() != 0:
        pytest.skip("needs root (chroot, podman's own store)")
    proc = subprocess.run(["bash", str(ROOT / "deploy" / "image.sh")], capture_output=True,
                          text=True, timeout=3000)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc.stdout.strip().splitlines()[-1]


@pytest.mark.slow
def test_offline_image_runs_daemon_help_and_installs_the_cni_plugin_into_a_host_dir(
        netweft_image_tar: str, netns_factory: Callable[[str], str], tmp_path: Path) -> None:
    host = tmp_path / "host"
    (host / "opt/cni/bin").mkdir(parents=True)
    (host / "etc/cni/net.d").mkdir(parents=True)
    node = PodmanNode(netns_factory("img"), str(tmp_path / "podman"), str(host / "opt/cni/bin"),
                      str(host / "etc/cni/net.d"))
    try:
        node.podman("import", "-q", "--change", 'CMD ["netweft","daemon","--help"]',
                    "--change", f"ENV PATH={IMAGE_PATH}",
                    netweft_image_tar, IMAGE_REF, timeout=600)
        help_out = node.podman("run", "--rm", "--network", "none", IMAGE_REF).stdout
        assert "Usage: netweft daemon" in help_out
        assert "--kube-subnet-mgr" in help_out
        install = node.podman(
            "run", "--rm", "--network", "none", "-v", f"{host}:/host", IMAGE_REF,
            "netweft", "cni", "install", "--bin-dir", "/host/opt/cni/bin",
            "--conf-dir", "/host/etc/cni/net.d", timeout=180)
        assert install.returncode == 0, install.stderr
    finally:
        node.close()
    launcher = (host / "opt/cni/bin/netweft").read_text()
    assert launcher.startswith("#!/bin/bash -p\n# netweft CNI plugin launcher")
    assert os.access(host / "opt/cni/bin/netweft", os.X_OK)
    # the Python launcher names the image's interpreter (on a host without it the bash launcher
    # answers "try again later": tests/cni/test_cni_launcher_no_python.py)
    assert (host / "opt/cni/bin/netweft-py").read_text().startswith(
        "#!/opt/netweft/.venv/bin/python")
    for plugin in ("portmap", "loopback"):  # from the image's containernetworking-plugins
        assert os.access(host / "opt/cni/bin" / plugin, os.X_OK), plugin
    conflist = json.loads((host / "etc/cni/net.d/10-netweft.conflist").read_text())
    assert [p["type"] for p in conflist["plugins"]] == ["netweft", "portmap"]
