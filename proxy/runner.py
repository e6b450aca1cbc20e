"""The proxy main loop: source -> change tracker -> rate-limited sync -> dataplane, conntrack
cleanup, health-check node ports, metrics."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, replace

from netweft.proxy.conntrack import ConntrackCleaner, stale_udp_flows
from netweft.proxy.constants import HEALTHZ_PORT
from netweft.proxy.dataplane import Dataplane, SyncResult
from netweft.proxy.gcpause import gc_paused
from netweft.proxy.healthcheck import HealthCheckPorts, StatusHandler, start_http
from netweft.proxy.metrics import ProxyMetrics
from netweft.proxy.model import ServiceKey
from netweft.proxy.plan import NodeContext, ServicePlan, plan_service
from netweft.proxy.sources.base import Source
from netweft.proxy.tracker import ChangeTracker

log = logging.getLogger(__name__)


@dataclass
class RunnerOptions:
    min_sync_interval: float = 1.0      # seconds between two syncs (bursts coalesce)
    retry_interval: float = 5.0         # after a failed sync
    status_address: str = "0.0.0.0"
    status_port: int | None = HEALTHZ_PORT  # /healthz and /metrics; None: no server
    health_check_ports: bool = True
    # rewrite everything now and then, healing out-of-band edits the dataplane cannot notice
    # (kube-proxy's FullSyncPeriod is 1 h; a full load keeps affinity clients); None: never
    full_resync_interval: float | None = 3600.0
    # restore the rules at once when someone else changes them (nftables: nft monitor)
    watch_rules: bool = True
    # Where the node's addresses come from while running (None: fixed, given by --node-ip); a
    # change is followed at once with a full sync (issue 9 item 5: node state read at start).
    node_ips: Callable[[], tuple[str, ...]] | None = None
    node_ip_interval: float = 2.0  # seconds between two looks at the node's addresses


class ProxyRunner:
    def __init__(self, node: NodeContext, dataplane: Dataplane,
                 conntrack: ConntrackCleaner | None = None,
                 options: RunnerOptions | None = None) -> None:
        self.node = node
        self.dataplane = dataplane
        self.conntrack = conntrack
        self.options = options or RunnerOptions()
        self.wakeup = asyncio.Event()
        self.tracker = ChangeTracker(on_change=self._changed)
        self.plans: dict[ServiceKey, ServicePlan] = {}
        self.health_plans: dict[ServiceKey, ServicePlan] = {}   # those with a health-check port
        self.metrics = ProxyMetrics(mode=dataplane.mode)
        self.status = StatusHandler(self.metrics.render)
        self.health_ports = HealthCheckPorts()
        self.last_sync_start = 0.0
        self.synced_event = asyncio.Event()      # set after each successful sync (for tests)
        self._urgent = False                     # next sync skips the rate limit (a repair)

    def rules_changed_by_others(self) -> None:
        """Someone else changed our rules (the dataplane's watch): a full sync, at once."""
        self.metrics.repairs += 1
        self._urgent = True
        self.tracker.request_full()

    def set_node_ips(self, node_ips: tuple[str, ...]) -> bool:
        """Follow a change of the node's addresses (NodePort addresses): render with the new
        ones and rewrite everything at once. Returns whether anything changed."""
        if not node_ips or node_ips == self.node.node_ips:
            return False
        log.warning("node addresses changed: %s -> %s", ",".join(self.node.node_ips) or "-",
                    ",".join(node_ips))
        self.node = replace(self.node, node_ips=node_ips)
        self.dataplane.set_node(self.node)
        self._urgent = True
        self.tracker.request_full()
        return True

    async def _follow_node_ips(self, look: Callable[[], tuple[str, ...]],
                               interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            try:
                found = await asyncio.to_thread(look)
            except Exception as exc:  # noqa: BLE001 - keep the last known addresses
                log.warning("cannot read the node's addresses: %s", exc)
                continue
            self.set_node_ips(found)

    def _changed(self) -> None:
        if self.status.pending_since is None:
            self.status.pending_since = time.time()
        self.wakeup.set()

    # -- one sync --------------------------------------------------------------------------------
    def compute(self, keys: frozenset[ServiceKey]) -> dict[ServiceKey, ServicePlan | None]:
        out: dict[ServiceKey, ServicePlan | None] = {}
        for key in keys:
            svc = self.tracker.services.get(key)
            out[key] = None if svc is None else plan_service(
                svc, self.tracker.endpoints.get(key, ()), self.node)
        return out

    def sync_once(self) -> SyncResult | None:
        """Take the dirty services and push them; raises on a failed full sync.

        The cyclic garbage collector is paused meanwhile (a full sync allocates hundreds of
        thousands of small objects, none cyclic: collections would make it superlinear), and
        what a full sync leaves behind is frozen out of later collections."""
        with gc_paused():
            result = self._sync_once()
        if result is not None and result.full:
            gc.freeze()
        return result

    def _sync_once(self) -> SyncResult | None:
        batch = self.tracker.take()
        start = time.perf_counter()
        self.last_sync_start = time.monotonic()
        self.status.pending_since = None
        plans = self.compute(batch.keys)
        if batch.full:
            plans.update({k: None for k in self.plans if k not in plans})
        try:
            result = self.dataplane.sync(plans, batch.full)
        except Exception:
            self.metrics.sync_errors += 1
            self.tracker.request_full()
            raise
        old_plans = {k: self.plans.get(k) for k in plans}
        for key, plan in plans.items():
            if plan is None:
                self.plans.pop(key, None)
                self.health_plans.pop(key, None)
            else:
                self.plans[key] = plan
                if plan.health_check_node_port:
                    self.health_plans[key] = plan
                else:
                    self.health_plans.pop(key, None)
        if self.conntrack is not None:
            flows = [f for k, p in plans.items() for f in stale_udp_flows(old_plans[k], p)]
            if flows:
                self.conntrack.delete(flows)
                self.metrics.conntrack_deletes += len(flows)
        elapsed = time.perf_counter() - start
        m = self.metrics
        m.syncs += 1
        m.sync_duration.observe(elapsed)
        if result.full:
            m.full_sync_duration.observe(elapsed)
        m.services, m.chains, m.rules, m.elements = (
            len(self.plans), result.chains, result.rules, result.elements)
        m.last_sync_timestamp = time.time()
        self.status.last_ok = m.last_sync_timestamp
        log.info("synced %d service(s)%s in %.1f ms", len(plans),
                 " (full)" if result.full else "", elapsed * 1000)
        return result

    # -- the loop --------------------------------------------------------------------------------
    async def _periodic_resync(self, interval: float) -> None:
        """Rewrite everything now and then: deltas assume nobody else edits our table."""
        while True:
            await asyncio.sleep(interval)
            if self.tracker.is_synced:
                self.tracker.request_full()

    async def run(self, source: Source) -> None:
        status_server = None
        if self.options.status_port is not None:
            status_server = await start_http(self.options.status_address,
                                             self.options.status_port, self.status)
        source_task = asyncio.create_task(source.run(self.tracker), name="proxy-source")
        source_task.add_done_callback(lambda _t: self.wakeup.set())
        try:
            await self.loop(source_task)
        finally:
            source_task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await source_task
            if status_server is not None:
                status_server.close()
            await self.health_ports.close()

    async def loop(self, source_task: asyncio.Task[None] | None = None) -> None:
        helpers = []
        if self.options.full_resync_interval:
            helpers.append(asyncio.create_task(
                self._periodic_resync(self.options.full_resync_interval), name="proxy-resync"))
        if self.options.node_ips is not None:
            helpers.append(asyncio.create_task(self._follow_node_ips(
                self.options.node_ips, self.options.node_ip_interval), name="proxy-node-ips"))
        if self.options.watch_rules:
            helpers.append(asyncio.create_task(
                self.dataplane.watch(self.rules_changed_by_others), name="proxy-watch"))
        try:
            await self._loop(source_task)
        finally:
            for task in helpers:
                task.cancel()
            for task in helpers:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task

    async def _loop(self, source_task: asyncio.Task[None] | None) -> None:
        while True:
            await self.wakeup.wait()
            self.wakeup.clear()
            if source_task is not None and source_task.done():
                source_task.result()            # a source that stops is an error: raise it
                raise RuntimeError("the service source stopped")
            if not self.tracker.pending:
                continue
            wait = self.last_sync_start + self.options.min_sync_interval - time.monotonic()
            if wait > 0 and not self._urgent:
                await asyncio.sleep(wait)       # changes arriving now join this batch
            self._urgent = False
            try:
                self.sync_once()                # in the loop: the tracker is not shared
            except Exception as exc:            # noqa: BLE001 - keep serving, retry later
                log.error("sync failed: %s", exc)
                asyncio.get_running_loop().call_later(self.options.retry_interval,
                                                      self.wakeup.set)
                continue
            if self.options.health_check_ports:
                await self.health_ports.update(self.health_plans)
            self.synced_event.set()
