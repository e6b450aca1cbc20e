"""The node agent: lease, backend device, subnet.env, firewall, peers, renewal, health.

One asyncio event loop runs everything (etcd watch, timers, reconcile, HTTP). Netlink work runs
in ONE dedicated worker thread: pyroute2 0.9's synchronous IPRoute drives its own private event
loop per call, so it cannot run on ours, and a single thread serialises every kernel change
(reconcile passes, device setup, teardown) without locks. Its async API would need a socket per
namespace per loop and buys nothing here: calls take well under a millisecond each. A second
thread only listens for netlink deletions (device, neighbour, FDB entry, our routes) and pokes
the reconcile loop, which also runs on a timer. firewall commands (nft / iptables) run through
``asyncio.to_thread``.

Desired state is a pure function of (own lease, peer leases, config); reconcile dumps only what
is ours, diffs, applies. A restart with nothing changed applies nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import logging
import os
import select
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from ipaddress import IPv4Interface
from typing import Any, TypeVar

from netweft.backends.base import (
    RTPROT_NETWEFT,
    Backend,
    BackendError,
    DesiredState,
    DeviceInfo,
    lease_change,
    merge,
)
from netweft.backends.hostgw import HostGwBackend
from netweft.backends.netlink import Netlink
from netweft.backends.vxlan import VxlanBackend, VxlanSettings
from netweft.backends.wireguard import WireGuardBackend, settings_from
from netweft.daemon import iface
from netweft.daemon.firewall import Firewall, FirewallError, FirewallSpec, Runner, make_firewall
from netweft.daemon.metrics import HttpEndpoint, Metrics, daemon_metrics
from netweft.ipam import subnetenv
from netweft.ipam.config import ConfigError, NetworkConfig
from netweft.ipam.etcd import EtcdClient, EtcdError, EtcdSettings
from netweft.ipam.lease import Lease
from netweft.ipam.leases import LeaseError, LeaseEvent, LeaseLost, LeaseStore

log = logging.getLogger("netweft.agent")

T = TypeVar("T")

STATUS_FILE = "status.json"


class AgentError(Exception):
    """The agent cannot start (one line for the user)."""


@dataclass(frozen=True)
class AgentConfig:
    etcd: EtcdSettings
    iface: iface.IfaceOptions = field(default_factory=iface.IfaceOptions)
    netns: str | None = None  # run netlink/firewall in this namespace (tests); None: current
    subnet_file: str = subnetenv.DEFAULT_PATH
    state_dir: str = "/var/lib/netweft"
    ip_masq: bool = True
    firewall: str = "nftables"  # "nftables" | "iptables" | "none"
    lease_ttl: int = 24 * 3600
    renew_margin: int = 3600
    reconcile_interval: float = 10.0
    firewall_interval: float = 30.0
    config_retry: float = 2.0
    etcd_probe_interval: float = 5.0
    metrics_addr: str | None = None
    cni_socket: str | None = None
    cni_tcp_port: int = 1019  # the bash launcher's loopback fast path (0: off)
    cni_token_file: str | None = None  # default: next to cni_socket
    cleanup_on_exit: bool = False
    netlink_events: bool = True
    node_name: str = ""
    services_prefix: str = "/netweft"
    pod_records: bool = True


def make_backend(cfg: NetworkConfig, nl: Netlink, side: iface.PublicSide, state_dir: str | None,
                 previous_mac: str | None = None) -> Backend:
    b = cfg.backend
    if b.type == "vxlan":
        settings = VxlanSettings(b.vni, b.port, b.direct_routing, b.mtu)
        return VxlanBackend(nl, side.underlay, settings, state_dir=state_dir,
                            previous_mac=previous_mac)
    if b.type == "host-gw":
        return HostGwBackend(nl, side.underlay, b.mtu)
    if b.type == "wireguard":
        return WireGuardBackend(nl, side.underlay, settings_from(b), state_dir=state_dir)
    raise AgentError(f"Backend.Type: {b.type!r} is not supported (vxlan, host-gw, wireguard)")


def subnet_env_for(cfg: NetworkConfig, lease: Lease, mtu: int, ipmasq: bool) -> subnetenv.SubnetEnv:
    assert lease.subnet is not None
    gw = IPv4Interface(f"{lease.subnet.network_address + 1}/{lease.subnet.prefixlen}")
    return subnetenv.SubnetEnv(network=cfg.network, subnet=gw, mtu=mtu, ipmasq=ipmasq)


async def wait_event(event: asyncio.Event, timeout: float) -> bool:
    """``event.wait()`` with a timeout. Unlike ``asyncio.wait_for`` on Python 3.11, a
    cancellation that races with the event can never be swallowed (which would leave the task
    running after shutdown cancelled it)."""
    if event.is_set():
        return True
    waiter = asyncio.ensure_future(event.wait())
    try:
        done, _ = await asyncio.wait([waiter], timeout=timeout)
    finally:
        waiter.cancel()
    return bool(done)


async def with_timeout(coro: Any, timeout: float) -> Any:
    """Await ``coro`` for at most ``timeout`` seconds (TimeoutError), cancellation-safe."""
    task = asyncio.ensure_future(coro)
    try:
        done, _ = await asyncio.wait([task], timeout=timeout)
    finally:
        if not task.done():
            task.cancel()
    if not done:
        raise TimeoutError
    return task.result()


def write_json_atomic(path: str, data: dict[str, Any]) -> None:
    directory = os.path.dirname(path) or "."
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".status.", dir=directory)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=1, sort_keys=True)
    os.replace(tmp, path)


class NetlinkWatcher:
    """A thread that calls ``poke()`` when something of ours disappears from the kernel."""

    def __init__(self, netns: str | None, device: Callable[[], tuple[str, int | None]],
                 poke: Callable[[], None]) -> None:
        self.netns = netns
        self.device = device
        self.poke = poke
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="netlink-events", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=3)

    def _run(self) -> None:
        from pyroute2 import IPRoute
        from pyroute2.netlink.rtnl import RTMGRP_IPV4_ROUTE, RTMGRP_LINK, RTMGRP_NEIGH

        ipr = IPRoute(netns=self.netns) if self.netns else IPRoute()
        try:
            ipr.bind(groups=RTMGRP_LINK | RTMGRP_NEIGH | RTMGRP_IPV4_ROUTE)
            while not self._stop.is_set():
                ready, _, _ = select.select([ipr], [], [], 0.5)
                if not ready:
                    continue
                relevant = False
                name, index = self.device()
                for msg in ipr.get():
                    event = msg.get("event")
                    if event == "RTM_DELLINK":
                        relevant |= msg.get_attr("IFLA_IFNAME") == name
                    elif event == "RTM_DELNEIGH":
                        relevant |= index is not None and msg.get("ifindex") == index
                    elif event == "RTM_DELROUTE":
                        relevant |= msg.get("proto") == RTPROT_NETWEFT
                if relevant:
                    self.poke()
        except Exception as exc:  # noqa: BLE001 - the periodic pass still covers us
            log.warning("netlink event listener stopped: %s", exc)
        finally:
            ipr.close()


class Agent:
    """One node's daemon. ``await Agent(cfg).run(stop_event)``."""

    def __init__(self, cfg: AgentConfig, metrics: Metrics | None = None) -> None:
        self.cfg = cfg
        self.metrics = metrics or daemon_metrics()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="netlink")
        self.nl: Netlink | None = None
        self.side: iface.PublicSide | None = None
        self.netcfg: NetworkConfig | None = None
        self.backend: Backend | None = None
        self.device: DeviceInfo | None = None
        self.lease: Lease | None = None
        self.leases: dict[str, Lease] = {}
        self.firewall: Firewall | None = None
        self.store: LeaseStore | None = None
        self.ready_reason = "starting"
        self.last_reconcile: float | None = None
        self.last_errors: list[str] = []
        self.reconciles = 0
        self._wake = asyncio.Event()
        self._full = True  # the next pass compares with the kernel (else: lease events only)
        self._pending: dict[str, tuple[Lease | None, Lease | None]] = {}
        self._reacquire = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._tasks: list[asyncio.Task[Any]] = []
        self._http: HttpEndpoint | None = None
        self.metrics_address: tuple[str, int] | None = None
        self.cni_host: Any = None
        self.etcd: EtcdClient | None = None
        self._revision = 0
        self._lock_fd: int | None = None

    # --- helpers ----------------------------------------------------------------------------

    async def _nl(self, fn: Callable[..., T], *args: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, fn, *args)

    def _request_full(self) -> None:
        self._full = True
        self._wake.set()

    def _poke(self) -> None:
        """From the netlink event thread: something of ours vanished from the kernel."""
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._request_full)

    def ready(self) -> tuple[bool, str]:
        return self.ready_reason == "ready", self.ready_reason

    def _peer_leases(self) -> list[Lease]:
        return list(self.leases.values())

    # --- start-up ---------------------------------------------------------------------------

    async def _wait_config(self, store: LeaseStore) -> NetworkConfig:
        announced = ""
        while True:
            try:
                cfg = await store.get_config()
                if cfg is not None:
                    if cfg.network is None:
                        raise ConfigError("Network: netweft needs an IPv4 network")
                    return cfg
                why = f"waiting for the network config at {store.config_key}"
            except ConfigError as exc:
                why = f"network config is invalid ({exc}); waiting for a fix"
            except EtcdError as exc:
                self.metrics.inc("netweft_etcd_errors_total")
                why = f"etcd: {exc}; retrying"
            if why != announced:
                log.warning("%s", why)
                announced = why
            self.ready_reason = why
            await asyncio.sleep(self.cfg.config_retry)

    async def _etcd_retry(self, what: str, fn: Callable[[], Any]) -> Any:
        """Retry an etcd call until it works (the daemon must survive etcd outages)."""
        while True:
            try:
                return await fn()
            except EtcdError as exc:
                self.metrics.inc("netweft_etcd_errors_total")
                log.warning("%s: %s; retrying", what, exc)
                self.ready_reason = f"{what}: {exc}"
                await asyncio.sleep(self.cfg.config_retry)

    async def _acquire(self, previous: Any) -> Lease:
        assert self.store and self.netcfg and self.side and self.backend
        data = await self._nl(self.backend.backend_data)
        store, cfg, side, backend = self.store, self.netcfg, self.side, self.backend
        lease = await self._etcd_retry("acquiring a lease", lambda: store.acquire(
            cfg, side.public_ip, backend.type_name, dict(data), previous=previous))
        self.metrics.inc("netweft_lease_acquisitions_total")
        if lease.expiration:
            self.metrics.set("netweft_lease_expiration_timestamp_seconds", lease.expiration)
        log.info("lease %s (public IP %s, backend %s)", lease.subnet, side.public_ip,
                 backend.type_name)
        return lease

    def _previous_subnet(self) -> Any:
        try:
            env = subnetenv.read(self.cfg.subnet_file)
        except subnetenv.SubnetEnvError:
            return None
        return env.subnet.network if env.subnet is not None else None

    async def _apply_lease(self, lease: Lease) -> None:
        """Set up the device for ``lease``, write subnet.env, install the firewall rules."""
        assert self.backend and self.netcfg
        self.lease = lease
        self.device = await self._nl(self.backend.setup, lease)
        env = subnet_env_for(self.netcfg, lease, self.backend.mtu(), self.cfg.ip_masq)
        if subnetenv.write(env, self.cfg.subnet_file):
            log.info("wrote %s (subnet %s, mtu %d)", self.cfg.subnet_file, env.subnet, env.mtu)
        await self._ensure_firewall()

    def _firewall_spec(self) -> FirewallSpec | None:
        if self.netcfg is None or self.lease is None or self.netcfg.network is None \
                or self.lease.subnet is None:
            return None
        return FirewallSpec(self.netcfg.network, self.lease.subnet, masquerade=self.cfg.ip_masq)

    async def _ensure_firewall(self) -> None:
        spec = self._firewall_spec()
        if self.firewall is None or spec is None:
            return
        try:
            if await asyncio.to_thread(self.firewall.ensure, spec):
                self.metrics.inc("netweft_firewall_reloads_total")
        except FirewallError as exc:
            log.error("firewall: %s", exc)
            self.metrics.inc("netweft_reconcile_errors_total")

    def _lock_state_dir(self) -> None:
        """One daemon per state directory (two would fight over the same device)."""
        if not self.cfg.state_dir:
            return
        os.makedirs(self.cfg.state_dir, exist_ok=True)
        path = os.path.join(self.cfg.state_dir, "daemon.lock")
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise AgentError(f"another netweft daemon (pid {holder}) uses --state-dir "
                             f"{self.cfg.state_dir}") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._lock_fd = fd

    async def start(self) -> None:
        """Everything up to the first reconcile; raises AgentError for fatal problems."""
        self._loop = asyncio.get_running_loop()
        self._lock_state_dir()
        self.nl = Netlink(self.cfg.netns)
        try:
            self.side = await self._nl(iface.select, self.nl, self.cfg.iface)
        except iface.IfaceError as exc:
            raise AgentError(str(exc)) from None
        log.info("public interface %s, address %s, public IP %s, mtu %d",
                 self.side.underlay.iface, self.side.underlay.ip, self.side.public_ip,
                 self.side.underlay.mtu)
        if self.cfg.firewall != "none":
            self.firewall = make_firewall(self.cfg.firewall, Runner(self.cfg.netns))
        if self.cfg.metrics_addr:
            self._http = HttpEndpoint(self.metrics, self.ready)
            try:
                self.metrics_address = await self._http.start(self.cfg.metrics_addr)
            except (OSError, ValueError) as exc:
                self._http = None
                raise AgentError(f"--metrics-addr {self.cfg.metrics_addr}: "
                                 f"{getattr(exc, 'strerror', None) or exc}") from None
        self.etcd = EtcdClient(self.cfg.etcd)
        self.etcd.connect()  # _call() reads the stubs before it connects
        self.store = LeaseStore(self.etcd, self.cfg.etcd.prefix, ttl=self.cfg.lease_ttl)
        self.netcfg = await self._wait_config(self.store)
        self.metrics.set("netweft_etcd_up", 1)
        self.metrics.inc("netweft_etcd_errors_total", 0)  # the series exists from the start
        store = self.store
        leases, _rev = await self._etcd_retry("listing leases", store.list)
        previous_mac = next((le.vtep_mac for le in leases
                             if le.public_ip == self.side.public_ip and le.vtep_mac), None)
        self.backend = make_backend(self.netcfg, self.nl, self.side, self.cfg.state_dir,
                                    previous_mac)
        try:
            lease = await self._acquire(self._previous_subnet())
        except (LeaseError, BackendError) as exc:  # every subnet taken; no usable key file
            raise AgentError(str(exc)) from None
        leases, revision = await self._etcd_retry("listing leases", store.list)
        self.leases = {store.key_for(le): le for le in leases}
        try:
            self.backend.check_peers(lease, leases)
        except BackendError as exc:
            raise AgentError(str(exc)) from None
        try:
            await self._apply_lease(lease)
        except BackendError as exc:
            raise AgentError(str(exc)) from None
        await self._reconcile_once()
        self._revision = revision
        self.ready_reason = "ready"

    # --- steady state -----------------------------------------------------------------------

    async def _reconcile_once(self) -> None:
        assert self.backend and self.lease
        backend, own = self.backend, self.lease
        peers = self._peer_leases()

        def work() -> tuple[int, list[str], bool]:
            recreated = False
            if not backend.device_present():
                log.warning("backend device is missing: setting it up again")
                self.device = backend.setup(own)
                recreated = True
            changes, errors = backend.reconcile(own, peers)
            return changes.count, errors, recreated

        started = time.perf_counter()
        try:
            count, errors, recreated = await self._nl(work)
        except Exception as exc:  # noqa: BLE001 - reported, retried next pass
            log.error("reconcile failed: %s", exc)
            self.metrics.inc("netweft_reconcile_runs_total")
            self.metrics.inc("netweft_reconcile_errors_total")
            self.last_errors = [str(exc)]
            return
        self.reconciles += 1
        self.metrics.inc("netweft_reconcile_runs_total")
        self.metrics.observe("netweft_reconcile_duration_seconds", time.perf_counter() - started)
        if count:
            self.metrics.inc("netweft_reconcile_changes_total", count)
            log.info("reconcile: %d kernel change(s)%s", count,
                     " after recreating the device" if recreated else "")
        if errors:
            self.metrics.inc("netweft_reconcile_errors_total", len(errors))
            if errors != self.last_errors:
                for err in errors[:10]:
                    log.error("%s", err)
        self.last_errors = errors
        desired = backend.last_desired
        programmed = len([p for p in desired.peers if p.error is None])
        self.metrics.set("netweft_peers_programmed", programmed)
        self.metrics.set("netweft_leases", len(self.leases))
        self.last_reconcile = time.time()
        self.metrics.set("netweft_last_reconcile_timestamp_seconds", self.last_reconcile)
        self._write_status(programmed)

    def _write_status(self, peers: int) -> None:
        if not self.cfg.state_dir or self.lease is None or self.side is None:
            return
        data = {
            "pid": os.getpid(), "lease": self.lease.to_dict(),
            "backend": self.backend.type_name if self.backend else None,
            "device": self.device.name if self.device else None,
            "mtu": self.backend.mtu() if self.backend else None,
            "iface": self.side.underlay.iface, "publicIP": str(self.side.public_ip),
            "peers": peers, "leases": len(self.leases), "lastReconcile": self.last_reconcile,
            "reconciles": self.reconciles, "errors": self.last_errors[:20],
            "dataplane": self.backend.status() if self.backend else {},
        }
        try:
            write_json_atomic(os.path.join(self.cfg.state_dir, STATUS_FILE), data)
        except OSError as exc:
            log.warning("cannot write status file: %s", exc)

    async def _reconcile_loop(self) -> None:
        """A full pass (dump, diff, apply) every --reconcile-interval and whenever netlink
        reports a loss; in between, lease events apply just their own entries."""
        last_full = time.monotonic()  # start() ended with one
        interval = self.cfg.reconcile_interval
        while True:
            timeout = max(0.0, interval - (time.monotonic() - last_full))
            await wait_event(self._wake, timeout)
            await asyncio.sleep(0.01)  # let a burst of events land in one pass
            self._wake.clear()
            if self._full or time.monotonic() - last_full >= interval:
                self._full = False
                self._pending.clear()
                await self._reconcile_once()
                last_full = time.monotonic()
            elif self._pending:
                pending, self._pending = self._pending, {}
                await self._apply_lease_events(pending)

    async def _apply_lease_events(self,
                                  pending: dict[str, tuple[Lease | None, Lease | None]]) -> None:
        assert self.backend and self.lease
        backend, own = self.backend, self.lease
        empty = DesiredState()
        changes = merge([
            lease_change(backend.desired(own, [old]) if old else empty,
                         backend.desired(own, [new]) if new else empty)
            for old, new in pending.values()])
        if changes.empty:
            return
        try:
            errors = await self._nl(backend.apply, changes)
        except Exception as exc:  # noqa: BLE001 - the full pass sorts it out
            errors = [str(exc)]
        self.metrics.inc("netweft_lease_updates_applied_total", changes.count)
        if errors:
            self.metrics.inc("netweft_reconcile_errors_total", len(errors))
            log.warning("applying lease changes: %s%s; running a full pass", errors[0],
                        f" (+{len(errors) - 1})" if len(errors) > 1 else "")
            self._request_full()
            return
        log.info("lease changes: %d kernel change(s)", changes.count)
        desired = backend.desired(own, self._peer_leases())
        programmed = len([p for p in desired.peers if p.error is None])
        self.metrics.set("netweft_peers_programmed", programmed)
        self._write_status(programmed)

    async def _etcd_probe_loop(self) -> None:
        """etcd reachability for /metrics (the watch and renewals retry on their own)."""
        assert self.etcd is not None
        up = True
        while True:
            await asyncio.sleep(self.cfg.etcd_probe_interval)
            try:
                await with_timeout(self.etcd.status(), self.cfg.etcd_probe_interval)
                ok = True
            except (EtcdError, TimeoutError):
                ok = False
                self.metrics.inc("netweft_etcd_errors_total")
            self.metrics.set("netweft_etcd_up", 1 if ok else 0)
            if ok != up:
                log.log(logging.INFO if ok else logging.WARNING, "etcd is %s",
                        "reachable again" if ok else "unreachable; the dataplane stays as it is")
                up = ok

    async def _firewall_loop(self) -> None:
        while True:
            await asyncio.sleep(self.cfg.firewall_interval)
            await self._ensure_firewall()

    def _on_events(self, events: list[LeaseEvent]) -> None:
        assert self.store and self.lease
        for ev in events:
            key = self.store.key_for(ev.lease)
            mine = ev.lease.subnet == self.lease.subnet
            old = self.leases.get(key)
            if ev.kind == "removed":
                self.leases.pop(key, None)
                new = None
                if mine:
                    log.warning("our lease %s was removed from etcd: re-acquiring",
                                self.lease.subnet)
                    self._reacquire.set()
            else:
                self.leases[key] = new = ev.lease
                if mine and ev.lease.public_ip != self.lease.public_ip:
                    log.warning("our subnet %s now belongs to %s: re-acquiring",
                                self.lease.subnet, ev.lease.public_ip)
                    self._reacquire.set()
            if not mine:
                first_old = self._pending[key][0] if key in self._pending else old
                self._pending[key] = (first_old, new)
        self.metrics.set("netweft_leases", len(self.leases))
        self._wake.set()

    async def _watch_loop(self) -> None:
        assert self.store
        async for events in self.store.watch(list(self.leases.values()), self._revision,
                                             retry_delay=self.cfg.config_retry):
            self._on_events(events)

    async def _lease_loop(self) -> None:
        """Renew before expiry; re-acquire when the lease is lost (Flannel would exit)."""
        assert self.store
        while True:
            lease = self.lease
            assert lease is not None
            if lease.expiration is None or lease.reserved:
                wait = 60.0
            else:
                wait = max(1.0, lease.expiration - self.cfg.renew_margin - time.time())
            await wait_event(self._reacquire, wait)
            if self._reacquire.is_set():
                self._reacquire.clear()
                await self._reacquire_lease()
                continue
            if lease.reserved:
                continue
            try:
                renewed = await self.store.renew(lease)
            except LeaseLost as exc:
                log.warning("%s: re-acquiring", exc)
                await self._reacquire_lease()
                continue
            except EtcdError as exc:
                self.metrics.inc("netweft_etcd_errors_total")
                log.warning("renewing the lease failed (%s); retrying", exc)
                await asyncio.sleep(self.cfg.config_retry)
                continue
            self.lease = replace(self.lease, expiration=renewed.expiration,
                                 etcd_lease_id=renewed.etcd_lease_id)
            if renewed.expiration:
                self.metrics.set("netweft_lease_expiration_timestamp_seconds", renewed.expiration)
            log.debug("renewed lease %s", lease.subnet)

    async def _reacquire_lease(self) -> None:
        assert self.lease is not None and self.store is not None
        old = self.lease
        try:
            lease = await self._acquire(old.subnet)
        except LeaseError as exc:
            log.error("re-acquiring the lease failed: %s", exc)
            await asyncio.sleep(self.cfg.config_retry)
            self._reacquire.set()
            return
        self.leases[self.store.key_for(lease)] = lease
        if lease.subnet != old.subnet:
            log.warning("re-acquired a different subnet %s (was %s)", lease.subnet, old.subnet)
        await self._apply_lease(lease)
        self._request_full()

    async def run(self, stop: asyncio.Event) -> None:
        """Start, then serve until ``stop`` is set (also while still starting, e.g. waiting for
        the network config). Raises AgentError for fatal start-up problems."""
        watcher: NetlinkWatcher | None = None
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
            self._tasks = [asyncio.create_task(c, name=n) for n, c in (
                ("reconcile", self._reconcile_loop()), ("lease watch", self._watch_loop()),
                ("lease renewal", self._lease_loop()), ("firewall", self._firewall_loop()),
                ("etcd probe", self._etcd_probe_loop()))]
            if self.cfg.netlink_events:
                watcher = NetlinkWatcher(
                    self.cfg.netns,
                    lambda: (self.device.name if self.device else "",
                             getattr(self.backend, "index", None)),
                    self._poke)
                watcher.start()
            await self._start_cni_server()
            log.info("netweft daemon ready: %d peer lease(s)", len(self.leases) - 1)
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
            if watcher is not None:
                await asyncio.to_thread(watcher.stop)
                log.debug("netlink listener stopped")
            await self.shutdown()

    async def _start_cni_server(self) -> None:
        """Host the CNI request server (its hooks write pod records for the service proxy)."""
        if not self.cfg.cni_socket:
            return
        from netweft.daemon.cnihost import CniHost

        assert self._loop is not None
        self.cni_host = CniHost(
            self.cfg.cni_socket, self._loop, self.metrics, etcd=self.etcd,
            services_prefix=self.cfg.services_prefix, node_name=self.cfg.node_name,
            pod_records=self.cfg.pod_records,
            on_etcd_error=lambda _exc: self.metrics.inc("netweft_etcd_errors_total"),
            tcp_port=self.cfg.cni_tcp_port, token_file=self.cfg.cni_token_file)
        try:
            await asyncio.to_thread(self.cni_host.start)
        except OSError as exc:
            raise AgentError(f"--cni-socket {self.cfg.cni_socket}: {exc}") from None
        if self.cni_host is not None:
            await self._prune_pod_records()

    async def _prune_pod_records(self) -> None:
        """Pods deleted while no daemon served the plugin left records behind: drop them."""
        assert self.cni_host is not None and self.nl is not None
        nl = self.nl

        async def link_exists(name: str) -> bool:
            return await self._nl(nl.link_index, name) is not None

        try:
            removed = await self.cni_host.prune_stale(link_exists)
        except EtcdError as exc:
            log.warning("stale pod records not checked: %s", exc)
            return
        if removed:
            log.info("removed %d stale pod record(s)", removed)

    async def shutdown(self) -> None:
        if self.lease is not None:
            log.info("stopping; %s", "cleaning up the dataplane" if self.cfg.cleanup_on_exit
                     else "the dataplane stays in place")
        pending = set(self._tasks)
        for _attempt in range(10):  # a task that swallowed one cancellation gets another
            if not pending:
                break
            for task in pending:
                task.cancel()
            _done, pending = await asyncio.wait(pending, timeout=1.0)
        if pending:
            log.warning("%d task(s) did not stop", len(pending))
        self._tasks = []
        log.debug("tasks stopped")
        if self.cni_host is not None:
            await asyncio.to_thread(self.cni_host.stop)
            self.cni_host = None
        if self.cfg.cleanup_on_exit:
            await self.cleanup()
        elif self.backend is not None:
            with contextlib.suppress(Exception):
                await self._nl(self.backend.close)
        if self._http is not None:
            await self._http.stop()
        if self.etcd is not None:
            with contextlib.suppress(Exception):
                await self.etcd.close()
        if self.nl is not None:
            with contextlib.suppress(Exception):
                await self._nl(self.nl.close)
        self._executor.shutdown(wait=False)
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # releases the lock
            self._lock_fd = None

    async def cleanup(self) -> None:
        """``--cleanup-on-exit``: remove the device, our routes and our firewall rules."""
        log.info("cleaning up the dataplane")
        if self.backend is not None:
            try:
                await self._nl(self.backend.teardown)
            except Exception as exc:  # keep going: the firewall must still be removed
                log.warning("removing the %s dataplane failed: %s", self.backend.type_name, exc)
        if self.firewall is not None:
            try:
                await asyncio.to_thread(self.firewall.teardown)
            except FirewallError as exc:
                log.warning("removing the firewall rules failed: %s", exc)
        # subnet.env stays: it names our subnet, which the next start asks for again.
