"""Pure logic of the Kubernetes subnet manager: Node objects <-> leases with Flannel's
annotations (``daemon/kubenode.py``) and the per-Node watch events."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from ipaddress import IPv4Address, IPv4Network

from netweft.daemon import kubenode as kn
from netweft.daemon.kubesubnets import _node_events


def node(name: str = "n1", cidrs: list[str] | None = None, **notes: str) -> kn.Node:
    spec = {"podCIDR": cidrs[0], "podCIDRs": cidrs} if cidrs else {}
    return {"metadata": {"name": name, "annotations": dict(notes)}, "spec": spec}


FLANNEL = {kn.KUBE_MANAGED: "true", kn.BACKEND_TYPE: "vxlan", kn.PUBLIC_IP: "192.0.2.10",
           kn.BACKEND_DATA: '{"VNI":1,"VtepMAC":"aa:bb:cc:dd:ee:01"}'}


def test_a_node_annotated_by_flannel_is_a_lease() -> None:
    lease = kn.node_to_lease(node("a", ["10.244.1.0/24"], **FLANNEL))
    assert lease is not None
    assert lease.subnet == IPv4Network("10.244.1.0/24")
    assert lease.public_ip == IPv4Address("192.0.2.10")
    assert lease.backend_type == "vxlan" and lease.vtep_mac == "aa:bb:cc:dd:ee:01"
    assert lease.reserved and lease.expiration is None  # lives as long as the Node


def test_nodes_without_the_managed_mark_a_podcidr_or_a_valid_ip_carry_no_lease() -> None:
    unmanaged = {k: v for k, v in FLANNEL.items() if k != kn.KUBE_MANAGED}
    assert kn.node_to_lease(node("a", ["10.244.1.0/24"], **unmanaged)) is None
    assert kn.node_to_lease(node("a", None, **FLANNEL)) is None
    assert kn.node_to_lease(node("a", ["10.244.1.0/24"], **{**FLANNEL,
                                                           kn.PUBLIC_IP: "nonsense"})) is None


def test_dual_stack_podcidrs_give_the_ipv4_subnet_and_the_v6_one_with_its_public_ip() -> None:
    lease = kn.node_to_lease(node("a", ["10.244.1.0/24", "fd00:1::/64"],
                                  **{**FLANNEL, kn.PUBLIC_IPV6: "2001:db8::10"}))
    assert lease is not None and lease.subnet == IPv4Network("10.244.1.0/24")
    assert str(lease.ipv6_subnet) == "fd00:1::/64" and str(lease.public_ipv6) == "2001:db8::10"


def test_published_annotations_use_the_overwrite_as_public_ip() -> None:
    plain = kn.desired_annotations(node(), IPv4Address("192.0.2.10"), "vxlan", {"VNI": 1})
    assert plain == {kn.BACKEND_TYPE: "vxlan", kn.BACKEND_DATA: '{"VNI":1}',
                     kn.PUBLIC_IP: "192.0.2.10", kn.KUBE_MANAGED: "true"}
    over = node(**{kn.PUBLIC_IP_OVERWRITE: "198.51.100.7"})
    assert kn.overwrite_ip(over) == IPv4Address("198.51.100.7")
    assert kn.desired_annotations(over, IPv4Address("192.0.2.10"), "vxlan", {})[
        kn.PUBLIC_IP] == "198.51.100.7"
    assert kn.overwrite_ip(node(**{kn.PUBLIC_IP_OVERWRITE: "not-an-ip"})) is None


def test_the_annotation_patch_is_only_what_differs() -> None:
    desired = kn.desired_annotations(node(), IPv4Address("192.0.2.10"), "vxlan", {"VNI": 1})
    assert kn.annotation_patch(node(**desired), desired) is None
    stale = node(**{**desired, kn.PUBLIC_IP: "192.0.2.99", "other": "kept"})
    assert kn.annotation_patch(stale, desired) == {
        "metadata": {"annotations": {kn.PUBLIC_IP: "192.0.2.10"}}}


def test_network_available_condition_is_false_with_timestamps() -> None:
    patch = kn.network_available_patch(datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC))
    (cond,) = patch["status"]["conditions"]
    assert cond["type"] == "NetworkUnavailable" and cond["status"] == "False"
    assert cond["lastTransitionTime"] == "2026-01-02T03:04:05Z"
    json.dumps(patch)


def test_node_events_added_changed_moved_and_deleted() -> None:
    a = kn.node_to_lease(node("a", ["10.244.1.0/24"], **FLANNEL))
    moved = kn.node_to_lease(node("a", ["10.244.2.0/24"], **FLANNEL))
    changed = kn.node_to_lease(node("a", ["10.244.1.0/24"], **{**FLANNEL,
                                                              kn.PUBLIC_IP: "192.0.2.11"}))
    assert a and moved and changed
    assert [(e.kind, e.lease) for e in _node_events(None, a)] == [("added", a)]
    assert _node_events(a, a) == []
    assert [(e.kind, e.lease) for e in _node_events(a, changed)] == [("added", changed)]
    assert [(e.kind, e.lease) for e in _node_events(a, moved)] == [("removed", a),
                                                                    ("added", moved)]
    assert [(e.kind, e.lease) for e in _node_events(a, None)] == [("removed", a)]
    assert _node_events(None, None) == []
