"""Real runtimes run netweft exactly as `netweft cni install` writes it (issue 8, faults 1-2).

podman 4.3.1 (Debian 12, CNI backend) and containerd 1.6.20 (Debian 12) through CRI with crictl
only know CNI results up to 1.0.0; a containerd 2.x (built by deploy/runtimes.sh) knows 1.1 and
reads ``cniVersions``. Each runs a container on the installed conflist, in a node namespace
whose CNI server is in another mount namespace (cni/callerns.py), with a published port
reached from another host namespace, from the node itself and from the pod (hairpin).
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest
from netweft.cni.runtimes import (
    ContainerdNode,
    PodmanNode,
    busybox_image,
    cli_install,
    http_get,
    netweft_cli,
)
from netweft.daemon import netns
from support.cni_harness import CniNode

NODE_IP = "192.0.2.1"  # the node's "public" address on a veth to the outside namespace
OUTSIDE_IP = "192.0.2.2"
HTTPD = ["/bin/httpd", "-f", "-p", "80", "-h", "/www"]
BODY = "netweft busybox\n"


@pytest.fixture(scope="module")
def image_tar(tmp_path_factory: pytest.TempPathFactory) -> str:
    return busybox_image(str(tmp_path_factory.mktemp("image") / "busybox.tar"))


@dataclass
class Host:
    node: str  # the node's network namespace
    outside: str  # another host on a link to the node
    cni: CniNode


@pytest.fixture
def host(netns_factory: Callable[[str], str], tmp_path: os.PathLike[str]) -> Iterator[Host]:
    """A node namespace with the plugin as installed and `netweft cni-server` running, and an
    outside namespace on a veth (192.0.2.0/24 exists only in these namespaces)."""
    node, outside = netns_factory("rtnode"), netns_factory("rtout")
    veth = f"nwv{os.getpid() % 100000}"
    subprocess.run(["ip", "-n", node, "link", "add", "eth0", "type", "veth", "peer", "name",
                    veth, "netns", outside], check=True)
    netns.run(node, ["ip", "addr", "add", f"{NODE_IP}/24", "dev", "eth0"])
    netns.run(node, ["ip", "link", "set", "eth0", "up"])
    netns.run(outside, ["ip", "link", "set", veth, "name", "eth0"])
    netns.run(outside, ["ip", "addr", "add", f"{OUTSIDE_IP}/24", "dev", "eth0"])
    netns.run(outside, ["ip", "link", "set", "eth0", "up"])
    cni = CniNode(node, os.path.join(str(tmp_path), "cni"))
    yield Host(node, outside, cni)
    cni.stop_server()


def installed(host: Host, *options: str) -> dict:
    """Install with the CLI (exactly what a user runs), start the server; the conflist."""
    cli_install(host.cni, *options)
    host.cni.start_server(command=[*netweft_cli(), "cni-server"])
    with open(host.cni.conflist_path) as f:
        return json.load(f)


def versions_used(host: Host) -> list[str]:
    """The cniVersion of every ADD the plugin served, from its log (``v=1.0.0``)."""
    with open(host.cni.log_file) as f:
        return [w[2:] for line in f if " ADD " in line for w in line.split()
                if w.startswith("v=")]


def nat_rules(host: Host) -> str:
    """The node's iptables nat table, where portmap keeps its DNAT rules."""
    return netns.run(host.node, ["iptables-save", "-t", "nat"]).stdout


def check_published(host: Host, port: int, pod_get: Callable[[str], str]) -> None:
    """The published port answers from another host, from the node (its public address and
    the bridge's) and from the pod itself through the node (hairpin)."""
    assert http_get(host.outside, f"http://{NODE_IP}:{port}/") == BODY
    assert http_get(host.node, f"http://{NODE_IP}:{port}/") == BODY
    assert http_get(host.node, f"http://10.244.1.1:{port}/") == BODY
    assert BODY in pod_get(f"{NODE_IP}:{port}")


def nc_get(run: Callable[..., subprocess.CompletedProcess[str]]) -> Callable[[str], str]:
    def get(target: str) -> str:
        addr, port = target.split(":")
        return run("sh", "-c", f"printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 5 {addr} {port}",
                   timeout=30).stdout
    return get


def test_podman_runs_a_container_on_the_installed_conflist_with_a_published_port(
        host: Host, image_tar: str, tmp_path: os.PathLike[str]) -> None:
    conflist = installed(host)
    assert conflist["cniVersion"] == "1.0.0"
    assert [p["type"] for p in conflist["plugins"]] == ["netweft", "portmap"]
    podman = PodmanNode(host.node, os.path.join(str(tmp_path), "podman"), host.cni.bin_dir,
                        host.cni.conf_dir, image_tar)
    try:
        podman.run("web", "netweft", HTTPD, ports=["8080:80"])
        assert podman.ip_of("web", "netweft").startswith("10.244.1.")
        check_published(host, 8080, nc_get(lambda *c, **k: podman.exec("web", *c, **k)))
        assert versions_used(host) == ["1.0.0"]
        assert "8080" in nat_rules(host)
        podman.podman("rm", "-f", "-t", "0", "web")
        assert host.cni.ip_files() == []  # DEL through the runtime released the address
        assert "8080" not in nat_rules(host)  # and portmap its DNAT rules
    finally:
        podman.close()


@pytest.mark.parametrize("version", ["1.6", "2"])
def test_containerd_runs_a_pod_on_the_installed_conflist_with_a_host_port(
        host: Host, image_tar: str, tmp_path: os.PathLike[str], version: str) -> None:
    conflist = installed(host)
    ctrd = ContainerdNode(host.node, os.path.join(str(tmp_path), "containerd"),
                          host.cni.bin_dir, host.cni.conf_dir, image_tar, version=version)
    try:
        ready = {c["type"]: c["status"] for c in ctrd.info()["status"]["conditions"]}
        assert ready["NetworkReady"] is True
        pod = ctrd.run_pod("web", HTTPD, host_ports=[(80, 8081)])
        assert pod.ip.startswith("10.244.1.")
        check_published(host, 8081, nc_get(lambda *c, **k: ctrd.exec(pod, *c, **k)))
        # the best version the whole chain (Debian's portmap stops at 1.0.0) and the runtime
        # support: cniVersions for containerd 2, cniVersion for 1.6
        assert conflist["cniVersions"][-1] == "1.0.0"
        assert versions_used(host) == ["1.0.0"]
        ctrd.remove_pod(pod)
        assert host.cni.ip_files() == []
        assert "8081" not in nat_rules(host)
    finally:
        ctrd.close()


def test_same_conflist_gives_each_runtime_its_best_version(
        host: Host, image_tar: str, tmp_path: os.PathLike[str]) -> None:
    """Without portmap the chain is ours alone: containerd 2.x picks 1.1.0 from cniVersions,
    containerd 1.6 and podman use cniVersion 1.0.0, all from the same file."""
    conflist = installed(host, "--no-portmap")
    assert conflist["cniVersion"] == "1.0.0" and conflist["cniVersions"][-1] == "1.1.0"
    for version in ("2", "1.6"):
        ctrd = ContainerdNode(host.node, os.path.join(str(tmp_path), f"containerd{version}"),
                              host.cni.bin_dir, host.cni.conf_dir, image_tar, version=version)
        try:
            ctrd.run_pod(f"best{version.replace('.', '')}", None)
        finally:
            ctrd.close()
    podman = PodmanNode(host.node, os.path.join(str(tmp_path), "podman"), host.cni.bin_dir,
                        host.cni.conf_dir, image_tar)
    try:
        podman.run("best", "netweft", ["/bin/sleep", "600"])
    finally:
        podman.close()
    assert versions_used(host) == ["1.1.0", "1.0.0", "1.0.0"]
