"""The proxy's metrics in the Prometheus text format (no client library needed)."""

from __future__ import annotations

from dataclasses import dataclass, field

SYNC_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


@dataclass
class Histogram:
    buckets: tuple[float, ...] = SYNC_BUCKETS
    counts: list[int] = field(default_factory=lambda: [0] * len(SYNC_BUCKETS))
    total: float = 0.0
    n: int = 0

    def observe(self, value: float) -> None:
        self.n += 1
        self.total += value
        for i, bound in enumerate(self.buckets):
            if value <= bound:
                self.counts[i] += 1


@dataclass
class ProxyMetrics:
    mode: str = "nftables"
    sync_duration: Histogram = field(default_factory=Histogram)
    full_sync_duration: Histogram = field(default_factory=Histogram)
    sync_errors: int = 0
    syncs: int = 0
    services: int = 0
    chains: int = 0
    rules: int = 0
    elements: int = 0
    conntrack_deletes: int = 0
    repairs: int = 0                # full syncs because someone else changed our rules
    last_sync_timestamp: float = 0.0

    def render(self) -> str:
        lines: list[str] = []

        def hist(name: str, h: Histogram, help_: str) -> None:
            lines.append(f"# HELP {name} {help_}")
            lines.append(f"# TYPE {name} histogram")
            for bound, count in zip(h.buckets, h.counts, strict=True):
                lines.append(f'{name}_bucket{{le="{bound}"}} {count}')
            lines.append(f'{name}_bucket{{le="+Inf"}} {h.n}')
            lines.append(f"{name}_sum {h.total:.6f}")
            lines.append(f"{name}_count {h.n}")

        def gauge(name: str, value: float, help_: str, kind: str = "gauge") -> None:
            lines.append(f"# HELP {name} {help_}")
            lines.append(f"# TYPE {name} {kind}")
            lines.append(f'{name}{{mode="{self.mode}"}} {value}')

        hist("netweft_proxy_sync_duration_seconds", self.sync_duration,
             "Time from taking a batch of changes to the kernel having them.")
        hist("netweft_proxy_full_sync_duration_seconds", self.full_sync_duration,
             "Duration of full resyncs (start, after a failed transaction).")
        gauge("netweft_proxy_syncs_total", self.syncs, "Syncs done.", "counter")
        gauge("netweft_proxy_sync_errors_total", self.sync_errors, "Syncs that failed.", "counter")
        gauge("netweft_proxy_services", self.services, "Services known to the proxy.")
        gauge("netweft_proxy_chains", self.chains, "Chains in the proxy's ruleset.")
        gauge("netweft_proxy_rules", self.rules, "Rules in the proxy's ruleset.")
        gauge("netweft_proxy_elements", self.elements, "Set and map elements (nftables).")
        gauge("netweft_proxy_conntrack_deletes_total", self.conntrack_deletes,
              "Stale UDP conntrack filters applied.", "counter")
        gauge("netweft_proxy_rule_repairs_total", self.repairs,
              "Full syncs because another process changed the proxy's rules.", "counter")
        gauge("netweft_proxy_last_sync_timestamp_seconds", self.last_sync_timestamp,
              "Unix time of the last successful sync.")
        return "\n".join(lines) + "\n"
