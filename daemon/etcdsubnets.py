"""The etcd subnet manager: Flannel's etcd layout (``<prefix>/config``, ``<prefix>/subnets/``)
over :class:`netweft.ipam.leases.LeaseStore`, with etcd errors as ``Unavailable``."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable
from dataclasses import replace
from ipaddress import IPv4Address, IPv4Network
from typing import TypeVar

from netweft.daemon.subnetmgr import LeaseAttrs, Unavailable
from netweft.ipam.config import NetworkConfig
from netweft.ipam.lease import Lease
from netweft.ipam.leases import LeaseEvent, LeaseStore
from netweft.kv.etcd import EtcdClient, EtcdError

T = TypeVar("T")


async def _guard(call: Awaitable[T]) -> T:
    try:
        return await call
    except EtcdError as exc:
        raise Unavailable(str(exc)) from exc


class EtcdSubnetManager:
    """``SubnetManager`` on etcd; ``ttl`` is the etcd lease TTL in seconds."""

    def __init__(self, etcd: EtcdClient, prefix: str, ttl: int) -> None:
        self.etcd = etcd
        self.store = LeaseStore(etcd, prefix, ttl=ttl)

    def describe_config(self) -> str:
        return self.store.config_key

    async def get_network_config(self) -> NetworkConfig | None:
        return await _guard(self.store.get_config())

    async def public_ip_overwrite(self) -> IPv4Address | None:
        """Flannel's etcd mode has no per-node overwrite: always None."""
        return None

    async def list_leases(self) -> tuple[list[Lease], int]:
        return await _guard(self.store.list())

    async def acquire_lease(self, cfg: NetworkConfig, attrs: LeaseAttrs,
                            previous: IPv4Network | None) -> Lease:
        return await _guard(self.store.acquire(
            cfg, attrs.public_ip, attrs.backend_type, dict(attrs.backend_data),
            previous=previous, node_id=attrs.node_id, new_identity=attrs.new_identity,
            take_over=attrs.take_over))

    async def renew_lease(self, lease: Lease) -> Lease:
        return await _guard(self.store.renew(lease))

    async def update_lease(self, lease: Lease, attrs: LeaseAttrs) -> Lease:
        updated = replace(lease, public_ip=attrs.public_ip, backend_type=attrs.backend_type,
                          backend_data=dict(attrs.backend_data))
        await _guard(self.etcd.put(self.store.key_for(lease), updated.value_json(),
                                   lease=lease.etcd_lease_id))
        return updated

    def watch_leases(self, leases: list[Lease], revision: int,
                     retry_delay: float) -> AsyncIterator[list[LeaseEvent]]:
        return self.store.watch(leases, revision, retry_delay=retry_delay)

    def lease_key(self, lease: Lease) -> str:
        """The key's name under ``<prefix>/subnets/`` (cached in the lease: the daemon's views
        of 5,000 leases kept three fresh copies of every full key, ~270 bytes a lease)."""
        return lease.key_name

    async def complete_lease(self) -> None:
        """Nothing to announce in etcd: the lease itself is the announcement."""

    async def ping(self) -> None:
        await _guard(self.etcd.current_revision())

    async def close(self) -> None:
        await self.etcd.close()
