"""The daemon hosts the CNI server: ADD/DEL through its socket wire a pod, count requests, and
write/remove the pod record for the service proxy."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest
from netweft.cni.install import install
from netweft.cni.invoke import PluginCall, invoke
from support import underlay
from support.nodelab import NodeLab
from support.polling import wait_for

REQUEST = ("import sys, json\n"
           "from cni.shim import call_server, encode_request\n"
           "code, out = call_server(sys.argv[2], encode_request(json.loads(sys.argv[1]),"
           " sys.stdin.buffer.read()))\n"
           "print(code); print(out.decode())\n")


@dataclass
class DaemonNode:
    """One node namespace running `netweft daemon` with its CNI server, and a conflist for it."""

    lab: NodeLab
    ns: str
    sock: str
    conf: dict[str, str]

    def call(self, command: str, cid: str, pod_ns: str, cni_args: str = "") -> tuple[int, str]:
        """One request over the daemon's unix socket, as the plugin's shim sends it."""
        env = {"CNI_COMMAND": command, "CNI_CONTAINERID": cid,
               "CNI_NETNS": f"/run/netns/{pod_ns}", "CNI_IFNAME": "eth0",
               "CNI_PATH": "/usr/lib/cni", "CNI_ARGS": cni_args}
        out = subprocess.run(
            ["ip", "netns", "exec", self.ns, sys.executable, "-c", REQUEST, json.dumps(env),
             self.sock], input=json.dumps(self.conf), capture_output=True, text=True,
            timeout=60).stdout
        code, _, body = out.partition("\n")
        return int(code), body


@pytest.fixture
def daemon_node(netns_factory: Callable[[str], str], tmp_path) -> Iterator[DaemonNode]:
    lab = NodeLab(netns_factory("dul"), [netns_factory("dn")], netns_factory("dout"),
                  str(tmp_path))
    try:
        lab.build()
        lab.set_config({"Network": "10.244.0.0/16", "Backend": {"Type": "vxlan"}})
        ns = lab.node_nss[0]
        lab.start_daemon(ns)
        wait_for(lambda: lab.http(ns, "/readyz")[0] == 200, what="daemon ready")
        sock = os.path.join(str(tmp_path), ns, "cni.sock")
        wait_for(lambda: os.path.exists(sock), what="CNI socket")
        conf = {"cniVersion": "1.1.0", "name": "netweft", "type": "netweft",
                "subnetFile": lab.paths(ns)["subnet_file"],
                "dataDir": str(tmp_path / "ipam"), "socketPath": sock,
                "logFile": str(tmp_path / "cni.log")}
        yield DaemonNode(lab, ns, sock, conf)
    finally:
        lab.close()


def test_cni_add_and_del_through_the_daemon(daemon_node: DaemonNode,
                                            netns_factory: Callable[[str], str]) -> None:
    lab, ns = daemon_node.lab, daemon_node.ns
    pod_ns = netns_factory("dpod")
    cid, args = "c0ffee0123456789", ("IgnoreUnknown=1;K8S_POD_NAMESPACE=default;"
                                     "K8S_POD_NAME=web-1;NETWEFT_POD_LABELS=app=web")
    code, body = daemon_node.call("ADD", cid, pod_ns, args)
    assert code == 0, body
    pod_ip = json.loads(body)["ips"][0]["address"].split("/")[0]
    assert underlay.ping(ns, pod_ip)
    metrics = lab.http(ns, "/metrics")[1]
    assert 'netweft_cni_requests_total{command="ADD",result="ok"} 1' in metrics
    assert 'netweft_cni_request_duration_seconds_count{command="ADD"} 1' in metrics
    key = f"/netweft/pods/{ns}/{cid}"
    wait_for(lambda: lab.etcdctl("get", key), what="pod record")
    record = json.loads(lab.etcdctl("get", key, "--print-value-only"))
    assert record["ips"] == [pod_ip] and record["name"] == "web-1"
    assert record["labels"] == {"app": "web"}
    code, body = daemon_node.call("DEL", cid, pod_ns, args)
    assert code == 0, body
    wait_for(lambda: not lab.etcdctl("get", key), what="pod record removed")


def test_records_of_pods_deleted_while_the_daemon_was_down_are_pruned_at_start(
        daemon_node: DaemonNode, netns_factory: Callable[[str], str], tmp_path) -> None:
    lab, ns = daemon_node.lab, daemon_node.ns
    pods = [netns_factory("dpod"), netns_factory("dpod")]
    kept, gone = "aaaa000011112222", "bbbb000011112222"
    for cid, pod_ns in ((kept, pods[0]), (gone, pods[1])):
        assert daemon_node.call("ADD", cid, pod_ns, f"K8S_POD_NAME=p-{cid[:4]}")[0] == 0
    key = f"/netweft/pods/{ns}"
    wait_for(lambda: lab.etcdctl("get", f"{key}/{gone}"), what="both records")
    assert json.loads(lab.etcdctl("get", f"{key}/{gone}", "--print-value-only"))["hostVeth"]
    lab.stop_daemon(ns)
    # With no daemon the installed plugin works in-process: the DEL cannot reach etcd.
    installed = install(str(tmp_path / "bin"), str(tmp_path / "net.d"))
    reply = invoke(PluginCall(installed.executable, "DEL", daemon_node.conf, container_id=gone,
                              netns=f"/run/netns/{pods[1]}", node_netns=ns))
    assert reply.exit_code == 0, reply.stdout + reply.stderr
    assert lab.etcdctl("get", f"{key}/{gone}")  # still there: nobody told etcd
    lab.start_daemon(ns)
    wait_for(lambda: not lab.etcdctl("get", f"{key}/{gone}"), what="stale record pruned")
    assert lab.etcdctl("get", f"{key}/{kept}")
