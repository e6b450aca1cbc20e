"""Service and pod records in etcd, for clusters without Kubernetes (the lab, Vagrant).

Layout under the services prefix (default ``/netweft``, separate from the Flannel network prefix):

    <prefix>/services/<namespace>/<name>        ServiceRecord JSON (written by `netweft service`)
    <prefix>/pods/<node>/<container id>         PodRecord JSON (written by the node daemon per pod)
    <prefix>/allocations/clusterips/<ip>        "<namespace>/<name>" (created only if absent)
    <prefix>/allocations/nodeports/<port>       "<namespace>/<name>" (created only if absent)

Pods are keyed by container (sandbox) id, not by pod name: a CNI DEL always carries the container
id, and a pod recreated under the same name gets a new sandbox before the old one is torn down.

A service's endpoints are the pod records in its namespace whose labels include every pair of its
selector (like a Kubernetes Service selector; an empty selector selects nothing), one endpoint per
pod IPv4 address, with each service port's target port: a number as is, a name looked up in the
pod record's ``ports`` map (named container ports; a pod without that name gets no endpoint port
for it, as in Kubernetes).
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from netweft.common import defaults
from netweft.proxy.model import (
    DEFAULT_AFFINITY_TIMEOUT,
    Endpoint,
    EndpointPort,
    Protocol,
    Service,
    ServiceKey,
    ServicePort,
    ServiceType,
)

DEFAULT_SERVICES_PREFIX = defaults.SERVICES_PREFIX
DEFAULT_SERVICE_CIDR = "10.96.0.0/12"
NODE_PORT_MIN, NODE_PORT_MAX = 30000, 32767


class RecordError(ValueError):
    """A record in etcd (or a request) is not valid; the message names the field."""


# --- keys ------------------------------------------------------------------------------------


def services_dir(prefix: str) -> str:
    return f"{prefix.rstrip('/')}/services/"


def pods_dir(prefix: str) -> str:
    return f"{prefix.rstrip('/')}/pods/"


def service_key(prefix: str, key: ServiceKey) -> str:
    return f"{services_dir(prefix)}{key.namespace}/{key.name}"


def pod_key(prefix: str, node: str, container_id: str) -> str:
    return f"{pods_dir(prefix)}{node}/{container_id}"


def cluster_ip_key(prefix: str, ip: str) -> str:
    return f"{prefix.rstrip('/')}/allocations/clusterips/{ip}"


def node_port_key(prefix: str, port: int) -> str:
    return f"{prefix.rstrip('/')}/allocations/nodeports/{port}"


# --- field checks ----------------------------------------------------------------------------


def _need(data: Mapping[str, Any], name: str, kind: type | tuple[type, ...]) -> Any:
    value = data.get(name)
    if not isinstance(value, kind) or isinstance(value, bool) and kind is int:
        raise RecordError(f"{name}: missing or not a {getattr(kind, '__name__', kind)}")
    return value


def _ipv4(value: str, name: str) -> str:
    try:
        return str(ipaddress.IPv4Address(value))
    except ValueError:
        raise RecordError(f"{name}: {value!r} is not an IPv4 address") from None


def _port(value: object, name: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= 65535:
        raise RecordError(f"{name}: {value!r} is not a port number (1-65535)")
    return value


def _labels(value: object, name: str) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
        raise RecordError(f"{name}: must be an object of string labels")
    return dict(value)


# --- services --------------------------------------------------------------------------------


@dataclass(frozen=True)
class PortRecord:
    name: str
    protocol: Protocol
    port: int
    target_port: int | str
    node_port: int | None = None

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"name": self.name, "protocol": self.protocol.value,
                             "port": self.port, "targetPort": self.target_port}
        if self.node_port is not None:
            d["nodePort"] = self.node_port
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], where: str) -> PortRecord:
        try:
            protocol = Protocol(str(d.get("protocol", "TCP")).upper())
        except ValueError:
            raise RecordError(f"{where}.protocol: {d.get('protocol')!r} is not TCP, UDP or "
                              "SCTP") from None
        port = _port(d.get("port"), f"{where}.port")
        target = d.get("targetPort", port)
        if not isinstance(target, str):
            target = _port(target, f"{where}.targetPort")
        elif not target:
            raise RecordError(f"{where}.targetPort: empty name")
        node_port = d.get("nodePort")
        if node_port is not None:
            node_port = _port(node_port, f"{where}.nodePort")
        return cls(str(d.get("name") or ""), protocol, port, target, node_port)


@dataclass(frozen=True)
class ServiceRecord:
    namespace: str
    name: str
    type: ServiceType
    cluster_ip: str
    ports: tuple[PortRecord, ...]
    selector: dict[str, str] = field(default_factory=dict)
    session_affinity: bool = False
    affinity_timeout: int = DEFAULT_AFFINITY_TIMEOUT
    external_ips: tuple[str, ...] = ()
    external_traffic_local: bool = False
    internal_traffic_local: bool = False

    @property
    def key(self) -> ServiceKey:
        return ServiceKey(self.namespace, self.name)

    def to_json(self) -> str:
        return json.dumps({
            "namespace": self.namespace, "name": self.name, "type": self.type.value,
            "clusterIP": self.cluster_ip, "ports": [p.to_dict() for p in self.ports],
            "selector": self.selector, "sessionAffinity": self.session_affinity,
            "affinityTimeout": self.affinity_timeout, "externalIPs": list(self.external_ips),
            "externalTrafficPolicy": "Local" if self.external_traffic_local else "Cluster",
            "internalTrafficPolicy": "Local" if self.internal_traffic_local else "Cluster",
        }, sort_keys=True)

    @classmethod
    def from_json(cls, text: bytes | str) -> ServiceRecord:
        try:
            d = json.loads(text)
        except ValueError as exc:
            raise RecordError(f"service record is not JSON ({exc})") from None
        if not isinstance(d, dict):
            raise RecordError("service record: not a JSON object")
        try:
            stype = ServiceType(d.get("type", "ClusterIP"))
        except ValueError:
            raise RecordError(f"type: {d.get('type')!r} is not ClusterIP, NodePort or "
                              "LoadBalancer") from None
        raw_ports = d.get("ports")
        if not isinstance(raw_ports, list) or not raw_ports:
            raise RecordError("ports: at least one port is needed")
        ports = tuple(PortRecord.from_dict(p if isinstance(p, dict) else {}, f"ports[{i}]")
                      for i, p in enumerate(raw_ports))
        timeout = d.get("affinityTimeout", DEFAULT_AFFINITY_TIMEOUT)
        if not isinstance(timeout, int) or not 1 <= timeout <= 86400:
            raise RecordError(f"affinityTimeout: {timeout!r} is not 1-86400 seconds")
        return cls(
            namespace=_need(d, "namespace", str), name=_need(d, "name", str), type=stype,
            cluster_ip=_ipv4(_need(d, "clusterIP", str), "clusterIP"), ports=ports,
            selector=_labels(d.get("selector"), "selector"),
            session_affinity=bool(d.get("sessionAffinity", False)), affinity_timeout=timeout,
            external_ips=tuple(_ipv4(ip, "externalIPs") for ip in d.get("externalIPs") or ()),
            external_traffic_local=d.get("externalTrafficPolicy") == "Local",
            internal_traffic_local=d.get("internalTrafficPolicy") == "Local",
        )

    def to_service(self) -> Service:
        with_node_ports = self.type in (ServiceType.NODE_PORT, ServiceType.LOAD_BALANCER)
        return Service(
            key=self.key, type=self.type, cluster_ips=(self.cluster_ip,),
            ports=tuple(ServicePort(p.name, p.protocol, p.port, p.target_port,
                                    p.node_port if with_node_ports else None)
                        for p in self.ports),
            external_ips=self.external_ips, session_affinity=self.session_affinity,
            affinity_timeout=self.affinity_timeout,
            external_traffic_local=self.external_traffic_local and (
                with_node_ports or bool(self.external_ips)),
            internal_traffic_local=self.internal_traffic_local,
        )


# --- pods ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PodRecord:
    """What the node daemon knows about a pod it wired."""

    container_id: str
    namespace: str
    name: str
    node: str
    ips: tuple[str, ...]
    labels: dict[str, str] = field(default_factory=dict)
    ready: bool = True
    ports: dict[str, int] = field(default_factory=dict)  # named container ports
    host_veth: str = ""  # the pod's link on the node: the record is stale once it is gone

    def to_json(self) -> str:
        out = {
            "containerID": self.container_id, "namespace": self.namespace, "name": self.name,
            "node": self.node, "ips": list(self.ips), "labels": self.labels,
            "ready": self.ready, "ports": self.ports,
        }
        if self.host_veth:
            out["hostVeth"] = self.host_veth
        return json.dumps(out, sort_keys=True)

    @classmethod
    def from_json(cls, text: bytes | str) -> PodRecord:
        try:
            d = json.loads(text)
        except ValueError as exc:
            raise RecordError(f"pod record is not JSON ({exc})") from None
        if not isinstance(d, dict):
            raise RecordError("pod record: not a JSON object")
        ips = d.get("ips")
        if not isinstance(ips, list):
            raise RecordError("ips: missing or not a list")
        ports = d.get("ports") or {}
        if not isinstance(ports, dict):
            raise RecordError("ports: must be an object of name -> port")
        return cls(
            container_id=_need(d, "containerID", str), namespace=_need(d, "namespace", str),
            name=_need(d, "name", str), node=_need(d, "node", str),
            ips=tuple(str(ip) for ip in ips), labels=_labels(d.get("labels"), "labels"),
            ready=bool(d.get("ready", True)),
            ports={str(k): _port(v, f"ports.{k}") for k, v in ports.items()},
            host_veth=str(d.get("hostVeth") or ""),
        )


def selects(selector: Mapping[str, str], labels: Mapping[str, str]) -> bool:
    """Equality selector: every pair present. An empty selector selects nothing."""
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def endpoints_for(record: ServiceRecord, pods: Iterable[PodRecord]) -> tuple[Endpoint, ...]:
    """The endpoints of a service: selected pods of its namespace, sorted by address.

    When two records claim one address (a pod's DEL was lost and its IP reused), the ready one
    wins, then the one with the larger container id, so the answer never depends on order.
    """
    chosen: dict[str, tuple[tuple[bool, str], Endpoint]] = {}
    for pod in pods:
        if pod.namespace != record.namespace or not selects(record.selector, pod.labels):
            continue
        ports = []
        for sp in record.ports:
            target = sp.target_port if isinstance(sp.target_port, int) \
                else pod.ports.get(sp.target_port)
            if target is not None:
                ports.append(EndpointPort(sp.name, target, sp.protocol))
        if not ports:
            continue
        for ip in pod.ips:
            try:
                if ipaddress.ip_address(ip).version != 4:
                    continue
            except ValueError:
                continue
            rank = (pod.ready, pod.container_id)
            endpoint = Endpoint(address=ip, ports=tuple(ports), node=pod.node, ready=pod.ready,
                                serving=pod.ready, terminating=False)
            seen = chosen.get(ip)
            if seen is None or rank > seen[0]:
                chosen[ip] = (rank, endpoint)
    return tuple(e for _, (_, e) in sorted(
        chosen.items(), key=lambda item: int(ipaddress.IPv4Address(item[0]))))


class PodIndex:
    """Pod records by key, indexed by (namespace, label, value), so finding a selector's pods
    costs the size of its rarest label pair instead of every pod of the namespace."""

    def __init__(self) -> None:
        self.pods: dict[str, PodRecord] = {}
        self.by_label: dict[tuple[str, str, str], set[str]] = {}

    def put(self, key: str, pod: PodRecord) -> PodRecord | None:
        old = self.remove(key)
        self.pods[key] = pod
        for label, value in pod.labels.items():
            self.by_label.setdefault((pod.namespace, label, value), set()).add(key)
        return old

    def remove(self, key: str) -> PodRecord | None:
        old = self.pods.pop(key, None)
        if old is not None:
            for label, value in old.labels.items():
                keys = self.by_label.get((old.namespace, label, value))
                if keys is not None:
                    keys.discard(key)
                    if not keys:
                        del self.by_label[(old.namespace, label, value)]
        return old

    def clear(self) -> None:
        self.pods.clear()
        self.by_label.clear()

    def selected(self, namespace: str, selector: Mapping[str, str]) -> list[PodRecord]:
        if not selector:
            return []
        sets = [self.by_label.get((namespace, k, v), set()) for k, v in selector.items()]
        smallest = min(sets, key=len)
        return [p for k in smallest if selects(selector, (p := self.pods[k]).labels)]

    @classmethod
    def of(cls, pods: Iterable[PodRecord]) -> PodIndex:
        index = cls()
        for i, pod in enumerate(pods):
            index.put(f"{pod.node}/{pod.container_id}/{i}", pod)
        return index
