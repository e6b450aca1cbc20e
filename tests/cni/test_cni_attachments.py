"""Attachments are the plugin's to keep straight (issue 8, faults 4-6, and issue 9 item 13's
launcher case): a repeated ADD is refused and leaves the first intact, a second interface never
takes the pod's routes, CHECK sees a changed MTU, GC of one network leaves another network's
pods on the same bridge alone, and a non-root run gets CNI error JSON."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable

import pytest
from netweft.cni.wiring import host_veth_name
from netweft.daemon import netns
from support.cni_harness import CniNode

CNI_LAUNCHERS = ("bash", "inproc")


def routes(ns: str) -> list[tuple[str, str, str]]:
    out = json.loads(netns.run(ns, ["ip", "-j", "route", "show"]).stdout)
    return sorted((r["dst"], r.get("gateway", ""), r["dev"]) for r in out)


def addresses(ns: str, dev: str) -> list[str]:
    info = json.loads(netns.run(ns, ["ip", "-j", "addr", "show", dev]).stdout)[0]
    return [f"{a['local']}/{a['prefixlen']}" for a in info["addr_info"] if a["family"] == "inet"]


def test_second_add_of_the_same_attachment_is_refused_and_the_first_kept(
        node: CniNode, netns_factory: Callable[[str], str]) -> None:
    pod = netns_factory("apod")
    first = node.call("ADD", "ctr-twice", f"/run/netns/{pod}")
    assert first.exit_code == 0, first.stdout
    mac = json.loads(netns.run(pod, ["ip", "-j", "link", "show", "eth0"]).stdout)[0]["address"]
    again = node.call("ADD", "ctr-twice", f"/run/netns/{pod}")
    assert again.exit_code == 1
    assert again.json()["code"] == 4
    assert "ctr-twice/eth0 is already attached" in again.json()["msg"]
    # eth0 was neither re-created nor lost its address; IPAM still holds it
    assert json.loads(netns.run(pod, ["ip", "-j", "link", "show", "eth0"]).stdout)[0][
        "address"] == mac
    assert addresses(pod, "eth0") == [first.json()["ips"][0]["address"]]
    assert len(node.ip_files()) == 1
    netns.run(pod, ["ping", "-c", "1", "-W", "2", "10.244.1.1"])
    check = node.call("CHECK", "ctr-twice", f"/run/netns/{pod}",
                      config=node.config(prevResult=first.json()))
    assert check.exit_code == 0, check.stdout


def test_second_interface_keeps_the_pod_routes_on_eth0(
        node: CniNode, netns_factory: Callable[[str], str]) -> None:
    pod = netns_factory("apod")
    assert node.call("ADD", "ctr-multi", f"/run/netns/{pod}").exit_code == 0
    before = routes(pod)
    assert ("default", "10.244.1.1", "eth0") in before
    assert ("10.244.0.0/16", "10.244.1.1", "eth0") in before
    net1 = node.call("ADD", "ctr-multi", f"/run/netns/{pod}", ifname="net1")
    assert net1.exit_code == 0, net1.stdout
    after = routes(pod)
    assert ("default", "10.244.1.1", "eth0") in after
    assert ("10.244.0.0/16", "10.244.1.1", "eth0") in after
    assert not [r for r in after if r[2] == "net1" and r[0] in ("default", "10.244.0.0/16")]
    assert node.call("DEL", "ctr-multi", f"/run/netns/{pod}", ifname="net1").exit_code == 0
    assert routes(pod) == before
    netns.run(pod, ["ping", "-c", "1", "-W", "2", "10.244.1.1"])


@pytest.mark.parametrize("version", ["1.1.0", "1.0.0"])
def test_check_sees_a_changed_mtu(node: CniNode, netns_factory: Callable[[str], str],
                                  version: str) -> None:
    """1.1.0 results carry the MTU; for 1.0.0 the configured one (FLANNEL_MTU) is expected."""
    pod = netns_factory("apod")
    add = node.call("ADD", "ctr-mtu", f"/run/netns/{pod}", version=version)
    assert add.exit_code == 0, add.stdout
    prev = add.json()
    conf = node.config(version, prevResult=prev)
    assert node.call("CHECK", "ctr-mtu", f"/run/netns/{pod}", config=conf).exit_code == 0
    netns.run(pod, ["ip", "link", "set", "eth0", "mtu", "1400"])
    check = node.call("CHECK", "ctr-mtu", f"/run/netns/{pod}", config=conf)
    assert check.exit_code == 1, check.stdout
    assert check.json()["code"] == 103
    assert check.json()["msg"] == f"eth0 in /run/netns/{pod} has MTU 1400, expected 1450"
    netns.run(pod, ["ip", "link", "set", "eth0", "mtu", "1450"])
    host = host_veth_name("ctr-mtu", "eth0")
    netns.run(node.node_netns, ["ip", "link", "set", host, "mtu", "1400"])
    check = node.call("CHECK", "ctr-mtu", f"/run/netns/{pod}", config=conf)
    assert check.json()["msg"] == f"host interface {host} has MTU 1400, expected 1450"
    # the same kind: the host end taken down
    netns.run(node.node_netns, ["ip", "link", "set", host, "mtu", "1450", "down"])
    check = node.call("CHECK", "ctr-mtu", f"/run/netns/{pod}", config=conf)
    assert check.json()["msg"] == f"host interface {host} is down"


def test_gc_of_one_network_leaves_another_network_on_the_same_bridge(
        node: CniNode, netns_factory: Callable[[str], str]) -> None:
    """Networks A (the node's) and B share the bridge cni0 and the node subnet, each with its
    own IPAM records: GC for A knows only A's valid attachments."""
    pod_a, pod_b, pod_leak = (netns_factory("apod") for _ in range(3))
    assert node.call("ADD", "ctr-a", f"/run/netns/{pod_a}").exit_code == 0
    conf_b = node.config(name="netb")
    add_b = node.call("ADD", "ctr-b", f"/run/netns/{pod_b}", config=conf_b)
    assert add_b.exit_code == 0, add_b.stdout
    ip_b = add_b.json()["ips"][0]["address"].split("/")[0]
    # a leaked attachment of A: its veth is on the bridge but its IPAM record is gone
    assert node.call("ADD", "ctr-leak", f"/run/netns/{pod_leak}").exit_code == 0
    for name in node.ip_files():
        with open(os.path.join(node.ipam_dir, name)) as f:
            if f.read().startswith("ctr-leak"):
                os.unlink(os.path.join(node.ipam_dir, name))
    valid = [{"containerID": "ctr-a", "ifname": "eth0"}]
    gc = node.call("GC", config=node.config(**{"cni.dev/valid-attachments": valid}), ifname="")
    assert gc.exit_code == 0, gc.stdout
    names = json.loads(netns.run(node.node_netns, ["ip", "-j", "link", "show"]).stdout)
    names = {link["ifname"] for link in names}
    assert host_veth_name("ctr-a", "eth0") in names
    assert host_veth_name("ctr-b", "eth0") in names  # B's pod keeps its eth0 ...
    assert host_veth_name("ctr-leak", "eth0") not in names  # A's own leak is collected
    assert os.path.exists(os.path.join(node.data_dir, "netb", ip_b))  # ... and its IP
    netns.run(pod_b, ["ping", "-c", "1", "-W", "2", "10.244.1.1"])
    alias = json.loads(netns.run(node.node_netns, ["ip", "-j", "-d", "link", "show",
                                                   host_veth_name("ctr-b", "eth0")]).stdout)
    assert alias[0]["ifalias"] == "netweft:netb"


def test_non_root_launcher_answers_with_cni_error_json(netns_factory: Callable[[str], str]
                                                       ) -> None:
    """The bash launcher's fallback exec of the Python launcher fails for a non-root caller
    (here: its file is root-only; on this machine the venv's interpreter is too): the caller
    gets CNI error JSON on stdout and exit 1, not bash's exit 126."""
    root = tempfile.mkdtemp(prefix="nwnr-")
    try:
        os.chmod(root, 0o755)
        node = CniNode(netns_factory("nonroot"), root)
        os.chmod(node.python_executable, 0o700)
        for command, stdin in (("VERSION", '{"cniVersion":"0.4.0"}'),
                               ("ADD", json.dumps(node.config("1.0.0")))):
            proc = subprocess.run(
                ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                 node.executable], input=stdin, capture_output=True, text=True, timeout=30,
                env={"CNI_COMMAND": command, "CNI_CONTAINERID": "ctr-nr", "CNI_IFNAME": "eth0",
                     "CNI_NETNS": "/proc/1/ns/net", "CNI_PATH": node.bin_dir,
                     "PATH": "/usr/bin:/bin"})
            assert proc.returncode == 1, (proc.returncode, proc.stdout, proc.stderr)
            err = json.loads(proc.stdout)
            assert err["code"] == 4
            assert err["cniVersion"] == json.loads(stdin)["cniVersion"]
            assert err["msg"] == (f"netweft: cannot execute {node.python_executable} as uid "
                                  "65534: the netweft CNI plugin must run as root")
    finally:
        shutil.rmtree(root, ignore_errors=True)
