"""What a node must do with a Service: its frontends and, for each, the endpoints it balances over.

This is the semantic layer both renderers share (pure functions, no kernel): which addresses and
ports a service answers on, which endpoints each of them may reach under the traffic policies,
whether a new connection is balanced, rejected (no endpoints at all) or dropped (endpoints exist
but none local under a Local policy), session affinity and source ranges.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from enum import StrEnum
from typing import NamedTuple

from netweft.proxy.model import Endpoint, Protocol, Service, ServiceKey, ServicePort, ServiceType


class FrontendKind(StrEnum):
    CLUSTER = "cluster"        # a ClusterIP
    EXTERNAL = "external"      # an externalIP or a LoadBalancer ingress IP
    NODEPORT = "nodeport"      # a nodePort on every node IP


class Outcome(StrEnum):
    BALANCE = "balance"        # DNAT to one of the endpoints
    REJECT = "reject"          # the service has no usable endpoint: refuse (ICMP / TCP reset)
    DROP = "drop"              # endpoints exist, none local under a Local traffic policy


class EndpointTarget(NamedTuple):
    """One DNAT target: an endpoint's address and port (a tuple: cheap to build, hash and sort
    by the thousands). Not ``backends.base.Backend``, which is the node's dataplane."""
    address: str
    port: int

    def __str__(self) -> str:
        return f"{self.address}:{self.port}"


@dataclass(frozen=True, slots=True)
class Frontend:
    service: ServiceKey
    port_name: str
    kind: FrontendKind
    address: str | None            # None for a nodePort (any node IP)
    protocol: Protocol
    port: int
    local: bool                    # traffic policy Local: local endpoints only
    endpoints: tuple[EndpointTarget, ...]  # sorted; empty unless outcome is BALANCE
    outcome: Outcome
    affinity_timeout: int | None = None          # seconds, sessionAffinity ClientIP
    source_ranges: tuple[str, ...] = ()          # LoadBalancer ingress IPs only
    # An external frontend (nodePort, external/LB IP) under externalTrafficPolicy Local: the
    # backends of its pod-network clients (not masqueraded) and of the node itself
    # (masqueraded), which the Local policy does not restrict -- kube-proxy's "short-circuit
    # pod traffic" / "short-circuit local traffic" rules (pkg/proxy/nftables/proxier.go, the
    # EXT chain; iptables alike): they reach every usable endpoint, even when none is local
    # (outcome DROP then only drops the other clients). Sorted; empty elsewhere.
    short_circuit: tuple[EndpointTarget, ...] = ()

    @property
    def masquerade(self) -> str:
        """When new connections are source-NATed: "always", "off-cluster" or "never"."""
        if self.kind is FrontendKind.CLUSTER:
            return "off-cluster"
        return "never" if self.local else "always"


@dataclass(frozen=True, slots=True)
class ServicePlan:
    service: ServiceKey
    frontends: tuple[Frontend, ...]
    local_endpoints: int           # ready local endpoints (health-check node port answer)
    health_check_node_port: int | None = None
    # addresses of endpoints on this node (or of unknown node): only these can hairpin
    local_addresses: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class NodeContext:
    """What the renderers need to know about the node they run on."""
    node_name: str
    node_ips: tuple[str, ...]              # NodePort addresses (never loopback)
    cluster_cidrs: tuple[str, ...]         # pod network(s): sources inside are not masqueraded

    def __post_init__(self) -> None:
        for ip in self.node_ips:
            if ipaddress.ip_address(ip).is_loopback:
                raise ValueError(f"node-ip: {ip} is a loopback address (NodePorts never use it)")


_NONE_HERE: frozenset[str] = frozenset()


def is_ipv4(address: str) -> bool:
    return ":" not in address


def _split_endpoints(
    port: ServicePort, endpoints: tuple[Endpoint, ...], node_name: str,
) -> tuple[tuple[EndpointTarget, ...], tuple[EndpointTarget, ...]]:
    """(every, local) usable endpoint targets of ``port``: the ready endpoints; if none is
    ready, the serving ones that are terminating (each list falls back on its own)."""
    name, proto, target = port.name, port.protocol, port.target_port
    ready: list[tuple[str, int]] = []
    fallback: list[tuple[str, int]] = []
    ready_local: list[tuple[str, int]] = []
    fallback_local: list[tuple[str, int]] = []
    for ep in endpoints:
        number: int | None = None
        for ep_port in ep.ports:
            if ep_port.name == name and ep_port.protocol == proto:
                number = ep_port.port
                break
        else:
            if not ep.ports and isinstance(target, int):
                number = target
        if number is None or ":" in ep.address:
            continue
        local = ep.node == node_name
        if ep.ready:
            ready.append((ep.address, number))
            if local:
                ready_local.append((ep.address, number))
        elif ep.serving and ep.terminating:
            fallback.append((ep.address, number))
            if local:
                fallback_local.append((ep.address, number))
    every = tuple(EndpointTarget(a, p) for a, p in sorted(set(ready or fallback)))
    mine_pairs = sorted(set(ready_local or fallback_local))
    if len(mine_pairs) == len(every) and all(b == m for b, m in zip(every, mine_pairs,
                                                                    strict=True)):
        return every, every
    return every, tuple(EndpointTarget(a, p) for a, p in mine_pairs)


def plan_service(
    service: Service, endpoints: tuple[Endpoint, ...], node: NodeContext,
) -> ServicePlan:
    """The frontends of ``service`` on this node, each with its outcome and endpoints."""
    frontends: list[Frontend] = []
    affinity = service.affinity_timeout if service.session_affinity else None
    for port in service.ports:
        every, local = _split_endpoints(port, endpoints, node.node_name)

        def add(kind: FrontendKind, address: str | None, number: int, is_local: bool,
                ranges: tuple[str, ...] = (), port: ServicePort = port,
                every: tuple[EndpointTarget, ...] = every,
                local: tuple[EndpointTarget, ...] = local) -> None:
            backends = local if is_local else every
            if not every:
                outcome = Outcome.REJECT
            elif not backends:
                outcome = Outcome.DROP
            else:
                outcome = Outcome.BALANCE
            external_local = is_local and kind is not FrontendKind.CLUSTER
            frontends.append(Frontend(
                service.key, port.name, kind, address, port.protocol, number, is_local,
                backends if outcome is Outcome.BALANCE else (), outcome, affinity, ranges,
                every if external_local else ()))

        for ip in service.cluster_ips:
            if is_ipv4(ip):
                add(FrontendKind.CLUSTER, ip, port.port, service.internal_traffic_local)
        ext_local = service.external_traffic_local
        for ip in service.external_ips:
            if is_ipv4(ip):
                add(FrontendKind.EXTERNAL, ip, port.port, ext_local)
        if service.type is ServiceType.LOAD_BALANCER:
            for ip in service.load_balancer_ips:
                if is_ipv4(ip):
                    add(FrontendKind.EXTERNAL, ip, port.port, ext_local,
                        tuple(service.load_balancer_source_ranges))
        if (service.type in (ServiceType.NODE_PORT, ServiceType.LOAD_BALANCER)
                and port.node_port):
            add(FrontendKind.NODEPORT, None, port.node_port, ext_local)
    ready_local = sum(1 for ep in endpoints if ep.ready and ep.node == node.node_name)
    hc_port = service.health_check_node_port if service.external_traffic_local else None
    # most services have no endpoint here: share the one empty frozenset (216 bytes each)
    here = frozenset(ep.address for ep in endpoints
                     if ep.node in (node.node_name, None)) or _NONE_HERE
    return ServicePlan(service.key, tuple(frontends), ready_local, hc_port, here)
