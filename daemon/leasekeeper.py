"""The lease keeper: this node's subnet lease from start to stop.

Waits for a valid network config, acquires the lease (its own, else the subnet named in
``subnet.env``, else a free one), writes ``subnet.env``, renews the lease ``renew_margin``
seconds before it expires and re-acquires it when it is revoked, deleted or taken (Flannel
exits there). It talks only to a :class:`~netweft.daemon.subnetmgr.SubnetManager`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from ipaddress import IPv4Address, IPv4Interface, IPv4Network
from typing import Any

from netweft.daemon.asyncutil import wait_event
from netweft.daemon.health import Health
from netweft.daemon.subnetmgr import LeaseAttrs, SubnetManager, Unavailable
from netweft.ipam import subnetenv
from netweft.ipam.config import ConfigError, NetworkConfig
from netweft.ipam.lease import Lease
from netweft.ipam.leases import LeaseError, LeaseHeld, LeaseLost

log = logging.getLogger("netweft.agent")

HELD_POLL = 10.0  # seconds between looks while another identity's lease holds our public IP


@dataclass(frozen=True)
class KeeperSettings:
    """``subnet_file``: where subnet.env goes; ``ip_masq``: its FLANNEL_IPMASQ;
    ``renew_margin``: seconds before expiry to renew; ``retry``: seconds between retries."""

    subnet_file: str = subnetenv.DEFAULT_PATH
    ip_masq: bool = True
    renew_margin: float = 3600
    retry: float = 2.0


def subnet_env_for(cfg: NetworkConfig, lease: Lease, mtu: int, ipmasq: bool) -> subnetenv.SubnetEnv:
    """subnet.env for ``lease`` (FLANNEL_SUBNET is the subnet's first host, Flannel's form)."""
    assert lease.subnet is not None
    gw = IPv4Interface(f"{lease.subnet.network_address + 1}/{lease.subnet.prefixlen}")
    return subnetenv.SubnetEnv(network=cfg.network, subnet=gw, mtu=mtu, ipmasq=ipmasq)


OnLease = Callable[[Lease], Awaitable[None]]


class LeaseKeeper:
    """Holds ``lease`` (None until :meth:`acquire`). ``attrs()`` gives what to publish (it may
    touch the kernel, e.g. to read the VTEP MAC); ``on_lease(lease)`` runs after every
    re-acquisition (set up the dataplane for it)."""

    def __init__(self, manager: SubnetManager, settings: KeeperSettings, health: Health,
                 attrs: Callable[[], Awaitable[LeaseAttrs]]) -> None:
        self.manager = manager
        self.settings = settings
        self.health = health
        self.attrs = attrs
        self.on_lease: OnLease | None = None
        self.config: NetworkConfig | None = None
        self.lease: Lease | None = None
        self._reacquire = asyncio.Event()  # wakes run(): re-acquire, or renew at once
        self._restore = False              # the wake-up asks for a renewal (restore) only
        self.republishing: asyncio.Task[None] | None = None
        # Renewals and republishes write the same key: one at a time, each from the lease held
        # when it starts, or a renewal of the old value undoes a republish still in flight.
        self._writing = asyncio.Lock()

    @property
    def metrics(self) -> Any:
        return self.health.metrics

    async def wait_config(self) -> NetworkConfig:
        """The network config; waits (``/readyz`` says why) while it is absent or invalid."""
        announced = ""
        while True:
            try:
                cfg = await self.manager.get_network_config()
                if cfg is not None:
                    if cfg.network is None:
                        raise ConfigError("Network: netweft needs an IPv4 network")
                    self.config = cfg
                    return cfg
                why = f"waiting for the network config at {self.manager.describe_config()}"
            except ConfigError as exc:
                why = f"network config is invalid ({exc}); waiting for a fix"
            except Unavailable as exc:
                self.health.store_error()
                why = f"etcd: {exc}; retrying"
            if why != announced:
                log.warning("%s", why)
                announced = why
            self.health.reason = why
            await asyncio.sleep(self.settings.retry)

    async def retry(self, what: str, fn: Callable[[], Awaitable[Any]]) -> Any:
        """``await fn()`` until it does not raise Unavailable (the daemon survives outages)."""
        while True:
            try:
                return await fn()
            except Unavailable as exc:
                log.warning("%s: %s; retrying", what, exc)
                self.health.store_error(f"{what}: {exc}")
                await asyncio.sleep(self.settings.retry)

    def previous_subnet(self) -> IPv4Network | None:
        """The subnet ``subnet.env`` names (what this node had before), if any."""
        try:
            env = subnetenv.read(self.settings.subnet_file)
        except subnetenv.SubnetEnvError:
            return None
        return env.subnet.network if env.subnet is not None else None

    async def acquire(self, previous: IPv4Network | None) -> Lease:
        """Acquire (or take back) our lease; retries while the store is unavailable, and
        waits while another identity's live lease holds our public IP and this node's
        identity is new (LeaseHeld: ``/readyz`` says why, tried again every few seconds
        until that lease expires). Raises LeaseError (every subnet is taken; LeaseConflict:
        another node's live lease holds our public IP)."""
        assert self.config is not None
        cfg = self.config
        announced = ""
        while True:
            attrs = await self.attrs()
            try:
                lease = await self.retry("acquiring a lease", lambda a=attrs: (
                    self.manager.acquire_lease(cfg, a, previous)))
                break
            except LeaseHeld as exc:
                if str(exc).split("; it expires")[0] != announced:
                    log.warning("%s", exc)
                    announced = str(exc).split("; it expires")[0]
                self.health.reason = str(exc)
                left = exc.seconds_left
                await asyncio.sleep(min(HELD_POLL, max(self.settings.retry, left))
                                    if left >= 0 else HELD_POLL)
        self.metrics.inc("netweft_lease_acquisitions_total")
        if lease.expiration:
            self.metrics.set("netweft_lease_expiration_timestamp_seconds", lease.expiration)
        log.info("lease %s (public IP %s, backend %s)", lease.subnet, attrs.public_ip,
                 attrs.backend_type)
        self.lease = lease
        return lease

    def write_subnet_env(self, mtu: int) -> None:
        """subnet.env for the current lease (atomic; unchanged content is not rewritten)."""
        assert self.config is not None and self.lease is not None
        env = subnet_env_for(self.config, self.lease, mtu, self.settings.ip_masq)
        if subnetenv.write(env, self.settings.subnet_file):
            log.info("wrote %s (subnet %s, mtu %d)", self.settings.subnet_file, env.subnet,
                     env.mtu)

    async def republish(self) -> None:
        """Our published attributes changed while running (the public IP): rewrite the lease
        with them, keeping its subnet (peers follow through their watch)."""
        async with self._writing:
            assert self.lease is not None
            attrs = await self.attrs()
            lease = self.lease
            updated = await self.retry("republishing the lease",
                                       lambda: self.manager.update_lease(lease, attrs))
            if self.lease is lease:  # not re-acquired meanwhile
                self.lease = updated
        log.warning("republished lease %s with public IP %s", lease.subnet, attrs.public_ip)

    def follow_public_ip(self, public_ip: IPv4Address | None) -> None:
        """The public side's IP after a pass: republish the lease (in a task of its own, one
        at a time) when it names another one."""
        if self.lease is None or self.lease.public_ip == public_ip:
            return
        if self.republishing is None or self.republishing.done():
            self.republishing = asyncio.create_task(self.republish())

    def request_reacquire(self, why: str) -> None:
        """Our lease was removed or taken (seen in the watch): re-acquire it now."""
        log.warning("%s: re-acquiring", why)
        self._restore = False
        self._reacquire.set()

    def request_restore(self, why: str) -> None:
        """Our lease was altered in etcd but is still ours (seen in the watch): renew it now,
        which puts our value back (``LeaseStore.renew``)."""
        log.warning("%s: restoring it", why)
        if not self._reacquire.is_set():
            self._restore = True
        self._reacquire.set()

    async def run(self) -> None:
        """Renew before expiry; re-acquire when the lease is lost (never returns)."""
        while True:
            lease = self.lease
            assert lease is not None
            if lease.expiration is None or lease.reserved:
                wait = 60.0
            else:
                wait = max(1.0, lease.expiration - self.settings.renew_margin - time.time())
            await wait_event(self._reacquire, wait)
            restore = self._restore
            if self._reacquire.is_set():
                self._reacquire.clear()
                self._restore = False
                if not restore:
                    await self._reacquire_lease()
                    continue
            if self.lease is not None and self.lease.reserved and not restore:
                continue
            try:
                async with self._writing:
                    lease = self.lease  # republished meanwhile? renew what we hold now
                    assert lease is not None
                    renewed = await self.manager.renew_lease(lease)
                    if self.lease is lease:
                        self.lease = replace(lease, expiration=renewed.expiration,
                                             etcd_lease_id=renewed.etcd_lease_id,
                                             mod_revision=renewed.mod_revision)
            except LeaseLost as exc:
                log.warning("%s: re-acquiring", exc)
                await self._reacquire_lease()
                continue
            except Unavailable as exc:
                self.health.store_error()
                log.warning("renewing the lease failed (%s); retrying", exc)
                await asyncio.sleep(self.settings.retry)
                continue
            if renewed.expiration:
                self.metrics.set("netweft_lease_expiration_timestamp_seconds",
                                 renewed.expiration)
            log.debug("renewed lease %s", lease.subnet)

    async def _reacquire_lease(self) -> None:
        assert self.lease is not None
        old = self.lease
        try:
            lease = await self.acquire(old.subnet)
        except LeaseError as exc:
            log.error("re-acquiring the lease failed: %s", exc)
            await asyncio.sleep(self.settings.retry)
            self._reacquire.set()
            return
        if lease.subnet != old.subnet:
            log.warning("re-acquired a different subnet %s (was %s)", lease.subnet, old.subnet)
        if self.on_lease is not None:
            await self.on_lease(lease)
