"""A 3-node netweft lab with the vxlan backend (real etcd, real daemons, the real CNI plugin run
inside the node namespaces): the connectivity matrix, VXLAN on the wire with the configured VNI
and port, subnet.env and masquerade, lease removal and node joins, a daemon killed with -9, and
an etcd outage. One lab for the whole module; it is always torn down."""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from ipaddress import IPv4Address, IPv4Interface, IPv4Network
from pathlib import Path

import pytest
from netweft.daemon import netns
from netweft.daemon.lab import check, inspect, whoami
from netweft.daemon.lab.capture import Capture
from netweft.daemon.lab.lab import Lab
from netweft.daemon.lab.topology import INTERNET_IP, WHOAMI_PORT
from support.polling import poll_until

pytestmark = [pytest.mark.lab, pytest.mark.slow]

VNI = 7
PORT = 4790
DEV = f"flannel.{VNI}"
CONVERGENCE = 2.0       # the bound for dropping/adding a peer on every node
LAB = {"nodes": 3, "pods_per_node": 2, "backend": "vxlan", "vni": VNI, "port": PORT}


def _until(pred, timeout: float, step: float = 0.02) -> bool:  # type: ignore[no-untyped-def]
    return bool(poll_until(pred, timeout, step))


def _whoami_from(ns: str, host: IPv4Address) -> str:
    proc = netns.run(ns, [sys.executable, "-m", "netweft.daemon.lab.whoami", "ask", str(host)],
                     check=False)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip()


def test_full_connectivity_matrix(lab: Lab) -> None:
    report = lab.check(iperf_seconds=1)
    assert report.ok, report.render()
    assert report.throughput is not None and report.throughput.bits_per_second > 0


def test_cross_node_traffic_is_vxlan_with_configured_vni_and_port(
        lab: Lab, tmp_path: Path) -> None:
    from scapy.all import ICMP, IP, UDP, VXLAN, bind_layers, rdpcap

    bind_layers(UDP, VXLAN, dport=PORT)
    src, dst = lab.pod("node1-pod1"), lab.pod("node2-pod1")
    src_ip, dst_ip = lab.pod_ip(src.name), lab.pod_ip(dst.name)
    n1, n2 = lab.topo.node("node1"), lab.topo.node("node2")
    cap = Capture(lab.topo.underlay_ns, n1.underlay_port, "udp",
                  str(tmp_path / "vxlan.pcap")).start()
    try:
        netns.run(src.netns, ["ping", "-c", "3", "-i", "0.1", "-W", "1", str(dst_ip)])
    finally:
        cap.stop()
    frames = [p for p in rdpcap(cap.path) if p.haslayer(VXLAN)]
    assert frames, "no VXLAN frames on node1's underlay port"
    icmp = [p for p in frames if p[VXLAN].haslayer(ICMP)]
    assert len(icmp) >= 6  # 3 requests + 3 replies
    for p in icmp:
        outer, inner = p[IP], p[VXLAN][IP]
        assert p[UDP].dport == PORT
        assert p[VXLAN].vni == VNI
        assert {outer.src, outer.dst} == {str(n1.ip), str(n2.ip)}
        assert {inner.src, inner.dst} == {str(src_ip), str(dst_ip)}
    # nothing pod-addressed travels unencapsulated
    plain = [p for p in rdpcap(cap.path) if p.haslayer(IP) and not p.haslayer(VXLAN)
             and IPv4Address(p[IP].src) in lab.topo.spec.network]
    assert plain == []


def test_subnet_env_and_leases(lab: Lab) -> None:
    subnets = set()
    for node in lab.topo.nodes:
        with open(node.subnet_env) as f:
            env = dict(line.strip().split("=", 1) for line in f if "=" in line)
        assert env["FLANNEL_NETWORK"] == "10.244.0.0/16"
        assert env["FLANNEL_MTU"] == "1450"        # 1500 underlay - 50 VXLAN overhead
        assert env["FLANNEL_IPMASQ"] == "true"
        iface = IPv4Interface(env["FLANNEL_SUBNET"])
        assert iface.network.prefixlen == 24 and iface.ip == iface.network.network_address + 1
        subnets.add(iface.network)
        lease = lab.node_lease(node)
        assert lease is not None and lease["PublicIP"] == str(node.ip)
        assert lease["BackendType"] == "vxlan" and lease["BackendData"]["VNI"] == VNI
        for pod in lab.topo.pods_on(node.name):
            assert lab.pod_ip(pod.name) in iface.network
    assert len(subnets) == 3


def test_masquerade_to_outside_but_pod_source_between_pods(lab: Lab) -> None:
    for pod in lab.topo.pods:
        node_ip = lab.topo.node(pod.node).ip
        assert _whoami_from(pod.netns, INTERNET_IP) == str(node_ip)
    server, client = lab.pod("node2-pod2"), lab.pod("node1-pod2")
    pid_file = os.path.join(lab.state_dir, "pids", "whoami-pod.pid")
    from netweft.daemon.lab import procs
    procs.start(server.netns, [sys.executable, "-m", "netweft.daemon.lab.whoami", "serve"],
                pid_file, "/dev/null")
    try:
        assert check.wait_listening(server.netns, WHOAMI_PORT)
        assert _whoami_from(client.netns, lab.pod_ip(server.name)) == str(lab.pod_ip(client.name))
    finally:
        procs.stop(pid_file)
    assert whoami.DEFAULT_PORT == WHOAMI_PORT


def _peer_state(lab: Lab, on: str, subnet: IPv4Network, mac: str) -> dict[str, bool]:
    return inspect.has_peer(lab.topo.node(on).netns, DEV, str(subnet), mac)


def test_lease_removed_then_node_added(lab: Lab) -> None:
    gone = lab.topo.node("node3")
    subnet = lab.node_network(gone)
    lease = lab.node_lease(gone)
    assert subnet is not None and lease is not None
    mac = lease["BackendData"]["VtepMAC"]
    others = [n.name for n in lab.topo.nodes if n.name != gone.name]
    for name in others:
        assert all(_peer_state(lab, name, subnet, mac).values())
    # the node dies for good (kill -9, no goodbye) and its lease is removed
    lab.stop_daemon(gone, sig=signal.SIGKILL)
    assert lab.etcd.delete(lab.lease_key(subnet)) == 1
    for name in others:
        assert _until(lambda name=name: not any(_peer_state(lab, name, subnet, mac).values()),
                      CONVERGENCE), f"{name} still has {_peer_state(lab, name, subnet, mac)}"
    # a new node joins: reachable from every node within the bound, then from every pod
    lab.remove_node(gone.name)
    new = lab.add_node(pods=0)
    joined = os.stat(new.subnet_env).st_mtime
    new_subnet = lab.node_network(new)
    new_lease = lab.node_lease(new)
    assert new_subnet is not None and new_lease is not None
    new_mac = new_lease["BackendData"]["VtepMAC"]
    for name in others:
        assert _until(lambda name=name: all(_peer_state(lab, name, new_subnet, new_mac).values()),
                      max(0.0, joined + CONVERGENCE - time.time())), \
            f"{name}: {_peer_state(lab, name, new_subnet, new_mac)}"
    lab.add_pod(new.name)
    report = lab.check(iperf_seconds=0)
    assert report.ok, report.render()


def test_kill9_restart_keeps_subnet_mac_and_flow(lab: Lab) -> None:
    node = lab.topo.node("node2")
    before_env = Path(node.subnet_env).read_text()
    before_mac = inspect.link(node.netns, DEV)["address"]  # type: ignore[index]
    src, dst = lab.pod("node1-pod1"), lab.pod("node2-pod1")
    # a 10 s flow (complete, so no reply is cut off) spanning the kill, the restart and the new
    # daemon's first reconcile
    flow = check.start_ping_flow(src.netns, lab.pod_ip(dst.name), count=400, interval=0.025)
    time.sleep(0.5)
    lab.stop_daemon(node, sig=signal.SIGKILL)
    time.sleep(0.3)
    lab.start_daemon(node)
    lab.wait_daemon_ready(node)
    assert flow.proc.poll() is None, "the restart outlasted the ping flow"
    sent, received = flow.wait(timeout=30)
    assert sent == 400 and received == sent, f"lost {sent - received} of {sent}"
    assert Path(node.subnet_env).read_text() == before_env
    assert inspect.link(node.netns, DEV)["address"] == before_mac  # type: ignore[index]
    lease = lab.node_lease(node)
    assert lease is not None and lease["BackendData"]["VtepMAC"] == before_mac
    assert lab.check(iperf_seconds=0).ok


def test_etcd_outage_keeps_traffic_and_daemons_resync(lab: Lab) -> None:
    daemons = {n.name: lab.daemon_record(n) for n in lab.topo.nodes}
    assert all(daemons.values())
    src, dst = lab.pod("node1-pod1"), lab.pod("node2-pod1")
    lab.stop_etcd()
    outage = time.monotonic()
    flow = check.start_ping_flow(src.netns, lab.pod_ip(dst.name), count=150, interval=0.2)
    sent, received = flow.wait(timeout=60)
    assert time.monotonic() - outage >= 27
    assert sent == 150 and received == sent, f"lost {sent - received} of {sent} during outage"
    lab.start_etcd()
    # a change made after etcd is back reaches every daemon without a restart
    subnet = IPv4Network("10.244.250.0/24")
    mac = "0e:aa:bb:cc:dd:ee"
    value = {"PublicIP": "192.0.2.250", "BackendType": "vxlan",
             "BackendData": {"VNI": VNI, "VtepMAC": mac}}
    lab.etcd.put(lab.lease_key(subnet), json.dumps(value), ttl=300)
    try:
        for node in lab.topo.nodes:
            assert _until(lambda node=node: all(_peer_state(lab, node.name, subnet, mac).values()),
                          30), f"{node.name} did not resync after the outage"
    finally:
        lab.etcd.delete(lab.lease_key(subnet))
    for node in lab.topo.nodes:
        assert _until(lambda node=node: not any(_peer_state(lab, node.name, subnet, mac).values()),
                      30)
        assert lab.daemon_record(node) == daemons[node.name], f"{node.name}'s daemon restarted"
