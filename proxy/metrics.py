"""The proxy's metrics, rendered by ``prometheus_client`` in the Prometheus text format 0.0.4
(label values escaped) from a registry of each :class:`ProxyMetrics` of its own, not the
process-global one (several proxies run in one test process).

``prometheus_client`` is imported on the first ``render()`` (the first scrape of /metrics), not
at start: it costs ~0.1-0.2 s of CPU and a few MiB the proxy should not pay before its first
sync (issue 12, restart time and RSS). Until then the sync-duration histograms are kept as plain
bucket counts (:class:`Durations`) and handed to the library as histogram families at render."""

from __future__ import annotations

import bisect
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

SYNC_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


@dataclass(slots=True)
class Durations:
    """A histogram of durations in seconds: per-bucket counts (upper bounds ``buckets``, then
    +Inf; a value equal to a bound counts in that bucket, as Prometheus' ``le``) and the sum."""

    name: str
    help: str
    buckets: tuple[float, ...] = SYNC_BUCKETS
    counts: list[int] = field(default_factory=list)
    total: float = 0.0

    def __post_init__(self) -> None:
        self.counts = [0] * (len(self.buckets) + 1)

    def observe(self, seconds: float) -> None:
        self.counts[bisect.bisect_left(self.buckets, seconds)] += 1
        self.total += seconds

    def cumulative(self) -> list[tuple[str, int]]:
        """``[(le, count of values <= le), ..., ("+Inf", all)]``, bounds as prometheus_client
        writes them."""
        cumulative, running = [], 0
        for bound, count in zip((*map(_le, self.buckets), "+Inf"), self.counts, strict=True):
            running += count
            cumulative.append((bound, running))
        return cumulative

    def family(self) -> Any:
        """The prometheus_client HistogramMetricFamily (cumulative bucket counts)."""
        from prometheus_client.core import HistogramMetricFamily
        return HistogramMetricFamily(self.name, self.help, buckets=self.cumulative(),
                                     sum_value=self.total)


def _le(bound: float) -> str:
    """A bucket bound as prometheus_client writes it (``floatToGoString``: 0.005, 1.0)."""
    return repr(float(bound))


@dataclass
class ProxyMetrics:
    """Counts and sizes the runner updates in place (plain attributes), and two histograms of
    sync durations in seconds (``sync_duration.observe(seconds)``)."""

    mode: str = "nftables"
    sync_errors: int = 0
    syncs: int = 0
    services: int = 0
    chains: int = 0
    rules: int = 0
    elements: int = 0
    conntrack_deletes: int = 0
    repairs: int = 0                # full syncs because someone else changed our rules
    last_sync_timestamp: float = 0.0
    sync_duration: Durations = field(default_factory=lambda: Durations(
        "netweft_proxy_sync_duration_seconds",
        "Time from taking a batch of changes to the kernel having them."),
        repr=False, compare=False)
    full_sync_duration: Durations = field(default_factory=lambda: Durations(
        "netweft_proxy_full_sync_duration_seconds",
        "Duration of full resyncs (start, after a failed transaction)."),
        repr=False, compare=False)
    registry: Any = field(default=None, init=False, repr=False, compare=False)

    def render(self) -> str:
        """The text exposition of every metric (imports prometheus_client on first call)."""
        if self.registry is None:
            from prometheus_client import CollectorRegistry
            self.registry = CollectorRegistry(auto_describe=False)
            self.registry.register(_Values(self))
        from prometheus_client import generate_latest
        return generate_latest(self.registry).decode()


class _Values:
    """The registry's view of a :class:`ProxyMetrics`: the two histograms and the plain values,
    labelled with the mode."""

    def __init__(self, m: ProxyMetrics) -> None:
        self.m = m

    def collect(self) -> Iterator[Any]:
        from prometheus_client.metrics_core import Metric
        m = self.m
        yield m.sync_duration.family()
        yield m.full_sync_duration.family()
        for name, value, help_, kind in (
            ("netweft_proxy_syncs_total", m.syncs, "Syncs done.", "counter"),
            ("netweft_proxy_sync_errors_total", m.sync_errors, "Syncs that failed.", "counter"),
            ("netweft_proxy_services", m.services, "Services known to the proxy.", "gauge"),
            ("netweft_proxy_chains", m.chains, "Chains in the proxy's ruleset.", "gauge"),
            ("netweft_proxy_rules", m.rules, "Rules in the proxy's ruleset.", "gauge"),
            ("netweft_proxy_elements", m.elements, "Set and map elements (nftables).", "gauge"),
            ("netweft_proxy_conntrack_deletes_total", m.conntrack_deletes,
             "Stale UDP conntrack filters applied.", "counter"),
            ("netweft_proxy_rule_repairs_total", m.repairs,
             "Full syncs because another process changed the proxy's rules.", "counter"),
            ("netweft_proxy_last_sync_timestamp_seconds", m.last_sync_timestamp,
             "Unix time of the last successful sync.", "gauge"),
        ):
            family = Metric(name.removesuffix("_total") if kind == "counter" else name, help_,
                            kind)
            family.add_sample(name, {"mode": m.mode}, value)
            yield family
