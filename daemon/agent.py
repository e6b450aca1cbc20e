"""The node agent: the composition root wiring the daemon's parts, like Flannel's ``main.go``.

Parts (each owns one job): the state directory (lock, status file), health (``/readyz``, metrics
HTTP, store probe), a subnet manager (etcd, or Node objects with ``--kube-subnet-mgr``), the lease
keeper (config, acquire, renew, re-acquire, subnet.env), the backend chosen by type name from
the registry, the peer reconciler (lease events and full passes), the netlink watcher, the
firewall keeper and the CNI host. One asyncio loop runs them; netlink work runs in one kernel
thread (``daemon/kernel.py``), the watcher in its own.

Start-up order: lock the state directory, serve health, (kube mode: read the Node's
public-ip-overwrite), pick the public interface, wait for the network config, create the backend,
acquire the lease, list the leases, set up the device, write subnet.env, install the firewall
rules, one full pass, announce it (kube mode: NetworkUnavailable=False); then run the loops.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from dataclasses import replace
from ipaddress import IPv4Address
from typing import Any

from netweft.backends import registry
from netweft.backends.base import Backend, BackendError
from netweft.backends.netlink import Netlink
from netweft.daemon import iface
from netweft.daemon.agentconfig import AgentConfig
from netweft.daemon.errors import AgentError
from netweft.daemon.etcdsubnets import EtcdSubnetManager
from netweft.daemon.firewall import FirewallSpec, Runner, make_firewall
from netweft.daemon.fwkeeper import FirewallKeeper
from netweft.daemon.health import READY, Health
from netweft.daemon.kernel import KernelWorker
from netweft.daemon.leasekeeper import KeeperSettings, LeaseKeeper
from netweft.daemon.metrics import Metrics, daemon_metrics
from netweft.daemon.nftwatch import NftWatcher
from netweft.daemon.nlwatch import NetlinkWatcher, SocketWatcher
from netweft.daemon.peers import PeerReconciler
from netweft.daemon.publicside import PublicSideFollower
from netweft.daemon.statedir import StateDir
from netweft.daemon.subnetmgr import LeaseAttrs, SubnetManager, Unavailable
from netweft.ipam.identity import IdentityError, NodeIdentity, load_or_create
from netweft.ipam.lease import Lease
from netweft.ipam.leases import LeaseError
from netweft.kv.etcd import EtcdClient

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
        self.firewall = FirewallKeeper(None, self.metrics)
        self.nl: Netlink | None = None
        self.side: PublicSideFollower | None = None
        self.etcd: EtcdClient | None = None
        self.manager: SubnetManager | None = None
        self.keeper: LeaseKeeper | None = None
        self.backend: Backend | None = None
        self.peers: PeerReconciler | None = None
        self.cni_host: Any = None
        self.pod_sync: Any = None
        self.identity: NodeIdentity | None = None
        self._take_over = cfg.take_over_lease  # only for the first acquisition
        self._revision = 0
        self._tasks: list[asyncio.Task[Any]] = []
        self._republish: asyncio.Task[None] | None = None

    def ready(self) -> tuple[bool, str]:
        return self.health.ready()

    # --- start-up -------------------------------------------------------------------------------

    async def start(self) -> None:
        """Everything up to the first full pass; raises AgentError for fatal problems."""
        cfg = self.cfg
        self.state.lock()
        if cfg.state_dir:
            try:
                self.identity = load_or_create(cfg.state_dir)
            except IdentityError as exc:
                raise AgentError(str(exc)) from None
            log.info("node identity %s (%s)", self.identity.node_id,
                     f"new: {self.identity.path}" if self.identity.created
                     else self.identity.path)
        self.nl = nl = Netlink(cfg.netns)
        await self.health.serve(cfg.metrics_addr)
        manager = self._subnet_manager()
        opts = cfg.iface
        if cfg.kube_subnet_mgr:  # Flannel: the Node's public-ip-overwrite beats the interface
            overwrite = await self._public_ip_overwrite(manager)
            if overwrite is not None:
                log.info("public IP %s from the node annotation public-ip-overwrite", overwrite)
                opts = replace(opts, public_ip=overwrite)
        try:
            side = await self.kernel.call(iface.select, nl, opts)
        except iface.IfaceError as exc:
            raise AgentError(str(exc)) from None
        log.info("public interface %s, address %s, public IP %s, mtu %d", side.underlay.iface,
                 side.underlay.ip, side.public_ip, side.underlay.mtu)
        if cfg.firewall != "none":
            self.firewall.firewall = make_firewall(cfg.firewall, Runner(cfg.netns))
        self.keeper = keeper = LeaseKeeper(
            manager, KeeperSettings(cfg.subnet_file, cfg.ip_masq, cfg.renew_margin,
                                    cfg.config_retry), self.health, self._lease_attrs)
        netcfg = await keeper.wait_config()
        self.metrics.set("netweft_etcd_up", 1)
        self.metrics.inc("netweft_etcd_errors_total", 0)  # the series exists from the start
        leases, _rev = await keeper.retry("listing leases", manager.list_leases)
        node_id = self.identity.node_id if self.identity else None
        previous = next((le for le in leases if node_id and le.node_id == node_id
                         and le.backend_type == netcfg.backend.type), None) or \
            next((le for le in leases if le.public_ip == side.public_ip and not le.node_id
                  and le.backend_type == netcfg.backend.type), None)
        try:
            self.backend = registry.create(registry.BackendParams(
                netcfg.backend, nl, side.underlay, cfg.state_dir, previous, netcfg.network))
        except BackendError as exc:
            raise AgentError(str(exc)) from None
        self.side = PublicSideFollower(nl, cfg.iface, side, self.backend)
        self.peers = peers = PeerReconciler(self.backend, self.kernel, self.metrics,
                                            lambda: keeper.lease, manager.lease_key,
                                            cfg.reconcile_interval, netcfg)
        peers.on_own_lease = keeper.request_reacquire
        peers.on_own_altered = keeper.request_restore
        peers.on_pass = self._after_pass
        peers.before_full = self.side.check
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

    def _subnet_manager(self) -> SubnetManager:
        """Where config and leases come from: the Node objects (``--kube-subnet-mgr``, no
        etcd at all) or etcd."""
        if self.cfg.kube_subnet_mgr:
            from netweft.daemon.kubesubnets import KubeSubnetManager

            self.manager = KubeSubnetManager(self.cfg.node_name, self.cfg.net_conf_path,
                                             self.cfg.kubeconfig, retry=self.cfg.config_retry)
            return self.manager
        self.etcd = EtcdClient(self.cfg.etcd)
        self.etcd.connect()  # _call() reads the stubs before it connects
        self.manager = EtcdSubnetManager(self.etcd, self.cfg.etcd.prefix, self.cfg.lease_ttl)
        return self.manager

    async def _public_ip_overwrite(self, manager: Any) -> IPv4Address | None:
        """The Node's ``public-ip-overwrite`` (None without one); retries while the API is
        unreachable."""
        while True:
            try:
                return await manager.public_ip_overwrite()  # type: ignore[no-any-return]
            except Unavailable as exc:
                self.health.reason = f"reading node {self.cfg.node_name}: {exc}; retrying"
                log.warning("%s", self.health.reason)
                await asyncio.sleep(self.cfg.config_retry)

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
        network = self.keeper.config.network
        if network is not None and lease.subnet is not None:
            self.firewall.spec = FirewallSpec(network, lease.subnet, masquerade=self.cfg.ip_masq)
        await self.firewall.ensure()

    async def _on_reacquired(self, lease: Lease) -> None:
        assert self.peers is not None
        self.peers.note_own(lease)
        await self._use_lease(lease)
        self.peers.request_full()

    def _after_pass(self) -> None:
        """Status file; subnet.env when the MTU changed; the lease when the public IP did."""
        lease = self.keeper.lease if self.keeper else None
        if lease is None or self.side is None or self.peers is None or self.backend is None:
            return
        assert self.keeper is not None
        self.keeper.write_subnet_env(self.backend.mtu())
        if lease.public_ip != self.side.side.public_ip and (
                self._republish is None or self._republish.done()):
            self._republish = asyncio.create_task(self.keeper.republish())
        peers, backend, underlay = self.peers, self.backend, self.side.side.underlay
        self.state.write_status({
            "pid": os.getpid(), "lease": lease.to_dict(),
            "backend": backend.type_name if backend else None,
            "device": peers.device.name if peers.device else None,
            "mtu": backend.mtu() if backend else None,
            "iface": underlay.iface, "publicIP": str(self.side.side.public_ip),
            "address": str(underlay.ip), "underlayMTU": underlay.mtu,
            "ifaceError": self.side.error,
            "peers": peers.programmed, "leases": len(peers.leases),
            "lastReconcile": peers.last_reconcile, "reconciles": peers.reconciles,
            "errors": peers.last_errors[:20],
            "dataplane": backend.status() if backend else {},
        })

    # --- running --------------------------------------------------------------------------------

    async def _watch(self) -> None:
        assert self.keeper and self.peers
        async for events in self.keeper.manager.watch_leases(
                list(self.peers.leases.values()), self._revision, self.cfg.config_retry):
            self.peers.on_events(events)

    async def run(self, stop: asyncio.Event) -> None:
        """Start, then serve until ``stop`` is set (also while still starting, e.g. waiting for
        the network config). Raises AgentError for fatal start-up problems."""
        watchers: list[SocketWatcher] = []
        waiter = asyncio.create_task(stop.wait())
        try:
            starting = asyncio.create_task(self.start())
            done, _ = await asyncio.wait([starting, waiter], return_when=asyncio.FIRST_COMPLETED)
            if starting not in done:
                starting.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await starting
                return
            starting.result()  # AgentError and the like propagate
            assert self.peers and self.keeper and self.backend
            self._tasks = [asyncio.create_task(c, name=n) for n, c in (
                ("reconcile", self.peers.run()), ("lease watch", self._watch()),
                ("lease renewal", self.keeper.run()),
                ("firewall", self.firewall.run(self.cfg.firewall_interval)),
                ("etcd probe", self.health.probe_loop(self.keeper.manager.ping,
                                                      self.cfg.etcd_probe_interval)))]
            if self.cfg.netlink_events:
                watchers.append(NetlinkWatcher(self.cfg.netns, self.backend.watched,
                                               self.peers.poke))
                if self.firewall.firewall is not None:
                    watchers.append(NftWatcher(self.cfg.netns,
                                               self.firewall.firewall.watched_tables,
                                               self.firewall.poke))
            for watcher in watchers:
                watcher.start()
            await self._start_cni()
            log.info("netweft daemon ready: %d peer lease(s)", len(self.peers.leases) - 1)
            done, _ = await asyncio.wait([waiter, *self._tasks],
                                         return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                if task is waiter:
                    continue
                if not task.cancelled() and task.exception() is not None:
                    raise task.exception()  # type: ignore[misc]
                raise AgentError(f"internal error: the {task.get_name()} loop stopped")
        finally:
            waiter.cancel()
            for watcher in watchers:
                await asyncio.to_thread(watcher.stop)
            await self.shutdown()

    async def _start_cni(self) -> None:
        """Host the CNI request server (its hooks write pod records for the service proxy)."""
        if not self.cfg.cni_socket:
            return
        from netweft.daemon.cnihost import CniHost, host_cni
        from netweft.daemon.podsync import PodSync, PodSyncSettings

        cfg, nl, kernel = self.cfg, self.nl, self.kernel
        assert nl is not None

        async def link_exists(name: str) -> bool:
            return await kernel.call(nl.link_index, name) is not None

        async def links(names: list[str]) -> set[str]:
            def present() -> set[str]:
                return {n for n in names if nl.link_index(n) is not None}
            return await kernel.call(present)

        if cfg.pod_records and self.etcd is not None:
            self.pod_sync = PodSync(self.etcd, PodSyncSettings(
                cfg.node_name, cfg.services_prefix, cfg.cni_data_dir, cfg.cni_network,
                cfg.cni_cache_dir, cfg.pod_sync_interval, cfg.config_retry), links,
                on_etcd_error=lambda _exc: self.health.store_error())
        self.cni_host = CniHost(
            cfg.cni_socket, asyncio.get_running_loop(), self.metrics, etcd=self.etcd,
            services_prefix=cfg.services_prefix, node_name=cfg.node_name,
            pod_records=cfg.pod_records, on_etcd_error=lambda _exc: self.health.store_error(),
            tcp_port=cfg.cni_tcp_port, token_file=cfg.cni_token_file, sync=self.pod_sync)
        try:
            await host_cni(self.cni_host, link_exists)
        except OSError as exc:
            raise AgentError(f"--cni-socket {cfg.cni_socket}: {exc}") from None
        if self.pod_sync is not None:
            self._tasks.append(asyncio.create_task(self.pod_sync.run(), name="pod records"))

    # --- stopping -------------------------------------------------------------------------------

    async def shutdown(self) -> None:
        if self.keeper is not None and self.keeper.lease is not None:
            log.info("stopping; %s", "cleaning up the dataplane" if self.cfg.cleanup_on_exit
                     else "the dataplane stays in place")
        pending = set(self._tasks) | ({self._republish} if self._republish else set())
        for _attempt in range(10):  # a task that swallowed one cancellation gets another
            if not pending:
                break
            for task in pending:
                task.cancel()
            _done, pending = await asyncio.wait(pending, timeout=1.0)
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
