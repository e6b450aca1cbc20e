"""Node objects <-> leases, as Flannel's Kubernetes subnet manager reads and writes them.

Pure functions on Node objects as JSON dicts (``metadata.annotations``, ``spec.podCIDR(s)``).
The annotation names are Flannel's (``pkg/subnet/kube/annotations.go``, default prefix
``flannel.alpha.coreos.com``), so flanneld and netweft nodes read each other's Nodes:

- ``kube-subnet-manager``: "true" once the node's agent published its lease (Flannel ignores
  Nodes without it);
- ``backend-type``, ``backend-data`` (the BackendData JSON), ``public-ip``;
- ``backend-v6-data``, ``public-ipv6``: the IPv6 variants;
- ``public-ip-overwrite`` / ``public-ipv6-overwrite``: set by the operator; when present the
  agent publishes it as its public IP instead of the interface's (Flannel's ``AcquireLease``).
"""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from ipaddress import (
    IPv4Address,
    IPv4Network,
    IPv6Address,
    IPv6Network,
    ip_address,
    ip_network,
)
from typing import Any

from netweft.ipam.lease import Lease

PREFIX = "flannel.alpha.coreos.com/"
KUBE_MANAGED = PREFIX + "kube-subnet-manager"
BACKEND_TYPE = PREFIX + "backend-type"
BACKEND_DATA = PREFIX + "backend-data"
PUBLIC_IP = PREFIX + "public-ip"
PUBLIC_IPV6 = PREFIX + "public-ipv6"
PUBLIC_IP_OVERWRITE = PREFIX + "public-ip-overwrite"

Node = dict[str, Any]


def node_name_or_default(given: str | None, environ: Mapping[str, str] = os.environ,
                         hostname: Callable[[], str] = socket.gethostname) -> str:
    """Which Node is this node's: ``--node-name``, else ``$NODE_NAME`` (Flannel's DaemonSet
    passes it through the downward API), else the host name."""
    return given or environ.get("NODE_NAME") or hostname()


def name_of(node: Node) -> str:
    return str((node.get("metadata") or {}).get("name") or "")


def annotations_of(node: Node) -> dict[str, str]:
    return dict((node.get("metadata") or {}).get("annotations") or {})


def pod_cidrs(node: Node) -> tuple[IPv4Network | None, IPv6Network | None]:
    """The node's IPv4 and IPv6 pod CIDRs from ``spec.podCIDRs`` (else ``spec.podCIDR``);
    (None, None) while kube-controller-manager has allocated none. Raises ValueError for a
    CIDR that does not parse or more than one of a family (Flannel: "IPv4/IPv6 only or
    dualstack")."""
    spec = node.get("spec") or {}
    cidrs = list(spec.get("podCIDRs") or ([spec["podCIDR"]] if spec.get("podCIDR") else []))
    v4: IPv4Network | None = None
    v6: IPv6Network | None = None
    for text in cidrs:
        net = ip_network(text, strict=False)
        if isinstance(net, IPv4Network):
            if v4 is not None:
                raise ValueError(f"node {name_of(node)}: two IPv4 podCIDRs {cidrs}")
            v4 = net
        else:
            if v6 is not None:
                raise ValueError(f"node {name_of(node)}: two IPv6 podCIDRs {cidrs}")
            v6 = net
    return v4, v6


def _json_object(text: str | None) -> dict[str, Any]:
    if not text:
        return {}
    value = json.loads(text)
    return value if isinstance(value, dict) else {}


def node_to_lease(node: Node) -> Lease | None:
    """The lease a Node carries, or None when it carries none: not marked
    ``kube-subnet-manager: "true"``, no IPv4 podCIDR, or an annotation that does not parse
    (Flannel's ``nodeToLease`` errors are logged and skipped the same way). The lease has no
    etcd lease id and no expiry: it lives as long as the Node."""
    notes = annotations_of(node)
    if notes.get(KUBE_MANAGED) != "true":
        return None
    try:
        v4, v6 = pod_cidrs(node)
        public_ip = IPv4Address(notes.get(PUBLIC_IP, ""))
        data = _json_object(notes.get(BACKEND_DATA))
        public_v6 = notes.get(PUBLIC_IPV6)
        public_ipv6 = IPv6Address(public_v6) if public_v6 else None
    except ValueError:
        return None
    if v4 is None:
        return None
    return Lease(subnet=v4, public_ip=public_ip, backend_type=notes.get(BACKEND_TYPE, ""),
                 backend_data=data, ipv6_subnet=v6 if public_ipv6 else None,
                 public_ipv6=public_ipv6)


def overwrite_ip(node: Node) -> IPv4Address | None:
    """The operator's ``public-ip-overwrite`` annotation; None when absent or not an IPv4
    address (Flannel ignores such a value too)."""
    text = annotations_of(node).get(PUBLIC_IP_OVERWRITE, "")
    try:
        addr = ip_address(text)
    except ValueError:
        return None
    return addr if isinstance(addr, IPv4Address) else None


def desired_annotations(node: Node, public_ip: IPv4Address, backend_type: str,
                        backend_data: dict[str, Any]) -> dict[str, str]:
    """The annotations this node's agent publishes (Flannel's ``AcquireLease``): the
    overwrite, when set, is published as ``public-ip`` instead of ``public_ip``."""
    overwrite = overwrite_ip(node)
    return {
        BACKEND_TYPE: backend_type,
        BACKEND_DATA: json.dumps(backend_data, separators=(",", ":"), sort_keys=True),
        PUBLIC_IP: str(overwrite or public_ip),
        KUBE_MANAGED: "true",
    }


def annotation_patch(node: Node, desired: dict[str, str]) -> dict[str, Any] | None:
    """A merge patch setting ``desired`` annotations, or None when the Node already has them."""
    have = annotations_of(node)
    changed = {k: v for k, v in desired.items() if have.get(k) != v}
    if not changed:
        return None
    return {"metadata": {"annotations": changed}}


def network_available_patch(now: datetime | None = None) -> dict[str, Any]:
    """A strategic-merge patch of Node status setting ``NetworkUnavailable`` to False
    (conditions merge by ``type``; Flannel's ``CompleteLease`` sends the same condition)."""
    stamp = (now or datetime.now(UTC)).strftime("%Y-%m-%dT%H:%M:%SZ")
    return {"status": {"conditions": [{
        "type": "NetworkUnavailable", "status": "False", "reason": "NetweftIsUp",
        "message": "netweft is running on this node",
        "lastTransitionTime": stamp, "lastHeartbeatTime": stamp}]}}


def condition(node: Node, kind: str) -> dict[str, Any] | None:
    """The Node's status condition of type ``kind``, if any."""
    for cond in (node.get("status") or {}).get("conditions") or []:
        if cond.get("type") == kind:
            return dict(cond)
    return None
