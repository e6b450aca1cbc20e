"""CNI_NETNS is resolved in the caller's mount namespace (issue 8, fault 3).

The CNI server runs in a private mount namespace (as a daemon in a DaemonSet container does, or
any server started before the runtime's bind mounts appear), and the pod namespace is created
afterwards in the test's mount namespace: the server itself only sees the empty placeholder file
under /run/netns. ADD, CHECK and DEL must still work, through both launchers (TCP and unix
socket), and a CNI_NETNS that is not a network namespace is refused with one clear error.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Iterator

import pytest
from netweft.daemon import netns
from support.cni_harness import CniNode


@pytest.fixture(params=["bash-tcp", "python-unix"])
def private_mount_node(request: pytest.FixtureRequest, netns_factory: Callable[[str], str],
                       tmp_path: os.PathLike[str]) -> Iterator[CniNode]:
    node = CniNode(netns_factory("mntnode"), str(tmp_path), options={"ipMasq": False})
    # propagation private: later bind mounts under /run/netns never reach the server
    node.start_server(tcp=request.param == "bash-tcp", command=[
        "unshare", "--mount", "--propagation", "private",
        sys.executable, "-m", "netweft.cni.server"])
    try:
        yield node
    finally:
        node.stop_server()


@pytest.mark.parametrize("under", ["/run/netns", "/var/run/netns"])
def test_add_check_del_with_server_in_another_mount_namespace(
        private_mount_node: CniNode, netns_factory: Callable[[str], str], under: str) -> None:
    """``/var/run/netns/...`` (containerd's form) crosses the absolute symlink /var/run -> /run,
    which must be resolved in the caller's root as well."""
    node = private_mount_node
    pod = netns_factory("mntpod")  # created after the server: only the placeholder is visible
    path = os.path.join(under, pod)
    add = node.call("ADD", "ctr-mnt", path)
    assert add.exit_code == 0, add.stdout + add.stderr
    result = add.json()
    assert result["interfaces"][2]["sandbox"] == path
    info = json.loads(netns.run(pod, ["ip", "-j", "addr", "show", "eth0"]).stdout)[0]
    assert f"{info['addr_info'][0]['local']}/{info['addr_info'][0]['prefixlen']}" == \
        result["ips"][0]["address"]
    check = node.call("CHECK", "ctr-mnt", path, config=node.config(prevResult=result))
    assert check.exit_code == 0, check.stdout
    delete = node.call("DEL", "ctr-mnt", path)
    assert delete.exit_code == 0, delete.stdout
    assert node.ip_files() == []
    links = json.loads(netns.run(pod, ["ip", "-j", "link", "show"]).stdout)
    assert [link["ifname"] for link in links] == ["lo"]
    with open(node.log_file) as f:
        log = f.read()
    assert "does not hold the peer socket" not in log  # the launcher's pid was accepted


@pytest.mark.parametrize("launcher", ["bash", "python", "inproc"])
def test_netns_that_is_a_plain_file_is_refused_clearly(
        launcher: str, netns_factory: Callable[[str], str], tmp_path: os.PathLike[str]) -> None:
    node = CniNode(netns_factory("plainns"), str(tmp_path), options={"ipMasq": False})
    if launcher != "inproc":
        node.start_server(tcp=launcher == "bash")
    try:
        plain = os.path.join(str(tmp_path), "not-a-netns")
        open(plain, "w").close()
        reply = node.call("ADD", "ctr-plain", plain)
        assert reply.exit_code == 1
        err = reply.json()
        assert err["code"] == 4, err
        assert err["msg"] == (f"CNI_NETNS: {plain} is not a network namespace (a plain file of "
                              "0 bytes: is its bind mount in another mount namespace?)")
        assert node.ip_files() == []  # the address was given back
        other = node.call("ADD", "ctr-plain2", "/proc/self/ns/mnt")
        assert other.json()["code"] == 4
        assert "not a network namespace" in other.json()["msg"]
    finally:
        node.stop_server()
