"""LeaseKeeper: renewals and republishes of this node's lease do not overwrite each other.

The subnet manager here is a fake (pure logic): the race needs an etcd write that is still in
flight while the other one starts, which a real etcd cannot be made to produce on demand.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import replace
from ipaddress import IPv4Address, IPv4Network

from netweft.daemon.health import Health
from netweft.daemon.leasekeeper import KeeperSettings, LeaseKeeper
from netweft.daemon.metrics import Metrics
from netweft.daemon.subnetmgr import LeaseAttrs
from netweft.ipam.lease import Lease

OLD, NEW = IPv4Address("198.18.0.1"), IPv4Address("198.18.0.2")


class SlowStore:
    """One lease key. ``renew_lease`` puts the keeper's value back when the stored one differs
    (as ``LeaseStore.renew`` does); ``update_lease`` waits for ``gate`` (a slow etcd) first."""

    def __init__(self, lease: Lease) -> None:
        self.stored = lease
        self.gate = asyncio.Event()
        self.updating = asyncio.Event()

    async def renew_lease(self, lease: Lease) -> Lease:
        if self.stored.public_ip != lease.public_ip:
            self.stored = replace(self.stored, public_ip=lease.public_ip)
        return replace(lease, expiration=time.time() + 86400)

    async def update_lease(self, lease: Lease, attrs: LeaseAttrs) -> Lease:
        self.updating.set()
        await self.gate.wait()
        self.stored = replace(lease, public_ip=attrs.public_ip)
        return self.stored


def test_a_renewal_during_a_slow_republish_keeps_the_republished_public_ip() -> None:
    async def scenario() -> tuple[IPv4Address | None, IPv4Address | None]:
        lease = Lease(IPv4Network("10.244.1.0/24"), OLD, etcd_lease_id=7,
                      expiration=time.time() + 86400)
        store = SlowStore(lease)

        async def attrs() -> LeaseAttrs:
            return LeaseAttrs(public_ip=NEW, backend_type="vxlan")

        keeper = LeaseKeeper(store, KeeperSettings(renew_margin=60), Health(Metrics()),
                             attrs)  # type: ignore[arg-type]
        keeper.lease = lease
        runner = asyncio.create_task(keeper.run())
        keeper.follow_public_ip(NEW)          # the public side moved: republish (slow)
        await store.updating.wait()
        keeper.request_restore("renew now")   # a renewal while the republish is in flight
        await asyncio.sleep(0.05)
        store.gate.set()
        assert keeper.republishing is not None
        await keeper.republishing
        await asyncio.sleep(0.05)
        keeper.request_restore("renew again")  # the next renewal must not put OLD back
        await asyncio.sleep(0.05)
        runner.cancel()
        assert keeper.lease is not None
        return keeper.lease.public_ip, store.stored.public_ip

    held, stored = asyncio.run(scenario())
    assert (held, stored) == (NEW, NEW)
