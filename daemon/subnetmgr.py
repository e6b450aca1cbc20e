"""The subnet manager interface: where a node's network config and subnet leases come from.

Flannel keeps this behind one interface (``pkg/subnet.Manager``) with an etcd and a Kubernetes
implementation; so do we. The lease keeper and the peer reconciler only talk to this protocol.
Implementations: :class:`netweft.daemon.etcdsubnets.EtcdSubnetManager` (Flannel's etcd layout),
:class:`netweft.daemon.kubesubnets.KubeSubnetManager` (Node objects, ``--kube-subnet-mgr``).

Errors: :class:`Unavailable` for anything transient (the store is down or slow: callers retry);
``ConfigError`` for a config that is present but invalid; ``LeaseError`` (and its subclasses
``SubnetsExhausted``, ``LeaseLost``) from ``netweft.ipam.leases`` for lease policy outcomes.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network
from typing import TYPE_CHECKING, Any, Protocol

from netweft.ipam.config import NetworkConfig
from netweft.ipam.lease import Lease
from netweft.ipam.leases import LeaseEvent

if TYPE_CHECKING:
    from netweft.daemon.agentconfig import AgentConfig
    from netweft.kv.etcd import EtcdClient


class Unavailable(Exception):
    """The subnet manager's store cannot be reached right now (retry later)."""


@dataclass(frozen=True)
class LeaseAttrs:
    """What this node publishes in its lease: public IP, backend type and BackendData
    (Flannel's ``LeaseAttrs``), and who it is: ``node_id`` (``ipam/identity.py``; None without
    a state directory), ``new_identity`` (made by this start), ``take_over`` (the operator's
    ``--take-over-lease``: the lease holding our public IP is ours whatever identity it names).
    """

    public_ip: IPv4Address
    backend_type: str
    backend_data: dict[str, Any] = field(default_factory=dict)
    node_id: str | None = None
    new_identity: bool = False
    take_over: bool = False


class SubnetManager(Protocol):
    """One network's config and leases (Flannel's ``subnet.Manager``)."""

    def describe_config(self) -> str:
        """Where the network config is read from, for messages (e.g. the etcd key)."""
        ...

    async def get_network_config(self) -> NetworkConfig | None:
        """The network config; None while there is none. Raises ConfigError, Unavailable."""
        ...

    async def public_ip_overwrite(self) -> IPv4Address | None:
        """The operator's public IP for this node, which beats the interface's (Flannel's
        ``public-ip-overwrite`` Node annotation; etcd has none: None). Raises Unavailable."""
        ...

    async def list_leases(self) -> tuple[list[Lease], int]:
        """Every lease and the revision they were read at (for :meth:`watch_leases`).
        Raises Unavailable."""
        ...

    async def acquire_lease(self, cfg: NetworkConfig, attrs: LeaseAttrs,
                            previous: IPv4Network | None) -> Lease:
        """This node's lease: its existing one, else ``previous`` when free, else a free
        subnet. Raises LeaseError (e.g. SubnetsExhausted; LeaseConflict / LeaseHeld when
        another identity's live lease holds our public IP), Unavailable."""
        ...

    async def renew_lease(self, lease: Lease) -> Lease:
        """Extend ``lease``; returns it with the new expiration (Unix seconds, None for a
        reservation). Raises LeaseLost when it is gone or no longer ours, Unavailable."""
        ...

    async def update_lease(self, lease: Lease, attrs: LeaseAttrs) -> Lease:
        """Rewrite our ``lease`` with new ``attrs`` (same subnet and expiry): the public IP
        changed while running. Raises Unavailable."""
        ...

    def watch_leases(self, leases: list[Lease], revision: int,
                     retry_delay: float) -> AsyncIterator[list[LeaseEvent]]:
        """Batches of lease events after ``revision`` relative to ``leases``; never ends,
        retries on its own (``retry_delay`` seconds) and re-lists after interruptions."""
        ...

    def lease_key(self, lease: Lease) -> str:
        """A stable identity of ``lease`` among all leases (its ``key_name``, the same string
        object for the lease's whole life)."""
        ...

    async def complete_lease(self) -> None:
        """The dataplane for our lease is up (Flannel's ``CompleteLease``: the Kubernetes
        manager sets the Node's NetworkUnavailable condition to False). Raises Unavailable."""
        ...

    async def ping(self) -> None:
        """A cheap reachability check; raises Unavailable."""
        ...

    async def close(self) -> None:
        """Release the store's connections (the daemon is stopping)."""
        ...


def open_subnet_manager(cfg: AgentConfig) -> tuple[SubnetManager, EtcdClient | None]:
    """The subnet manager ``cfg`` asks for: Node objects (``--kube-subnet-mgr``, no etcd at
    all; the etcd client is None) or etcd (connected; the client is returned too, for the CNI
    host's pod records). Flannel's ``newSubnetManager``."""
    if cfg.kube_subnet_mgr:
        from netweft.daemon.kubesubnets import KubeSubnetManager

        return KubeSubnetManager(cfg.node_name, cfg.net_conf_path, cfg.kubeconfig,
                                 retry=cfg.config_retry), None
    from netweft.daemon.etcdsubnets import EtcdSubnetManager
    from netweft.kv.etcd import EtcdClient

    etcd = EtcdClient(cfg.etcd)
    etcd.connect()  # _call() reads the stubs before it connects
    return EtcdSubnetManager(etcd, cfg.etcd.prefix, cfg.lease_ttl), etcd
