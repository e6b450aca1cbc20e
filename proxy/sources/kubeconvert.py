"""Kubernetes Service and EndpointSlice objects (their JSON shape, plain dicts) -> the proxy model.

Pure functions: the Kubernetes source decodes objects with lightkube as dicts and hands them here.
What is not proxied (the rules kube-proxy follows):
- Services of type ExternalName, headless Services (clusterIP ``None`` or empty),
- objects labelled ``service.kubernetes.io/headless`` or
  ``service.kubernetes.io/service-proxy-name`` (another proxy owns them),
- IPv6 addresses: netweft proxies IPv4 only; IPv6 cluster/external IPs are dropped, IPv6 and FQDN
  EndpointSlices ignored.
"""

from __future__ import annotations

import socket
import sys
from collections.abc import Iterable, Mapping
from typing import Any

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

HEADLESS_LABEL = "service.kubernetes.io/headless"
PROXY_NAME_LABEL = "service.kubernetes.io/service-proxy-name"
SKIP_LABELS = (PROXY_NAME_LABEL, HEADLESS_LABEL)
SERVICE_NAME_LABEL = "kubernetes.io/service-name"

_TYPES = {t.value: t for t in ServiceType}
_PROTOCOLS = {p.value: p for p in Protocol}

Obj = Mapping[str, Any]


def _is_ipv4(text: object) -> bool:
    """A dotted-quad IPv4 address (inet_pton(3): four decimal octets, no leading zeros, as
    ``ipaddress`` accepts; ~20x cheaper than parsing with ``ipaddress``, which was a fifth of
    the proxy's CPU in a full list)."""
    if not isinstance(text, str):
        return False
    try:
        socket.inet_pton(socket.AF_INET, text)
    except (OSError, ValueError):   # ValueError: an embedded NUL
        return False
    return True


def _ipv4s(values: Iterable[object] | None) -> tuple[str, ...]:
    return tuple(v for v in (values or ()) if _is_ipv4(v))  # type: ignore[misc]


def object_key(obj: Obj) -> ServiceKey:
    meta = obj.get("metadata") or {}
    return ServiceKey(meta.get("namespace") or "default", meta.get("name") or "")


def is_proxied_labels(labels: Mapping[str, str] | None) -> bool:
    return not any(label in (labels or {}) for label in SKIP_LABELS)


def _target_port(raw: object, port: int) -> int | str:
    if raw is None or raw == "" or raw == 0:
        return port
    if isinstance(raw, int):
        return raw
    text = str(raw)
    return int(text) if text.isdigit() else text


def service_from_kube(obj: Obj) -> Service | None:
    """The proxied Service for a Kubernetes Service object, or None when it is not proxied."""
    meta = obj.get("metadata") or {}
    spec = obj.get("spec") or {}
    if not is_proxied_labels(meta.get("labels")):
        return None
    stype = _TYPES.get(spec.get("type") or "ClusterIP")
    if stype is None:  # ExternalName (or a type this proxy does not know)
        return None
    ips = list(spec.get("clusterIPs") or [])
    if not ips and spec.get("clusterIP"):
        ips = [spec["clusterIP"]]
    if not ips or ips[0] in ("None", ""):
        return None  # headless
    cluster_ips = _ipv4s(ips)
    if not cluster_ips:
        return None  # IPv6 single-stack
    with_node_ports = stype in (ServiceType.NODE_PORT, ServiceType.LOAD_BALANCER)
    ports = []
    for p in spec.get("ports") or []:
        protocol = _PROTOCOLS.get(p.get("protocol") or "TCP")
        number = p.get("port")
        if protocol is None or not isinstance(number, int):
            continue
        node_port = p.get("nodePort") if with_node_ports else None
        ports.append(ServicePort(
            name=p.get("name") or "", protocol=protocol, port=number,
            target_port=_target_port(p.get("targetPort"), number),
            node_port=node_port or None,
        ))
    affinity = spec.get("sessionAffinity") == "ClientIP"
    timeout = DEFAULT_AFFINITY_TIMEOUT
    if affinity:
        config = (spec.get("sessionAffinityConfig") or {}).get("clientIP") or {}
        timeout = config.get("timeoutSeconds") or DEFAULT_AFFINITY_TIMEOUT
    lb_ips: tuple[str, ...] = ()
    if stype is ServiceType.LOAD_BALANCER:
        ingress = ((obj.get("status") or {}).get("loadBalancer") or {}).get("ingress") or []
        lb_ips = _ipv4s(i.get("ip") for i in ingress)
    return Service(
        key=object_key(obj),
        type=stype,
        cluster_ips=cluster_ips,
        ports=tuple(ports),
        external_ips=_ipv4s(spec.get("externalIPs")),
        load_balancer_ips=lb_ips,
        load_balancer_source_ranges=tuple(spec.get("loadBalancerSourceRanges") or ()),
        session_affinity=affinity,
        affinity_timeout=int(timeout),
        external_traffic_local=(spec.get("externalTrafficPolicy") == "Local"
                                and (with_node_ports or bool(spec.get("externalIPs")))),
        internal_traffic_local=spec.get("internalTrafficPolicy") == "Local",
        health_check_node_port=spec.get("healthCheckNodePort") or None,
    )


def slice_service(obj: Obj) -> ServiceKey | None:
    """The Service an EndpointSlice belongs to (label ``kubernetes.io/service-name``)."""
    meta = obj.get("metadata") or {}
    name = (meta.get("labels") or {}).get(SERVICE_NAME_LABEL)
    if not name:
        return None
    return ServiceKey(meta.get("namespace") or "default", name)


def endpoints_from_slice(obj: Obj) -> tuple[Endpoint, ...]:
    """The endpoints one EndpointSlice lists (IPv4 slices only), each with the slice's ports.

    Conditions follow the API's rules: ``ready`` absent means true, ``serving`` absent means
    ``ready``, ``terminating`` absent means false.
    """
    if obj.get("addressType") != "IPv4":
        return ()
    meta = obj.get("metadata") or {}
    if not is_proxied_labels(meta.get("labels")):
        return ()
    ports = []
    for p in obj.get("ports") or []:
        protocol = _PROTOCOLS.get(p.get("protocol") or "TCP")
        if protocol is None or not isinstance(p.get("port"), int):
            continue
        ports.append(EndpointPort(name=sys.intern(p.get("name") or ""), port=p["port"],
                                  protocol=protocol))
    port_tuple = tuple(sorted(ports, key=_port_order))
    out = []
    for ep in obj.get("endpoints") or []:
        cond = ep.get("conditions") or {}
        ready = cond.get("ready") is not False
        serving = cond.get("serving")
        serving = ready if serving is None else bool(serving)
        terminating = bool(cond.get("terminating"))
        node = ep.get("nodeName")
        node = sys.intern(node) if isinstance(node, str) else None   # a few names, shared
        for address in ep.get("addresses") or []:
            if _is_ipv4(address):
                out.append(Endpoint(address=address, ports=port_tuple, node=node,
                                    ready=ready, serving=serving, terminating=terminating))
    return tuple(out)


def _port_order(p: EndpointPort) -> tuple[str, int, str]:
    return (p.name, p.port, p.protocol.value)


def _address_order(e: Endpoint) -> bytes:
    return socket.inet_aton(e.address)  # network order: bytes sort as the numbers do


def merge_endpoints(groups: Iterable[Iterable[Endpoint]]) -> tuple[Endpoint, ...]:
    """One service's endpoints over all its slices, one entry per address, sorted by address.

    An address listed by several slices (while the controller moves it) gets the union of their
    ports; it counts as ready/serving when any slice says so, terminating only when all do.
    """
    merged: dict[str, Endpoint] = {}
    for group in groups:
        for ep in group:
            seen = merged.get(ep.address)
            if seen is None:
                merged[ep.address] = ep
                continue
            merged[ep.address] = Endpoint(
                address=ep.address,
                ports=tuple(sorted(set(seen.ports) | set(ep.ports), key=_port_order)),
                node=seen.node or ep.node,
                ready=seen.ready or ep.ready,
                serving=seen.serving or ep.serving,
                terminating=seen.terminating and ep.terminating,
            )
    return tuple(sorted(merged.values(), key=_address_order))
