"""Pure parts of the lab: the topology plan, the CNI conflist and args, the probe plan."""

from __future__ import annotations

import json
from ipaddress import IPv4Address, IPv4Network

import pytest
from netweft.daemon.lab import check
from netweft.daemon.lab.lab import proxy_command
from netweft.daemon.lab.procs import ProcessRecord
from netweft.daemon.lab.topology import (
    ETCD_IP,
    GATEWAY_IP,
    INTERNET_IP,
    LabSpec,
    LabSpecError,
    cni_args,
    cni_install_args,
    network_config,
    plan,
)


def test_plan_names_addresses_and_paths() -> None:
    topo = plan(LabSpec(prefix="nwlx", nodes=3, pods_per_node=2, state_root="/tmp/st"))
    assert [n.netns for n in topo.nodes] == ["nwlx-node1", "nwlx-node2", "nwlx-node3"]
    assert [str(n.ip) for n in topo.nodes] == ["192.0.2.11", "192.0.2.12", "192.0.2.13"]
    assert len({n.ip for n in topo.nodes} | {ETCD_IP, GATEWAY_IP}) == 5
    assert [p.name for p in topo.pods_on("node2")] == ["node2-pod1", "node2-pod2"]
    assert topo.pods[0].netns == "nwlx-node1-pod1"
    assert len({p.container_id for p in topo.pods}) == 6
    assert topo.node("node1").subnet_env == "/tmp/st/nwlx/nodes/node1/subnet.env"
    assert topo.infra_namespaces() == ["nwlx-underlay", "nwlx-etcd", "nwlx-outside"]


@pytest.mark.parametrize("changes, field", [
    ({"nodes": 0}, "--nodes"), ({"backend": "udp"}, "--backend"), ({"prefix": "NW"}, "--prefix"),
    ({"pods_per_node": -1}, "--pods-per-node"), ({"vni": 2**24}, "--vni"),
    ({"subnet_len": 16}, "--subnet-len"), ({"subnet_len": 17}, "--subnet-len"),
    ({"port": 0}, "--port"),
    ({"proxy_mode": "ipvs"}, "--proxy-mode"),
    ({"nodes": 2, "flannel_nodes": 3}, "--flannel-nodes"),
    ({"flannel_nodes": 1, "backend": "wireguard"}, "--flannel-nodes"),
    ({"flannel_nodes": 1, "dataplane": "reference"}, "--flannel-nodes"),
])
def test_spec_errors_name_the_option(changes: dict, field: str) -> None:
    with pytest.raises(LabSpecError, match=field):
        LabSpec(**changes).validate()


def test_spec_round_trips_through_dict() -> None:
    spec = LabSpec(prefix="nwly", nodes=5, backend="host-gw", network=IPv4Network("10.9.0.0/16"),
                   proxy_mode="iptables", flannel_nodes=2)
    assert LabSpec.from_dict(json.loads(json.dumps(spec.to_dict()))) == spec


def test_proxy_runs_in_the_labs_mode() -> None:
    topo = plan(LabSpec(prefix="nwlx", proxy_mode="iptables", state_root="/tmp/st"))
    cmd = proxy_command(topo, topo.node("node1"))
    assert cmd[cmd.index("--mode") + 1] == "iptables"


def test_network_config_is_flannel_json() -> None:
    assert network_config(LabSpec(vni=7, port=4789)) == {
        "Network": "10.244.0.0/16", "SubnetLen": 24,
        "Backend": {"Type": "vxlan", "VNI": 7, "Port": 4789}}
    assert network_config(LabSpec(backend="host-gw"))["Backend"] == {"Type": "host-gw"}


def test_cni_install_uses_per_node_paths() -> None:
    topo = plan(LabSpec(prefix="nwlx", nodes=2, state_root="/tmp/st"))
    a, b = (cni_install_args(n) for n in topo.nodes)
    options = a[0::2]
    assert options == ["--bin-dir", "--conf-dir", "--subnet-file", "--data-dir",
                       "--socket-path", "--log-file"]
    for x, y in zip(a[1::2], b[1::2], strict=True):
        assert x != y and "/node1/" in x and "/node2/" in y


def test_cni_args_carry_pod_name_and_labels() -> None:
    pod = plan(LabSpec(prefix="nwlx", nodes=1, pods_per_node=1)).pods[0]
    args = dict(part.split("=", 1) for part in cni_args(pod).split(";"))
    assert args["K8S_POD_NAME"] == "node1-pod1"
    assert args["NETWEFT_POD_LABELS"] == "app=pod1,lab=nwlx"


def test_probe_plan_covers_the_matrix() -> None:
    topo = plan(LabSpec(prefix="nwlx", nodes=3, pods_per_node=2))
    addrs = {p.name: IPv4Address(f"10.244.{i}.2") for i, p in enumerate(topo.pods)}
    probes = check.plan_probes(topo, addrs)
    kinds = {k: [p for p in probes if p.kind == k] for k in check.KINDS}
    assert len(kinds[check.POD_SAME]) == 3 * 2          # each pod to its one neighbour
    assert len(kinds[check.POD_CROSS]) == 6 * 4
    assert len(kinds[check.NODE_POD]) == 3 * 6
    outside = kinds[check.POD_OUTSIDE]
    assert len(outside) == 6 and all(p.dst_ip == INTERNET_IP for p in outside)
    assert {p.expect_source for p in outside} == {n.ip for n in topo.nodes}


def test_render_matrix_marks_failures() -> None:
    topo = plan(LabSpec(prefix="nwlx", nodes=2, pods_per_node=1))
    addrs = {p.name: IPv4Address(f"10.244.{i}.2") for i, p in enumerate(topo.pods)}
    probes = check.plan_probes(topo, addrs)
    results = [check.ProbeResult(p, p.src != "node2") for p in probes]
    text = check.render_matrix(topo, results)
    assert "FAIL" in text.splitlines()[-1] and "FAIL" not in text.splitlines()[1]
    assert any("FAIL node-pod: node2" in line for line in check.summarize(results))


def test_process_record_parse() -> None:
    assert ProcessRecord.parse("12 345\n") == ProcessRecord(12, 345)
    assert ProcessRecord.parse("garbage") is None


def test_service_probes_cover_pods_and_node_ports() -> None:
    topo = plan(LabSpec(prefix="nwlx", nodes=3, pods_per_node=2))
    addrs = {p.name: IPv4Address(f"10.244.{i}.2") for i, p in enumerate(topo.pods)}
    probes = check.plan_service_probes(topo, addrs, IPv4Address("10.96.0.10"), 80, 30080)
    to_service = [p for p in probes if p.kind == check.POD_SERVICE]
    node_ports = [p for p in probes if p.kind == check.NODEPORT]
    assert len(to_service) == 6 and {p.port for p in to_service} == {80}
    assert [p.dst_ip for p in node_ports] == [n.ip for n in topo.nodes]
    assert all(p.src_ns == "nwlx-outside" and p.port == 30080 for p in node_ports)
