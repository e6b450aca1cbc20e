"""A 3-node netweft lab with the host-gw backend: the connectivity matrix, plain IP between nodes
on the underlay (no encapsulation), routes via the peers' underlay addresses, subnet.env.
One lab for the whole module; it is always torn down."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Interface
from pathlib import Path

import pytest
from netweft.daemon import netns
from netweft.daemon.lab import inspect
from netweft.daemon.lab.capture import Capture
from netweft.daemon.lab.lab import Lab

pytestmark = [pytest.mark.lab, pytest.mark.slow]
LAB = {"nodes": 3, "pods_per_node": 2, "backend": "host-gw"}


def test_full_connectivity_matrix(lab: Lab) -> None:
    report = lab.check(iperf_seconds=1)
    assert report.ok, report.render()


def test_routes_go_via_peer_underlay_addresses(lab: Lab) -> None:
    for node in lab.topo.nodes:
        for peer in lab.topo.nodes:
            if peer.name == node.name:
                continue
            subnet = lab.node_network(peer)
            route = inspect.route_to(node.netns, str(subnet))
            assert route is not None, f"{node.name} has no route to {peer.name}'s {subnet}"
            assert route["gateway"] == str(peer.ip) and route["dev"] == "eth0"
        assert inspect.link(node.netns, "flannel.1") is None


def test_subnet_env(lab: Lab) -> None:
    for node in lab.topo.nodes:
        env = dict(line.split("=", 1) for line in Path(node.subnet_env).read_text().split()
                   if "=" in line)
        assert env["FLANNEL_MTU"] == "1500"          # no encapsulation overhead
        assert env["FLANNEL_NETWORK"] == "10.244.0.0/16"
        assert IPv4Interface(env["FLANNEL_SUBNET"]).network == lab.node_network(node)
        lease = lab.node_lease(node)
        assert lease is not None and lease["BackendType"] == "host-gw"
        assert lease["PublicIP"] == str(node.ip)


def test_cross_node_traffic_is_plain_ip(lab: Lab, tmp_path: Path) -> None:
    from scapy.all import ICMP, IP, UDP, rdpcap

    src, dst = lab.pod("node1-pod1"), lab.pod("node3-pod2")
    src_ip, dst_ip = lab.pod_ip(src.name), lab.pod_ip(dst.name)
    port = lab.topo.node("node1").underlay_port
    cap = Capture(lab.topo.underlay_ns, port, "icmp or udp", str(tmp_path / "hostgw.pcap")).start()
    try:
        netns.run(src.netns, ["ping", "-c", "3", "-i", "0.1", "-W", "1", str(dst_ip)])
    finally:
        cap.stop()
    packets = rdpcap(cap.path)
    icmp = [p for p in packets if p.haslayer(ICMP) and not p.haslayer(UDP)]
    assert len(icmp) >= 6
    for p in icmp:
        assert {p[IP].src, p[IP].dst} == {str(src_ip), str(dst_ip)}   # pod addresses on the wire
    assert not [p for p in packets if p.haslayer(UDP)
                and IPv4Address(p[IP].src) in lab.topo.spec.network]
