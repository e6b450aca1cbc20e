"""The daemon hosts the CNI server: ADD/DEL through its socket wire a pod, count requests, and
write/remove the pod record for the service proxy."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable

from cni.install import install
from cni.invoke import PluginCall, invoke
from daemon import underlay
from daemon.nodelab import NodeLab, wait_for

REQUEST = ("import sys, json\n"
           "from cni.shim import call_server, encode_request\n"
           "code, out = call_server(sys.argv[2], encode_request(json.loads(sys.argv[1]),"
           " sys.stdin.buffer.read()))\n"
           "print(code); print(out.decode())\n")


def test_cni_add_and_del_through_the_daemon(netns_factory: Callable[[str], str],
                                            tmp_path) -> None:
    lab = NodeLab(netns_factory("dul"), [netns_factory("dn")], netns_factory("dout"),
                  str(tmp_path))
    pod_ns = netns_factory("dpod")
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
        env = {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "c0ffee0123456789",
               "CNI_NETNS": f"/run/netns/{pod_ns}", "CNI_IFNAME": "eth0",
               "CNI_PATH": "/usr/lib/cni",
               "CNI_ARGS": "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web-1;"
                           "NETWEFT_POD_LABELS=app=web"}

        def call(command: str) -> tuple[int, str]:
            out = subprocess.run(
                ["ip", "netns", "exec", ns, sys.executable, "-c", REQUEST,
                 json.dumps(dict(env, CNI_COMMAND=command)), sock],
                input=json.dumps(conf), capture_output=True, text=True, timeout=60).stdout
            code, _, body = out.partition("\n")
            return int(code), body

        code, body = call("ADD")
        assert code == 0, body
        pod_ip = json.loads(body)["ips"][0]["address"].split("/")[0]
        assert underlay.ping(ns, pod_ip)
        metrics = lab.http(ns, "/metrics")[1]
        assert 'netweft_cni_requests_total{command="ADD",result="ok"} 1' in metrics
        assert 'netweft_cni_request_duration_seconds_count{command="ADD"} 1' in metrics
        key = f"/netweft/pods/{ns}/c0ffee0123456789"
        wait_for(lambda: lab.etcdctl("get", key), what="pod record")
        record = json.loads(lab.etcdctl("get", key, "--print-value-only"))
        assert record["ips"] == [pod_ip] and record["name"] == "web-1"
        assert record["labels"] == {"app": "web"}
        code, body = call("DEL")
        assert code == 0, body
        wait_for(lambda: not lab.etcdctl("get", key), what="pod record removed")
    finally:
        lab.close()


def test_records_of_pods_deleted_while_the_daemon_was_down_are_pruned_at_start(
        netns_factory: Callable[[str], str], tmp_path) -> None:
    lab = NodeLab(netns_factory("dul"), [netns_factory("dn")], netns_factory("dout"),
                  str(tmp_path))
    pods = [netns_factory("dpod"), netns_factory("dpod")]
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

        def call(command: str, cid: str, pod_ns: str) -> tuple[int, str]:
            env = {"CNI_COMMAND": command, "CNI_CONTAINERID": cid,
                   "CNI_NETNS": f"/run/netns/{pod_ns}", "CNI_IFNAME": "eth0",
                   "CNI_PATH": "/usr/lib/cni",
                   "CNI_ARGS": f"K8S_POD_NAMESPACE=default;K8S_POD_NAME=p-{cid[:4]}"}
            out = subprocess.run(
                ["ip", "netns", "exec", ns, sys.executable, "-c", REQUEST, json.dumps(env),
                 sock], input=json.dumps(conf), capture_output=True, text=True,
                timeout=60).stdout
            code, _, body = out.partition("\n")
            return int(code), body

        kept, gone = "aaaa000011112222", "bbbb000011112222"
        for cid, pod_ns in ((kept, pods[0]), (gone, pods[1])):
            assert call("ADD", cid, pod_ns)[0] == 0
        key = f"/netweft/pods/{ns}"
        wait_for(lambda: lab.etcdctl("get", f"{key}/{gone}"), what="both records")
        assert json.loads(lab.etcdctl("get", f"{key}/{gone}", "--print-value-only"))["hostVeth"]
        lab.stop_daemon(ns)
        # With no daemon the installed plugin works in-process: the DEL cannot reach etcd.
        installed = install(str(tmp_path / "bin"), str(tmp_path / "net.d"))
        reply = invoke(PluginCall(installed.executable, "DEL", conf, container_id=gone,
                                  netns=f"/run/netns/{pods[1]}", node_netns=ns))
        assert reply.exit_code == 0, reply.stdout + reply.stderr
        assert lab.etcdctl("get", f"{key}/{gone}")  # still there: nobody told etcd
        lab.start_daemon(ns)
        wait_for(lambda: not lab.etcdctl("get", f"{key}/{gone}"), what="stale record pruned")
        assert lab.etcdctl("get", f"{key}/{kept}")
    finally:
        lab.close()
