"""The node agent: the composition root wiring the daemon's parts, like Flannel's ``main.go``.

Parts (each owns one job): the state directory (lock, identity, status file), health
(``/readyz``, metrics HTTP, store probe), a subnet manager (etcd, or Node objects with
``--kube-subnet-mgr``), the public side (chosen at start, followed while running), the lease
keeper (config, acquire, renew, re-acquire, subnet.env), the backend chosen by type name from
the registry, the peer reconciler (lease events and full passes), the netlink watcher, the
firewall keeper and the CNI host. One asyncio loop runs them; netlink work runs in one kernel
thread (``daemon/kernel.py``), the watchers in their own.

Start-up order: lock the state directory, serve health, pick the public side (kube mode: the
Node's public-ip-overwrite first), wait for the network config, create the backend, acquire the
lease, list the leases, set up the device, write subnet.env, install the firewall rules, one
full pass, announce it (kube mode: NetworkUnavailable=False); then run the loops.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from typing import Any

from netweft.backends import registry
from netweft.backends.base import Backend, BackendError
from netweft.backends.netlink import Netlink
from netweft.daemon.agentconfig import AgentConfig
from netweft.daemon.asyncutil import cancel_all, unless_stopped, until_one_ends
from netweft.daemon.errors import AgentError
from netweft.daemon.firewall import Runner, make_firewall
from netweft.daemon.fwkeeper import FirewallKeeper
from netweft.daemon.health import READY, Health
from netweft.daemon.kernel import KernelWorker
from netweft.daemon.leasekeeper import KeeperSettings, LeaseKeeper
from netweft.daemon.metrics import Metrics, daemon_metrics
from netweft.daemon.nftwatch import NftWatcher
from netweft.daemon.nlwatch import NetlinkWatcher, SocketWatcher
from netweft.daemon.peers import PeerReconciler
from netweft.daemon.publicside import PublicSideFollower, select_side
from netweft.daemon.statedir import StateDir
from netweft.daemon.subnetmgr import LeaseAttrs, SubnetManager, open_subnet_manager
from netweft.ipam.claim import previous_lease
from netweft.ipam.identity import NodeIdentity
from netweft.ipam.lease import Lease
from netweft.ipam.leases import LeaseError

__all__ = ["Agent", "AgentConfig", "AgentError"]

log = logging.getLogger("netweft.agent")


class Agent:
    """One node's daemon. ``await Agent(cfg).run(stop_event)``; AgentError for fatal problems."""

    def __init__(self, cfg: AgentConfig, metrics: Metrics | None = None) -> None:
        self.cfg = cfg
        self.metrics = metrics or daemon_metrics()
        self.health = Health(self.metrics)
        self.kernel = KernelWorker()
        self.state = StateDir(cfg.state_dir)
        self.firewall = FirewallKeeper(None if cfg.firewall == "none" else make_firewall(
            cfg.firewall, Runner(cfg.netns)), self.metrics)
        self.nl: Netlink | None = None
        self.etcd: Any = None  # the etcd client (etcd mode), also for the CNI host's records
        self.manager: SubnetManager | None = None
        self.side: PublicSideFollower | None = None
        self.keeper: LeaseKeeper | None = None
        self.backend: Backend | None = None
        self.peers: PeerReconciler | None = None
        self.cni_host: Any = None
        self.identity: NodeIdentity | None = None
        self._take_over = cfg.take_over_lease  # only for the first acquisition
        self._revision = 0
        self._tasks: list[asyncio.Task[Any]] = []

    def ready(self) -> tuple[bool, str]:
        return self.health.ready()

    async def start(self) -> None:
        """Everything up to the first full pass; raises AgentError for fatal problems."""
        cfg = self.cfg
        self.state.lock()
        self.identity = self.state.identity()
        self.nl = nl = Netlink(cfg.netns)
        await self.health.serve(cfg.metrics_addr)
        manager, self.etcd = open_subnet_manager(cfg)
        self.manager = manager
        side = await select_side(nl, self.kernel, cfg.iface, manager, self.health,
                                 cfg.config_retry)
        self.keeper = keeper = LeaseKeeper(
            manager, KeeperSettings(cfg.subnet_file, cfg.ip_masq, cfg.renew_margin,
                                    cfg.config_retry), self.health, self._lease_attrs)
        netcfg = await keeper.wait_config()
        self.metrics.set("netweft_etcd_up", 1)
        self.metrics.inc("netweft_etcd_errors_total", 0)  # the series exists from the start
        leases, _rev = await keeper.retry("listing leases", manager.list_leases)
        previous = previous_lease(leases, self.identity.node_id if self.identity else None,
                                  side.public_ip, netcfg.backend.type)
        try:
            self.backend = registry.create(registry.BackendParams(
                netcfg.backend, nl, side.underlay, cfg.state_dir, previous, netcfg.network))
        except BackendError as exc:
            raise AgentError(str(exc)) from None
        self.side = PublicSideFollower(nl, cfg.iface, side, self.backend)
        self.peers = peers = PeerReconciler(self.backend, self.kernel, self.metrics,
                                            lambda: keeper.lease, manager.lease_key,
                                            cfg.reconcile_interval, netcfg)
        peers.on_own_lease, peers.on_own_altered = keeper.request_reacquire, keeper.request_restore
        peers.on_pass, peers.before_full = self._after_pass, self.side.check
        keeper.on_lease = self._on_reacquired
        try:
            lease = await keeper.acquire(keeper.previous_subnet())
        except (LeaseError, BackendError) as exc:  # every subnet taken; our IP held; no key file
            raise AgentError(str(exc)) from None
        self._take_over = False
        leases, self._revision = await keeper.retry("listing leases", manager.list_leases)
        peers.set_leases(leases)
        try:
            self.backend.check_peers(lease, peers.valid_leases())
            await self._use_lease(lease)
        except BackendError as exc:
            raise AgentError(str(exc)) from None
        await peers.reconcile_once()
        await keeper.retry("announcing the dataplane", manager.complete_lease)
        self.health.reason = READY

    async def _lease_attrs(self) -> LeaseAttrs:
        assert self.backend is not None and self.side is not None
        data = await self.kernel.call(self.backend.backend_data)
        ident = self.identity
        return LeaseAttrs(self.side.side.public_ip, self.backend.type_name, dict(data),
                          node_id=ident.node_id if ident else None,
                          new_identity=bool(ident and ident.created), take_over=self._take_over)

    async def _use_lease(self, lease: Lease) -> None:
        """Device, subnet.env and firewall rules for ``lease``. Raises BackendError."""
        assert self.peers and self.keeper and self.backend and self.keeper.config
        await self.peers.setup_device(lease)
        self.keeper.write_subnet_env(self.backend.mtu())
        await self.firewall.follow_lease(self.keeper.config.network, lease.subnet,
                                         self.cfg.ip_masq)

    async def _on_reacquired(self, lease: Lease) -> None:
        assert self.peers is not None
        self.peers.note_own(lease)
        await self._use_lease(lease)
        self.peers.request_full()

    def _after_pass(self) -> None:
        """subnet.env when the MTU changed; the lease when the public IP did; the status file."""
        keeper, side, peers, backend = self.keeper, self.side, self.peers, self.backend
        if not (keeper and keeper.lease and side and peers and backend):
            return
        keeper.write_subnet_env(backend.mtu())
        keeper.follow_public_ip(side.side.public_ip)
        self.state.write_status({
            "pid": os.getpid(), "lease": keeper.lease.to_dict(), "backend": backend.type_name,
            "mtu": backend.mtu(), "dataplane": backend.status(),
            **side.status(), **peers.status()})

    async def _watch(self) -> None:
        assert self.keeper and self.peers
        async for events in self.keeper.manager.watch_leases(
                list(self.peers.leases.values()), self._revision, self.cfg.config_retry):
            self.peers.on_events(events)

    async def run(self, stop: asyncio.Event) -> None:
        """Start, then serve until ``stop`` is set (also while still starting, e.g. waiting for
        the network config). Raises AgentError for fatal start-up problems."""
        cfg = self.cfg
        watchers: list[SocketWatcher] = []
        waiter = asyncio.create_task(stop.wait())
        try:
            if not await unless_stopped(self.start(), waiter):
                return
            assert self.peers and self.keeper and self.backend and self.nl
            self._tasks = [asyncio.create_task(c, name=n) for n, c in (
                ("reconcile", self.peers.run()), ("lease watch", self._watch()),
                ("lease renewal", self.keeper.run()),
                ("firewall", self.firewall.run(cfg.firewall_interval)),
                ("etcd probe", self.health.probe_loop(self.keeper.manager.ping,
                                                      cfg.etcd_probe_interval)))]
            if cfg.netlink_events:
                watchers.append(NetlinkWatcher(cfg.netns, self.backend.watched, self.peers.poke))
                if self.firewall.firewall is not None:
                    watchers.append(NftWatcher(cfg.netns, self.firewall.firewall.watched_tables,
                                               self.firewall.poke))
            for watcher in watchers:
                watcher.start()
            if cfg.cni_socket:
                from netweft.daemon.cnihost import start_cni

                self.cni_host, pod_sync = await start_cni(cfg, self.nl, self.kernel,
                                                          self.health, self.etcd)
                if pod_sync is not None:
                    self._tasks.append(asyncio.create_task(pod_sync.run(), name="pod records"))
            log.info("netweft daemon ready: %d peer lease(s)", len(self.peers.leases) - 1)
            await until_one_ends(waiter, self._tasks)
        finally:
            waiter.cancel()
            for watcher in watchers:    # all at once, then wait for each
                watcher.request_stop()
            for watcher in watchers:
                await asyncio.to_thread(watcher.stop)
            await self.shutdown()

    async def shutdown(self) -> None:
        """Stop the loops and the CNI host; clean up (``--cleanup-on-exit``) or close the
        backend; release the store, netlink, the kernel thread and the state directory."""
        if self.keeper is not None and self.keeper.lease is not None:
            log.info("stopping; %s", "cleaning up the dataplane" if self.cfg.cleanup_on_exit
                     else "the dataplane stays in place")
        republishing = self.keeper.republishing if self.keeper else None
        pending = await cancel_all(set(self._tasks) | ({republishing} if republishing else set()))
        if pending:
            log.warning("%d task(s) did not stop", len(pending))
        self._tasks = []
        if self.cni_host is not None:
            await asyncio.to_thread(self.cni_host.stop)
            self.cni_host = None
        if self.cfg.cleanup_on_exit:
            await self.cleanup()
        elif self.backend is not None:  # e.g. wireguard-go, which must not outlive us
            with contextlib.suppress(Exception):
                await self.kernel.call(self.backend.close)
        await self.health.stop()
        if self.manager is not None:
            with contextlib.suppress(Exception):
                await self.manager.close()
        if self.nl is not None:
            with contextlib.suppress(Exception):
                await self.kernel.call(self.nl.close)
        self.kernel.shutdown()
        self.state.unlock()

    async def cleanup(self) -> None:
        """``--cleanup-on-exit``: remove the device, our routes and our firewall rules
        (subnet.env stays: it names our subnet, which the next start asks for again)."""
        log.info("cleaning up the dataplane")
        if self.backend is not None:
            try:
                await self.kernel.call(self.backend.teardown)
            except Exception as exc:  # keep going: the firewall must still be removed
                log.warning("removing the %s dataplane failed: %s", self.backend.type_name, exc)
        await self.firewall.teardown()
