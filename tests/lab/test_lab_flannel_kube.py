"""Interop with the real flanneld in Kubernetes mode (issue 12 item 2, kube part): a lab on the
real control plane (``--control-plane kubernetes``) where node1 runs flanneld v0.28
(deploy/flannel.sh) with ``--kube-subnet-mgr`` on the same API and the same service account as
netweft's daemons, the others ``netweft daemon --kube-subnet-mgr``. Real programs throughout:
flanneld, kube-apiserver, kube-controller-manager, the reference bridge/host-local plugins on
the flanneld node, netweft's daemon, proxy and CNI plugin elsewhere."""

from __future__ import annotations

import json
from typing import Any

import pytest
from netweft.daemon import kubenode as kn
from netweft.daemon.lab.lab import Lab

pytestmark = [pytest.mark.lab, pytest.mark.slow]


# the lab fixture (tests/lab/conftest.py) builds this once for the module and tears it down
LAB = {"nodes": 3, "pods_per_node": 1, "flannel_nodes": 1, "control_plane": "kubernetes",
       "prefix_stem": "nwfk"}


def _nodes(lab: Lab) -> dict[str, dict[str, Any]]:
    with lab.api() as api:
        return {n["metadata"]["name"]: n for n in api.nodes()}


def _assert_all_paths(lab: Lab) -> None:
    report = lab.check(iperf_seconds=0)
    assert report.ok, report.render()


def test_mixed_kube_cluster_pods_and_nodes_reach_each_other_both_ways(lab: Lab) -> None:
    assert lab.daemon_kind(lab.topo.node("node1")) == "flanneld"
    _assert_all_paths(lab)   # includes the Service over every pod, flanneld's node's too


def test_flanneld_and_netweft_publish_the_same_node_annotations(lab: Lab) -> None:
    nodes = _nodes(lab)
    flannel_notes = {k: v for k, v in nodes["node1"]["metadata"]["annotations"].items()
                     if k.startswith(kn.PREFIX)}
    for name in ("node2", "node3"):
        ours = {k: v for k, v in nodes[name]["metadata"]["annotations"].items()
                if k.startswith(kn.PREFIX)}
        assert set(ours) == set(flannel_notes)
        assert ours[kn.KUBE_MANAGED] == flannel_notes[kn.KUBE_MANAGED] == "true"
        assert ours[kn.BACKEND_TYPE] == flannel_notes[kn.BACKEND_TYPE] == "vxlan"
        # the same JSON text shape: compact, keys VNI then VtepMAC
        assert list(json.loads(ours[kn.BACKEND_DATA])) == \
            list(json.loads(flannel_notes[kn.BACKEND_DATA])) == ["VNI", "VtepMAC"]
        assert ours[kn.BACKEND_DATA].replace(" ", "") == ours[kn.BACKEND_DATA]
        assert ours[kn.PUBLIC_IP] == str(lab.topo.node(name).ip)
    assert flannel_notes[kn.PUBLIC_IP] == str(lab.topo.node("node1").ip)
    for name, node in nodes.items():
        cond = kn.condition(node, "NetworkUnavailable")  # type: ignore[arg-type]
        assert cond is not None and cond["status"] == "False", (name, cond)
    # the only difference: who says so (documented in daemon/README.md)
    assert kn.condition(nodes["node1"], "NetworkUnavailable")["reason"] == "FlannelIsUp"  # type: ignore[arg-type, index]


def test_a_flanneld_node_joins_the_kube_cluster(lab: Lab) -> None:
    node = lab.add_node(pods=1, flanneld=True)
    assert lab.daemon_kind(node) == "flanneld"
    _assert_all_paths(lab)


def test_migrating_the_flanneld_node_keeps_its_podcidr_and_vtep_mac(lab: Lab) -> None:
    before = _nodes(lab)["node1"]
    lab.migrate_node("node1")
    after = _nodes(lab)["node1"]
    assert after["spec"]["podCIDR"] == before["spec"]["podCIDR"]
    mac = json.loads(after["metadata"]["annotations"][kn.BACKEND_DATA])["VtepMAC"]
    assert mac == json.loads(before["metadata"]["annotations"][kn.BACKEND_DATA])["VtepMAC"]
    _assert_all_paths(lab)
    lab.add_pod("node1")   # a new pod on the migrated node gets a free address
    _assert_all_paths(lab)
