"""`netweft service create|list|show|delete`, run as the installed console script, real etcd."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

from netweft.kv.etcd import EtcdClient, EtcdSettings
from netweft.proxy.podrecords import put_pod
from netweft.proxy.records import PodRecord

NETWEFT = str(Path(sys.executable).parent / "netweft")


def netweft(endpoint: str, prefix: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([NETWEFT, "--etcd-endpoints", endpoint, *args],
                          capture_output=True, text=True, timeout=60,
                          env={"NETWEFT_SERVICES_PREFIX": prefix, "PATH": "/usr/bin:/bin"})


def add_pod(endpoint: str, prefix: str, cid: str, ip: str, name: str, node: str) -> None:
    async def main() -> None:
        async with EtcdClient(EtcdSettings.from_strings(endpoint), timeout=30) as etcd:
            await put_pod(etcd, prefix, PodRecord(cid, "default", name, node, (ip,),
                                                  {"app": "web"}))

    asyncio.run(main())


def test_create_list_show_delete(etcd_endpoint: str, etcd_prefix: str) -> None:
    prefix = etcd_prefix + "-svc"
    r = netweft(etcd_endpoint, prefix, "service", "create", "web", "--port", "80:8080/tcp",
                "--selector", "app=web", "--type", "NodePort", "--node-port", "30080",
                "--affinity")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("created service default/web: NodePort 10.")
    assert "80:30080->8080/TCP" in r.stdout

    r = netweft(etcd_endpoint, prefix, "service", "create", "dns", "-n", "kube-system",
                "--port", "dns=53/udp", "--port", "dns-tcp=53/tcp", "--selector",
                "k8s-app=dns", "--cluster-ip", "10.96.0.10", "--json")
    assert r.returncode == 0, r.stderr
    dns = json.loads(r.stdout)
    assert dns["clusterIP"] == "10.96.0.10" and len(dns["ports"]) == 2

    add_pod(etcd_endpoint, prefix, "c1", "10.244.1.5",
            "web-1", "node1")
    add_pod(etcd_endpoint, prefix, "c2", "10.244.2.5",
            "web-2", "node2")

    r = netweft(etcd_endpoint, prefix, "service", "list")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].split() == ["NAMESPACE", "NAME", "TYPE", "CLUSTER-IP", "PORTS", "SELECTOR",
                                "ENDPOINTS"]
    assert lines[1].split()[:4] == ["default", "web", "NodePort", lines[1].split()[3]]
    assert lines[1].split()[-1] == "2/2"
    assert lines[2].split()[:4] == ["kube-system", "dns", "ClusterIP", "10.96.0.10"]
    assert lines[2].split()[-1] == "0/0"

    r = netweft(etcd_endpoint, prefix, "service", "show", "web", "--json")
    shown = json.loads(r.stdout)
    assert shown["sessionAffinity"] is True and shown["ports"][0]["nodePort"] == 30080
    assert [e["address"] for e in shown["endpoints"]] == ["10.244.1.5", "10.244.2.5"]
    r = netweft(etcd_endpoint, prefix, "service", "show", "web")
    assert "Endpoints:" in r.stdout and "10.244.2.5" in r.stdout and "node2" in r.stdout

    r = netweft(etcd_endpoint, prefix, "service", "delete", "web")
    assert r.returncode == 0 and r.stdout.startswith("deleted service default/web")
    r = netweft(etcd_endpoint, prefix, "service", "list", "--json")
    assert [s["name"] for s in json.loads(r.stdout)] == ["dns"]


def test_mistakes_are_one_line(etcd_endpoint: str, etcd_prefix: str) -> None:
    prefix = etcd_prefix + "-svc"
    cases = [
        (["create", "x", "--port", "http"], "netweft: --port 'http': the service port must be "
                                            "1-65535"),
        (["create", "x", "--port", "80", "--port", "81"],
         "netweft: --port: name every port (name=PORT...) when there are several"),
        (["create", "x", "--port", "80", "--selector", "app"],
         "netweft: --selector: 'app' is not key=value"),
        (["create", "x", "--port", "80", "--cluster-ip", "192.0.2.1"],
         "netweft: --cluster-ip: 192.0.2.1 is not a usable address of the service range "
         "10.96.0.0/12"),
        (["create", "x", "--port", "80", "--service-cidr", "10.96.0.1/12"],
         "netweft: --service-cidr: '10.96.0.1/12' is not an IPv4 network (10.96.0.1/12 has "
         "host bits set)"),
        (["show", "nope"], "netweft: service default/nope does not exist"),
        (["delete", "nope"], "netweft: service default/nope does not exist"),
    ]
    for args, message in cases:
        r = netweft(etcd_endpoint, prefix, "service", *args)
        assert r.returncode == 1, (args, r.stdout)
        assert r.stderr.strip().splitlines() == [message], args
    r = netweft("http://127.0.0.1:1", prefix, "service", "list")
    assert r.returncode == 1 and len(r.stderr.strip().splitlines()) == 1
    assert "unreachable" in r.stderr


def test_tcp_and_udp_share_a_node_port(etcd_endpoint: str, etcd_prefix: str) -> None:
    """Issue 9 item 3, the command from the report: one node port for 53/UDP and 53/TCP, given
    twice or allocated once."""
    prefix = etcd_prefix + "-svc"
    dns = ("--port", "dns=53:5353/udp", "--port", "dns-tcp=53:5353/tcp", "--type", "NodePort")
    r = netweft(etcd_endpoint, prefix, "service", "create", "dns", *dns,
                "--node-port", "30053", "--node-port", "30053")
    assert r.returncode == 0, r.stderr
    assert "ports dns=53:30053->5353/UDP,dns-tcp=53:30053->5353/TCP " in r.stdout
    r = netweft(etcd_endpoint, prefix, "service", "create", "dns2", *dns, "--json")
    assert r.returncode == 0, r.stderr
    udp, tcp = json.loads(r.stdout)["ports"]
    assert udp["nodePort"] == tcp["nodePort"] != 30053
    r = netweft(etcd_endpoint, prefix, "service", "create", "dns3", *dns, "--node-port", "30053")
    assert r.returncode == 1
    assert r.stderr.strip() == "netweft: --node-port: 30053 is already in use"
