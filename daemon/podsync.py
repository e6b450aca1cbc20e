"""Pod records that converge to the node's real attachments (issue 9 item 10).

The daemon writes a pod record on every CNI ADD it serves and removes it on DEL
(``daemon/cnihost.py``). That misses pods wired by the in-process fallback (no daemon, or the
socket busy), DELs served while no daemon ran, and writes that failed while etcd was down. So
the records are also *reconciled*: desired = the node's real attachments, actual = the records
under ``<services-prefix>/pods/<node>/``, and the difference is written (``sync_pods``) — at
start, every ``interval`` seconds, and again after a failed write until etcd takes it.

A real attachment is an IPAM allocation (``<dataDir>/<network>/<ip>`` holding the container id
and ifname, host-local's layout) whose host veth link exists. Its pod identity, labels and named
ports come from ``CNI_ARGS`` as the runtime cached them (libcni's ``cniCacheV1`` files
``<cache-dir>/results/<network>-<container id>-<ifname>``, ``cniArgs``: what containerd, CRI-O
and podman write), else from the record already in etcd, else the record has only the IPs (the
container id as name, no labels: no Service selects it until it is known).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from netweft.cni.env import parse_labels, parse_named_ports
from netweft.cni.spec import CniError
from netweft.cni.wiring import host_veth_name
from netweft.common import defaults
from netweft.ipam.allocator import AllocatorError, NodeAllocator
from netweft.kv.etcd import EtcdError
from netweft.proxy.podrecords import sync_pods
from netweft.proxy.records import PodRecord, RecordError, pod_key

log = logging.getLogger("netweft.podsync")

DEFAULT_CACHE_DIR = defaults.CNI_CACHE_DIR  # libcni's CacheDir
CACHE_KIND = "cniCacheV1"


@dataclass(frozen=True)
class Attachment:
    """One pod interface on this node: from IPAM, with the runtime's ``CNI_ARGS`` if cached."""

    container_id: str
    ifname: str
    ips: tuple[str, ...]                 # addresses without prefix length, sorted
    args: Mapping[str, str] | None = None  # None: the runtime's cache has no entry

    @property
    def host_veth(self) -> str:
        return host_veth_name(self.container_id, self.ifname)


def cache_path(cache_dir: str, network: str, container_id: str, ifname: str) -> str:
    """libcni's cache file of one attachment."""
    return os.path.join(cache_dir, "results", f"{network}-{container_id}-{ifname}")


def read_cached_args(path: str) -> dict[str, str] | None:
    """``cniArgs`` of a libcni cache file as a dict; None when absent or not a cniCacheV1."""
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("kind") != CACHE_KIND:
        return None
    pairs = data.get("cniArgs") or []
    if not isinstance(pairs, list):
        return {}
    return {str(p[0]): str(p[1]) for p in pairs if isinstance(p, list | tuple) and len(p) == 2}


def read_attachments(data_dir: str, network: str, cache_dir: str) -> list[Attachment]:
    """The IPAM allocations of ``network`` grouped per (container, ifname), with cached args.
    Raises AllocatorError when the IPAM directory cannot be read."""
    grouped: dict[tuple[str, str], list[str]] = {}
    for a in NodeAllocator(data_dir, network).allocations():
        grouped.setdefault((a.container_id, a.ifname), []).append(str(a.ip))
    return [Attachment(cid, ifname, tuple(sorted(ips)),
                       read_cached_args(cache_path(cache_dir, network, cid, ifname)))
            for (cid, ifname), ips in sorted(grouped.items())]


def desired_records(node: str, attachments: Iterable[Attachment], live_links: set[str],
                    existing: Mapping[str, PodRecord]) -> list[PodRecord]:
    """The records this node should have (pure). ``live_links``: host veth names present;
    ``existing``: records in etcd by container id. One record per container (its first
    interface, by name, when a pod has several)."""
    out: dict[str, PodRecord] = {}
    for att in sorted(attachments, key=lambda a: (a.container_id, a.ifname)):
        if att.container_id in out or att.host_veth not in live_links:
            continue
        known = existing.get(att.container_id)
        if att.args is not None and att.args.get("K8S_POD_NAME"):
            try:
                labels = parse_labels(att.args.get("NETWEFT_POD_LABELS", ""))
                ports = parse_named_ports(att.args.get("NETWEFT_PORTS", ""))
            except CniError:
                labels, ports = {}, {}
            record = PodRecord(att.container_id, att.args.get("K8S_POD_NAMESPACE") or "default",
                               att.args["K8S_POD_NAME"], node, att.ips, labels, ports=ports,
                               host_veth=att.host_veth)
        elif known is not None:
            record = PodRecord(known.container_id, known.namespace, known.name, node, att.ips,
                               dict(known.labels), known.ready, dict(known.ports), att.host_veth)
        else:
            record = PodRecord(att.container_id, "default", att.container_id[:12], node,
                               att.ips, host_veth=att.host_veth)
        out[att.container_id] = record
    return list(out.values())


@dataclass(frozen=True)
class PodSyncSettings:
    node: str
    services_prefix: str
    data_dir: str          # the plugin's dataDir (IPAM)
    network: str           # the conflist's name
    cache_dir: str = DEFAULT_CACHE_DIR
    interval: float = 10.0  # seconds between passes
    retry: float = 2.0      # seconds before retrying after an etcd error


class PodSync:
    """Runs the reconcile passes. The CNI hooks write through :meth:`locked` and call
    :meth:`request` after a failed write; :meth:`run` is the loop (never returns)."""

    def __init__(self, etcd: Any, settings: PodSyncSettings,
                 links: Callable[[list[str]], Awaitable[set[str]]],
                 on_etcd_error: Callable[[Exception], None] | None = None) -> None:
        self.etcd = etcd
        self.settings = settings
        self.links = links  # which of these host veth names exist on the node
        self.on_etcd_error = on_etcd_error
        self.lock = asyncio.Lock()
        self.writes = 0      # hook writes so far (a pass restarts if one landed meanwhile)
        self.passes = 0
        self.changes = 0
        self._wake = asyncio.Event()

    def request(self) -> None:
        """Run a pass soon (a hook's write failed, or something changed)."""
        self._wake.set()

    async def sync_once(self) -> int:
        """One pass; returns how many records were written or removed. Raises EtcdError."""
        s = self.settings
        if not os.path.isdir(os.path.join(s.data_dir, s.network)):
            # No pod was ever wired with this IPAM directory: a wrong --cni-data-dir must not
            # empty this node's records (the start-up prune still drops those whose link is gone).
            if self.passes == 0:
                log.warning("pod records not reconciled: no IPAM directory %s",
                            os.path.join(s.data_dir, s.network))
            self.passes += 1
            return 0
        for _attempt in range(5):
            seen = self.writes
            try:
                atts = await asyncio.to_thread(read_attachments, s.data_dir, s.network,
                                               s.cache_dir)
            except AllocatorError as exc:
                log.warning("pod records not reconciled: %s", exc)
                return 0
            live = await self.links([a.host_veth for a in atts])
            kvs, _ = await self.etcd.get_prefix(pod_key(s.services_prefix, s.node, ""))
            existing: dict[str, PodRecord] = {}
            for kv in kvs:
                try:
                    record = PodRecord.from_json(kv.value)
                except RecordError:
                    continue
                existing[record.container_id] = record
            desired = desired_records(s.node, atts, live, existing)
            async with self.lock:
                if self.writes != seen:
                    continue  # a hook wrote meanwhile: look again
                changed = await sync_pods(self.etcd, s.services_prefix, s.node, desired)
            self.passes += 1
            self.changes += changed
            if changed:
                log.info("pod records reconciled: %d written or removed", changed)
            return changed
        return 0

    async def run(self) -> None:
        """A pass at once, then every ``interval`` seconds or when requested; after an etcd
        error, again every ``retry`` seconds until one succeeds."""
        delay = 0.0
        while True:
            if delay and not self._wake.is_set():
                waiter = asyncio.ensure_future(self._wake.wait())
                try:  # not wait_for: on 3.11 it can swallow a racing cancellation
                    await asyncio.wait([waiter], timeout=delay)
                finally:
                    waiter.cancel()
            self._wake.clear()
            try:
                await self.sync_once()
                delay = self.settings.interval
            except EtcdError as exc:
                if self.on_etcd_error:
                    self.on_etcd_error(exc)
                log.warning("pod records not reconciled (%s); retrying in %.0fs", exc,
                            self.settings.retry)
                delay = self.settings.retry
