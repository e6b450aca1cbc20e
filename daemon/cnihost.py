"""Hosting the CNI request server (``cni/server.py``) inside the node daemon.

The server runs in its own thread (pod wiring must not wait for our event loop); its hooks
fire after each reply and hand the pod to the loop, which writes (ADD) or removes (DEL) the pod
record the service proxy reads (``proxy/podrecords.py``). Request counts and latency come from
the server's own accounting and are exported as metrics at scrape time.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from netweft.backends.netlink import Netlink
from netweft.cni.plugin import PodInfo
from netweft.cni.server import CniHooks, CniServer
from netweft.common import defaults
from netweft.daemon.agentconfig import AgentConfig
from netweft.daemon.errors import AgentError
from netweft.daemon.health import Health
from netweft.daemon.kernel import KernelWorker
from netweft.daemon.metrics import Metrics
from netweft.daemon.podsync import PodSync, PodSyncSettings
from netweft.kv.etcd import EtcdError
from netweft.proxy.podrecords import delete_pod, put_pod
from netweft.proxy.records import PodRecord, RecordError, pod_key

log = logging.getLogger("netweft.cni-host")


class CniHost:
    def __init__(self, socket_path: str, loop: asyncio.AbstractEventLoop, metrics: Metrics,
                 etcd: Any = None, services_prefix: str = defaults.SERVICES_PREFIX,
                 node_name: str = "",
                 pod_records: bool = True,
                 on_etcd_error: Callable[[Exception], None] | None = None,
                 tcp_port: int = defaults.CNI_TCP_PORT, token_file: str | None = None,
                 sync: PodSync | None = None) -> None:
        self.socket_path = socket_path
        self.tcp_port = tcp_port  # the bash launcher's loopback fast path (0: off)
        self.token_file = token_file
        self.loop = loop
        self.metrics = metrics
        self.etcd = etcd
        self.services_prefix = services_prefix
        self.node_name = node_name
        self.pod_records = pod_records and etcd is not None
        self.on_etcd_error = on_etcd_error
        self.sync = sync  # reconciles the records; hook writes go through its lock
        self.server: CniServer | None = None

    def start(self) -> None:
        self.server = CniServer(self.socket_path,
                                hooks=CniHooks(on_add=self._on_add, on_del=self._on_del),
                                tcp_port=self.tcp_port, token_file=self.token_file)
        self.server.start()
        self.metrics.add_collector(self.collect)
        log.info("CNI server listening on %s", self.socket_path)
        if self.server.tcp_error:
            log.warning("CNI server: no TCP fast path (%s); the plugin uses the unix socket",
                        self.server.tcp_error)
        elif self.tcp_port:
            log.info("CNI server listening on 127.0.0.1:%d (token %s)", self.tcp_port,
                     self.server.token_file)

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()
            self.server = None

    # --- hooks (called in the server's worker threads) ----------------------------------------

    def _on_add(self, pod: Any) -> None:
        if self.pod_records:
            asyncio.run_coroutine_threadsafe(self._put(pod), self.loop)

    def _on_del(self, pod: Any) -> None:
        if self.pod_records:
            asyncio.run_coroutine_threadsafe(self._delete(pod.container_id), self.loop)

    def record_for(self, pod: PodInfo) -> PodRecord:
        """The pod record of a wired pod: identity, labels and named ports as the CNI plugin
        parsed them from ``CNI_ARGS`` (``NETWEFT_POD_LABELS``, ``NETWEFT_PORTS``)."""
        return PodRecord(
            container_id=pod.container_id,
            namespace=pod.pod_namespace or "default",
            name=pod.pod_name or pod.container_id[:12],
            node=self.node_name,
            ips=tuple(ip.split("/", 1)[0] for ip in pod.ips),
            labels=dict(pod.labels),
            ports=dict(pod.ports),
            host_veth=pod.host_veth,
        )

    async def _write(self, what: str, container_id: str,
                     write: Callable[[], Awaitable[Any]]) -> None:
        """One hook write, serialised with the reconcile passes; a failure asks for a pass
        (which retries until etcd takes it), so records converge after an outage."""
        try:
            if self.sync is None:
                await write()
                return
            async with self.sync.lock:
                self.sync.writes += 1
                await write()
        except Exception as exc:  # noqa: BLE001 - logged and counted; the pod itself is fine
            log.warning("pod record for %s not %s: %s%s", container_id[:12], what, exc,
                        "; retrying" if self.sync is not None else "")
            if self.on_etcd_error:
                self.on_etcd_error(exc)
            if self.sync is not None:
                self.sync.request()

    async def _put(self, pod: Any) -> None:
        record = self.record_for(pod)
        await self._write("written", pod.container_id,
                          lambda: put_pod(self.etcd, self.services_prefix, record))

    async def _delete(self, container_id: str) -> None:
        await self._write("removed", container_id, lambda: delete_pod(
            self.etcd, self.services_prefix, self.node_name, container_id))

    async def prune_stale(self, link_exists: Callable[[str], Awaitable[bool]]) -> int:
        """Remove this node's pod records whose pod link is gone: pods deleted while no daemon
        served the CNI plugin (it then works in-process and cannot reach etcd). Records without
        a ``hostVeth`` (older ones) are kept. Returns how many were removed."""
        if not self.pod_records:
            return 0
        node_dir = pod_key(self.services_prefix, self.node_name, "")
        kvs, _ = await self.etcd.get_prefix(node_dir)
        removed = 0
        for kv in kvs:
            try:
                record = PodRecord.from_json(kv.value)
            except RecordError:
                continue
            if record.host_veth and not await link_exists(record.host_veth):
                await self.etcd.delete(kv.key)
                log.info("removed the record of pod %s/%s: its link %s is gone",
                         record.namespace, record.name, record.host_veth)
                removed += 1
        return removed

    # --- metrics ------------------------------------------------------------------------------

    def collect(self, metrics: Metrics) -> None:
        if self.server is None:
            return
        for command, s in self.server.stats().items():
            metrics.set("netweft_cni_requests_total", s.count - s.errors,
                        {"command": command, "result": "ok"})
            metrics.set("netweft_cni_requests_total", s.errors,
                        {"command": command, "result": "error"})
            metrics.set("netweft_cni_request_duration_seconds_sum", s.seconds_total,
                        {"command": command})
            metrics.set("netweft_cni_request_duration_seconds_count", s.count,
                        {"command": command})
            metrics.set("netweft_cni_request_duration_seconds_max", s.seconds_max,
                        {"command": command})


async def host_cni(host: CniHost, link_exists: Callable[[str], Awaitable[bool]]) -> None:
    """Start ``host`` (its own thread), then drop the records of pods deleted while no daemon
    served the plugin. Raises OSError when the socket cannot be bound."""
    await asyncio.to_thread(host.start)
    try:
        removed = await host.prune_stale(link_exists)
    except EtcdError as exc:
        log.warning("stale pod records not checked: %s", exc)
        return
    if removed:
        log.info("removed %d stale pod record(s)", removed)


async def start_cni(cfg: AgentConfig, nl: Netlink, kernel: KernelWorker, health: Health,
                    etcd: Any) -> tuple[CniHost, PodSync | None]:
    """The daemon's CNI request server on ``cfg.cni_socket`` (its hooks write pod records for
    the service proxy when ``etcd`` is given), started, with stale records pruned; plus the
    pod-record reconciler to run (None without records). Links are looked up in the kernel
    thread. Raises AgentError naming ``--cni-socket`` when the socket cannot be bound."""

    async def link_exists(name: str) -> bool:
        return await kernel.call(nl.link_index, name) is not None

    async def links(names: list[str]) -> set[str]:
        def present() -> set[str]:
            return {n for n in names if nl.link_index(n) is not None}
        return await kernel.call(present)

    sync = None
    if cfg.pod_records and etcd is not None:
        sync = PodSync(etcd, PodSyncSettings(
            cfg.node_name, cfg.services_prefix, cfg.cni_data_dir, cfg.cni_network,
            cfg.cni_cache_dir, cfg.pod_sync_interval, cfg.config_retry), links,
            on_etcd_error=lambda _exc: health.store_error())
    host = CniHost(
        cfg.cni_socket or "", asyncio.get_running_loop(), health.metrics, etcd=etcd,
        services_prefix=cfg.services_prefix, node_name=cfg.node_name,
        pod_records=cfg.pod_records, on_etcd_error=lambda _exc: health.store_error(),
        tcp_port=cfg.cni_tcp_port, token_file=cfg.cni_token_file, sync=sync)
    try:
        await host_cni(host, link_exists)
    except OSError as exc:
        raise AgentError(f"--cni-socket {cfg.cni_socket}: {exc}") from None
    return host, sync
