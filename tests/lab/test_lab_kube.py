"""The lab on Kubernetes (``netweft lab up --control-plane kubernetes``): the real control plane
(etcd + kube-apiserver + kube-controller-manager built by deploy/controlplane.sh) in the lab's
control-plane namespace, a Node per lab node with the controller-manager's podCIDR, daemons with
``--kube-subnet-mgr`` and proxies with ``--source kube`` on the manifests' service-account
tokens, pods as Pod objects, the lab service a Kubernetes Service with the controller-manager's
EndpointSlices. One lab for the module; it is always torn down."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from ipaddress import IPv4Network
from pathlib import Path

import pytest
from netweft.daemon import kubenode as kn
from netweft.daemon import netns
from netweft.daemon.lab import kube, procs
from netweft.daemon.lab.lab import Lab, down
from netweft.daemon.lab.topology import KUBE_PROCESSES, SERVICE_NAME, LabSpec, LabSpecError
from support.polling import poll_until

pytestmark = [pytest.mark.lab, pytest.mark.slow]

REMOVAL_BOUND = 30.0   # generous: a deleted Node leaves every peer's routes within this (s)


# the lab fixture (tests/lab/conftest.py) builds this once for the module and tears it down
LAB = {"nodes": 3, "pods_per_node": 2, "control_plane": "kubernetes", "prefix_stem": "nwk"}


def _cmdline(pid: int) -> list[str]:
    with open(f"/proc/{pid}/cmdline", "rb") as f:
        return [a.decode() for a in f.read().split(b"\0") if a]


def _routes(lab: Lab, node: str) -> str:
    return subprocess.run(["ip", "-n", lab.topo.node(node).netns, "route"],
                          capture_output=True, text=True, check=True).stdout


def _kube_status(lab: Lab) -> dict:  # type: ignore[type-arg]
    status = lab.status()["kube"]
    assert "error" not in status, status
    return status  # type: ignore[no-any-return]


def test_kube_lab_passes_the_same_check_matrix_as_etcd_mode(lab: Lab) -> None:
    report = lab.check(iperf_seconds=1)
    assert report.ok, report.render()
    kinds = {r.probe.kind for r in report.results}
    assert kinds == {"pod-pod same node", "pod-pod across nodes", "node-pod",
                     "pod-outside (masquerade)", "pod-service (ClusterIP)", "outside-NodePort"}


def test_nodes_run_kube_mode_with_service_account_tokens_and_no_etcd(lab: Lab) -> None:
    assert lab.kube is not None
    for node in lab.topo.nodes:
        daemon = lab.daemon_record(node)
        proxy = procs.read_pidfile(lab.pidfile(f"proxy-{node.name}"))
        assert daemon is not None and proxy is not None
        daemon_cmd, proxy_cmd = _cmdline(daemon.pid), _cmdline(proxy.pid)
        assert "--kube-subnet-mgr" in daemon_cmd
        assert daemon_cmd[daemon_cmd.index("--kubeconfig-file") + 1] == lab.kube.daemon_kubeconfig
        assert proxy_cmd[proxy_cmd.index("--source") + 1] == "kube"
        assert proxy_cmd[proxy_cmd.index("--kubeconfig") + 1] == lab.kube.proxy_kubeconfig
        assert not any("etcd" in a for a in daemon_cmd + proxy_cmd), (daemon_cmd, proxy_cmd)
    with open(lab.kube.daemon_kubeconfig) as f:
        assert "system:serviceaccount:netweft-system:netweft" in f.read()
    with open(lab.kube.proxy_kubeconfig) as f:
        assert "system:serviceaccount:netweft-system:netweft-proxy" in f.read()


def test_status_shows_podcidrs_flannel_annotations_pods_and_the_service_from_the_api(
        lab: Lab) -> None:
    st = _kube_status(lab)
    assert all(st["processes"].values()), st["processes"]
    nodes = {n["name"]: n for n in st["nodes"]}
    assert set(nodes) == {n.name for n in lab.topo.nodes}
    for node in lab.topo.nodes:
        summary = nodes[node.name]
        # the controller-manager's podCIDR is the subnet the daemon took
        assert IPv4Network(summary["podCIDR"]) == lab.node_network(node)
        notes = summary["annotations"]
        assert notes["kube-subnet-manager"] == "true"
        assert notes["backend-type"] == "vxlan"
        assert notes["public-ip"] == str(node.ip)
        assert summary["NetworkUnavailable"] == "False"
    pods = {p["name"]: p for p in st["pods"]}
    assert {name: (p["node"], p["podIP"], p["ready"]) for name, p in pods.items()} == {
        name: (s.pod.node, str(s.ip), "True") for name, s in lab.pods.items()}
    (svc,) = [s for s in st["services"] if s["name"] == SERVICE_NAME]
    assert svc["type"] == "NodePort" and svc["clusterIP"] == lab.service.cluster_ip  # type: ignore[union-attr]
    # the EndpointSlices the real controller-manager made from the Pods' reported status
    assert svc["ready_endpoints"] == sorted(str(s.ip) for s in lab.pods.values())


def test_a_node_joins_and_a_deleted_node_leaves_its_peers_dataplane(lab: Lab) -> None:
    node = lab.add_node(pods=1)
    subnet = lab.node_network(node)
    assert subnet is not None
    route = f"{subnet} via"
    for peer in ("node1", "node2"):
        assert poll_until(lambda peer=peer: route in _routes(lab, peer), 30), _routes(lab, peer)
    report = lab.check(iperf_seconds=0)
    assert report.ok, report.render()
    pod_ip = str(lab.pod_ip(f"{node.name}-pod1"))
    assert pod_ip in next(s for s in _kube_status(lab)["services"]
                          if s["name"] == SERVICE_NAME)["ready_endpoints"]

    lab.remove_node(node.name)   # its pods and its Node object are deleted from the API
    for peer in ("node1", "node2"):
        assert poll_until(lambda peer=peer: route not in _routes(lab, peer), REMOVAL_BOUND), \
            f"{peer} still routes to the deleted node: {_routes(lab, peer)}"
        status = lab.daemon_status(lab.topo.node(peer)) or {}
        assert poll_until(lambda peer=peer: (lab.daemon_status(lab.topo.node(peer)) or {})
                          .get("peers") == len(lab.topo.nodes) - 1, REMOVAL_BOUND), status
    st = _kube_status(lab)
    assert node.name not in {n["name"] for n in st["nodes"]}
    assert pod_ip not in next(s for s in st["services"]
                              if s["name"] == SERVICE_NAME)["ready_endpoints"]


def test_down_stops_the_control_plane_and_every_process_and_leaves_nothing(lab: Lab) -> None:
    records = [r for r in (procs.read_pidfile(lab.pidfile(n)) for n in KUBE_PROCESSES)
               if r is not None]
    records += [r for n in lab.topo.nodes for r in (lab.daemon_record(n),) if r is not None]
    assert len(records) == len(KUBE_PROCESSES) + len(lab.topo.nodes)
    assert all(procs.is_running(r) for r in records)
    down(lab.topo.prefix)
    assert not any(procs.is_running(r) for r in records)
    assert netns.list_names(f"{lab.topo.prefix}-") == []
    assert not os.path.exists(lab.state_dir)


# ---- pure pieces ---------------------------------------------------------------------------


def test_control_plane_option_is_validated_and_kept_in_the_state() -> None:
    with pytest.raises(LabSpecError, match="--control-plane"):
        LabSpec(control_plane="k3s").validate()
    with pytest.raises(LabSpecError, match="--dataplane netweft"):
        LabSpec(control_plane="kubernetes", dataplane="reference").validate()
    spec = LabSpec(control_plane="kubernetes")
    assert LabSpec.from_dict(spec.to_dict()) == spec and spec.kube
    older = {k: v for k, v in LabSpec().to_dict().items() if k != "control_plane"}
    assert LabSpec.from_dict(older).control_plane == "etcd"   # a lab.json from before


def test_node_and_service_summaries_read_flannel_annotations_and_ready_endpoints() -> None:
    node = {"metadata": {"name": "node1", "annotations": {
        kn.BACKEND_TYPE: "vxlan", kn.PUBLIC_IP: "192.0.2.11", "other/x": "y"}},
        "spec": {"podCIDR": "10.244.0.0/24"},
        "status": {"conditions": [{"type": "NetworkUnavailable", "status": "False"}]}}
    assert kube.node_summary(node) == {
        "name": "node1", "podCIDR": "10.244.0.0/24", "NetworkUnavailable": "False",
        "annotations": {"backend-type": "vxlan", "public-ip": "192.0.2.11"}}
    service = {"metadata": {"name": "web"}, "spec": {
        "type": "NodePort", "clusterIP": "10.96.0.9",
        "ports": [{"port": 80, "targetPort": 8080, "nodePort": 30080}]}}
    slices = [
        {"metadata": {"labels": {"kubernetes.io/service-name": "web"}},
         "endpoints": [{"addresses": ["10.244.1.2"], "conditions": {"ready": True}},
                       {"addresses": ["10.244.1.3"], "conditions": {"ready": False}}]},
        {"metadata": {"labels": {"kubernetes.io/service-name": "other"}},
         "endpoints": [{"addresses": ["10.244.9.9"], "conditions": {"ready": True}}]},
    ]
    assert kube.service_summary(service, slices)["ready_endpoints"] == ["10.244.1.2"]


def test_up_without_a_built_control_plane_is_one_line_naming_the_file_and_leaves_nothing(
        tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root (network namespaces)")
    prefix = f"nwk{uuid.uuid4().hex[:4]}"
    env = dict(os.environ, NETWEFT_CACHE=str(tmp_path))  # no controlplane.env there
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "netweft.daemon.cli", "lab", "up", "--prefix", prefix,
             "--nodes", "1", "--pods-per-node", "0", "--control-plane", "kubernetes"],
            capture_output=True, text=True, env=env, timeout=120)
    finally:
        down(prefix)
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert f"{tmp_path}/controlplane.env" in lines[0] and "deploy/controlplane.sh" in lines[0]
    assert netns.list_names(f"{prefix}-") == []
