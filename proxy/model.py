"""The service model the proxy renders: Services, their ports, and their endpoints.

Sources (Kubernetes API, etcd) translate their objects into these; renderers only read them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum


class Protocol(StrEnum):
    TCP = "TCP"
    UDP = "UDP"
    SCTP = "SCTP"


class ServiceType(StrEnum):
    CLUSTER_IP = "ClusterIP"
    NODE_PORT = "NodePort"
    LOAD_BALANCER = "LoadBalancer"


DEFAULT_AFFINITY_TIMEOUT = 10800  # seconds, Kubernetes' default for sessionAffinity ClientIP


@dataclass(frozen=True, order=True, slots=True)
class ServiceKey:
    """namespace/name of a Service. Its hash is computed once (every dict and set of the
    proxy is keyed by it: the dataclass hash recomputed per lookup was a tenth of a full
    sync's CPU)."""
    namespace: str
    name: str
    _hash: int = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_hash", hash((self.namespace, self.name)))

    def __hash__(self) -> int:
        return self._hash

    def __str__(self) -> str:
        return f"{self.namespace}/{self.name}"


@dataclass(frozen=True, slots=True)
class ServicePort:
    name: str                      # "" for a single unnamed port
    protocol: Protocol
    port: int                      # the service port
    target_port: int | str         # number, or a named container port resolved per endpoint
    node_port: int | None = None   # NodePort / LoadBalancer only


@dataclass(frozen=True, slots=True)
class Service:
    key: ServiceKey
    type: ServiceType
    cluster_ips: tuple[str, ...]                 # "" / "None" never appear: headless is not proxied
    ports: tuple[ServicePort, ...]
    external_ips: tuple[str, ...] = ()
    load_balancer_ips: tuple[str, ...] = ()      # status.loadBalancer.ingress[].ip
    load_balancer_source_ranges: tuple[str, ...] = ()
    session_affinity: bool = False               # sessionAffinity: ClientIP
    affinity_timeout: int = DEFAULT_AFFINITY_TIMEOUT
    external_traffic_local: bool = False         # externalTrafficPolicy: Local
    internal_traffic_local: bool = False         # internalTrafficPolicy: Local
    health_check_node_port: int | None = None


@dataclass(frozen=True, slots=True)
class EndpointPort:
    name: str            # matches ServicePort.name
    port: int
    protocol: Protocol = Protocol.TCP


@dataclass(frozen=True, slots=True)
class Endpoint:
    address: str
    ports: tuple[EndpointPort, ...]
    node: str | None = None
    ready: bool = True
    serving: bool = True
    terminating: bool = False
