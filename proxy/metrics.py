"""The proxy's metrics, rendered by ``prometheus_client`` in the Prometheus text format 0.0.4
(label values escaped) from a registry of each :class:`ProxyMetrics` of its own, not the
process-global one (several proxies run in one test process)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.metrics_core import Metric

SYNC_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


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
    registry: CollectorRegistry = field(init=False, repr=False, compare=False)
    sync_duration: Histogram = field(init=False, repr=False, compare=False)
    full_sync_duration: Histogram = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.sync_duration = Histogram(
            "netweft_proxy_sync_duration_seconds",
            "Time from taking a batch of changes to the kernel having them.",
            buckets=SYNC_BUCKETS, registry=self.registry)
        self.full_sync_duration = Histogram(
            "netweft_proxy_full_sync_duration_seconds",
            "Duration of full resyncs (start, after a failed transaction).",
            buckets=SYNC_BUCKETS, registry=self.registry)
        self.registry.register(_Values(self))

    def render(self) -> str:
        return generate_latest(self.registry).decode()


class _Values:
    """The registry's view of a :class:`ProxyMetrics`' plain values, labelled with the mode."""

    def __init__(self, m: ProxyMetrics) -> None:
        self.m = m

    def collect(self) -> Iterator[Metric]:
        m = self.m
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
