"""Prometheus metrics and the /healthz, /readyz, /metrics HTTP endpoints (asyncio).

Values are kept by name here; ``prometheus_client`` renders them (text format 0.0.4, label values
escaped) from a registry of each :class:`Metrics` of its own, not the process-global one, so
several agents in one process (tests) do not share series. The server is a minimal HTTP/1.0
responder on the daemon's event loop, so answering /healthz proves the loop itself is alive.

``prometheus_client`` is imported at the first render (the first scrape of /metrics), as the
proxy does (``proxy/metrics.py``): with what it pulls in (http.server, email, urllib, wsgiref)
it was 4.4 MiB of the daemon's RSS, measured against flanneld (issue 12). Until then histograms
are plain bucket counts (:class:`netweft.proxy.metrics.Durations`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterator
from typing import Any

from netweft.proxy.metrics import Durations

log = logging.getLogger("netweft.metrics")

Labels = tuple[tuple[str, str], ...]

DEFAULT_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


def _labels(labels: dict[str, str] | None) -> Labels:
    return tuple(sorted((labels or {}).items()))


class Metrics:
    """Counters, gauges, summaries and histograms with labels, by name, rendered in the
    Prometheus text format (``kind`` as in ``# TYPE``: counter names end in ``_total``; a summary
    ``X`` takes its values from ``X_sum`` and ``X_count`` set by a collector). Durations are
    seconds. Raises ValueError for a counter name without ``_total``."""

    def __init__(self) -> None:
        self._help: dict[str, tuple[str, str]] = {}
        self._values: dict[str, dict[Labels, float]] = {}
        self._hists: dict[str, dict[Labels, Durations]] = {}
        self._collectors: list[Callable[[Metrics], None]] = []
        self._registry: Any = None  # prometheus_client's, made at the first render

    def add_collector(self, fn: Callable[[Metrics], None]) -> None:
        """``fn(metrics)`` runs before every render (values owned by someone else)."""
        self._collectors.append(fn)

    def describe(self, name: str, kind: str, help_text: str) -> None:
        if kind == "counter" and not name.endswith("_total"):
            raise ValueError(f"counter {name!r}: a counter's name ends in _total")
        self._help[name] = (kind, help_text)

    def inc(self, name: str, amount: float = 1.0, labels: dict[str, str] | None = None) -> None:
        series = self._values.setdefault(name, {})
        key = _labels(labels)
        series[key] = series.get(key, 0.0) + amount

    def set(self, name: str, value: float, labels: dict[str, str] | None = None) -> None:
        self._values.setdefault(name, {})[_labels(labels)] = value

    def get(self, name: str, labels: dict[str, str] | None = None) -> float:
        return self._values.get(name, {}).get(_labels(labels), 0.0)

    def observe(self, name: str, value: float, labels: dict[str, str] | None = None) -> None:
        """Add ``value`` (seconds) to histogram ``name`` (buckets :data:`DEFAULT_BUCKETS`), in
        the series of ``labels``."""
        series = self._hists.setdefault(name, {})
        key = _labels(labels)
        hist = series.get(key)
        if hist is None:
            hist = series[key] = Durations(name, "", DEFAULT_BUCKETS)
        hist.observe(value)

    def render(self) -> str:
        """The text exposition (imports prometheus_client on the first call)."""
        if self._registry is None:
            from prometheus_client import CollectorRegistry

            self._registry = CollectorRegistry(auto_describe=False)
            self._registry.register(_Families(self))
        from prometheus_client import generate_latest

        return str(generate_latest(self._registry).decode())

    def families(self) -> Iterator[Any]:
        """Every series as prometheus_client metric families, sorted by name; runs the
        collectors first."""
        from prometheus_client.metrics_core import HistogramMetricFamily, Metric

        for fn in self._collectors:
            try:
                fn(self)
            except Exception as exc:  # noqa: BLE001 - a broken collector must not break /metrics
                log.warning("metrics collector failed: %s", exc)
        summaries = {n for n, (kind, _) in self._help.items() if kind == "summary"}
        kinds = {"counter": "counter", "gauge": "gauge", "summary": "summary"}
        for name in sorted(set(self._help) | set(self._values) | set(self._hists)):
            base = name.rsplit("_", 1)[0]
            if base in summaries and name.endswith(("_sum", "_count")):
                continue  # a summary's parts go under its name
            kind, help_text = self._help.get(name, ("untyped", ""))
            if name in self._hists:
                series = sorted(self._hists[name].items())
                hist = HistogramMetricFamily(name, help_text, labels=[k for k, _ in series[0][0]])
                for labels, durations in series:
                    hist.add_metric([v for _, v in labels], durations.cumulative(),
                                    durations.total)
                yield hist
                continue
            if kind == "histogram":
                continue
            family = Metric(name.removesuffix("_total") if kind == "counter" else name,
                            help_text, kinds.get(kind, "unknown"))
            parts = (f"{name}_sum", f"{name}_count") if kind == "summary" else (name,)
            for part in parts:
                for labels, value in sorted(self._values.get(part, {}).items()):
                    family.add_sample(part, dict(labels), value)
            yield family


class _Families:
    """The registry's view of a :class:`Metrics` (a collector: ``collect()``)."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def collect(self) -> Iterator[Any]:
        return self.metrics.families()


def daemon_metrics() -> Metrics:
    m = Metrics()
    m.describe("netweft_leases", "gauge", "Subnet leases currently in etcd (including ours).")
    m.describe("netweft_leases_invalid", "gauge",
               "Leases in etcd this node does not program (invalid or conflicting).")
    m.describe("netweft_peers_programmed", "gauge",
               "Peer leases whose routes/neighbours/FDB entries are in the kernel.")
    m.describe("netweft_reconcile_runs_total", "counter", "Dataplane reconcile passes.")
    m.describe("netweft_reconcile_errors_total", "counter",
               "Entries a reconcile pass could not program (or passes that failed).")
    m.describe("netweft_reconcile_changes_total", "counter",
               "Kernel entries added, replaced or removed by reconcile passes.")
    m.describe("netweft_reconcile_duration_seconds", "histogram",
               "Time a reconcile pass takes (dump, diff, apply).")
    m.describe("netweft_lease_updates_applied_total", "counter",
               "Kernel entries changed directly from lease events (between full passes).")
    m.describe("netweft_last_reconcile_timestamp_seconds", "gauge",
               "Unix time of the last completed reconcile pass.")
    m.describe("netweft_etcd_errors_total", "counter",
               "Failed etcd operations (including the periodic reachability probe).")
    m.describe("netweft_etcd_up", "gauge", "1 when the last etcd probe succeeded.")
    m.describe("netweft_lease_expiration_timestamp_seconds", "gauge",
               "When this node's etcd lease expires unless renewed.")
    m.describe("netweft_lease_acquisitions_total", "counter",
               "Times this node acquired (or re-acquired) its lease.")
    m.describe("netweft_firewall_reloads_total", "counter",
               "Times the masquerade/forward rules were (re)loaded.")
    m.describe("netweft_cni_requests_total", "counter",
               "CNI requests served, by command and result.")
    m.describe("netweft_cni_request_duration_seconds", "summary",
               "CNI request latency in the daemon's CNI server, by command.")
    m.describe("netweft_cni_request_duration_seconds_max", "gauge",
               "Slowest CNI request so far, by command.")
    return m


class HttpEndpoint:
    """Serves /healthz (200 while the loop runs), /readyz (200 once ready) and /metrics."""

    def __init__(self, metrics: Metrics, ready: Callable[[], tuple[bool, str]]) -> None:
        self.metrics = metrics
        self.ready = ready
        self._server: asyncio.base_events.Server | None = None

    async def start(self, addr: str) -> tuple[str, int]:
        host, _, port = addr.rpartition(":")
        self._server = await asyncio.start_server(self._handle, host or "0.0.0.0", int(port))
        sock = self._server.sockets[0].getsockname()
        return str(sock[0]), int(sock[1])

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request = await asyncio.wait_for(reader.readline(), 5)
            while await asyncio.wait_for(reader.readline(), 5) not in (b"\r\n", b"\n", b""):
                pass
            parts = request.decode("latin-1").split()
            path = parts[1].split("?")[0] if len(parts) >= 2 else "/"
            status, ctype, body = self._route(path)
            head = (f"HTTP/1.0 {status}\r\nContent-Type: {ctype}\r\n"
                    f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n")
            writer.write(head.encode() + body)
            await writer.drain()
        except (TimeoutError, ConnectionError):
            pass
        finally:
            writer.close()

    def _route(self, path: str) -> tuple[str, str, bytes]:
        text = "text/plain; charset=utf-8"
        if path == "/healthz":
            return "200 OK", text, b"ok\n"
        if path == "/readyz":
            ok, why = self.ready()
            return ("200 OK" if ok else "503 Service Unavailable"), text, (why + "\n").encode()
        if path == "/metrics":
            return "200 OK", "text/plain; version=0.0.4; charset=utf-8", \
                self.metrics.render().encode()
        return "404 Not Found", text, b"not found\n"
