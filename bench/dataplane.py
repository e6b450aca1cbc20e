"""Dataplane benchmark: iperf3 pod-to-pod across two nodes, netweft's dataplane beside a
hand-programmed reference of the same topology, in the same run.

For each backend it builds two 2-node labs (one pod per node): one run by netweft (daemon + CNI
plugin), one wired by hand with ``ip`` (daemon/lab/reference.py, the kernel's own limit). Runs
alternate netweft/reference (order flipped every round) so machine noise hits both alike; the
figure is the ratio of the medians (the median of the per-round ratios is printed beside it).
Each round also runs both flows at the same time ("at once"): sharing the CPUs at the same
moment, the split between them is the least noise-sensitive comparison of the two dataplanes'
cost per byte on a busy machine. Target: >= 0.95. By default the netweft lab runs without
`netweft proxy` (the reference has no service proxy either); ``--with-proxy`` adds it.

    sudo .venv/bin/python bench/dataplane.py [--backend vxlan --backend host-gw]
                                             [--rounds 5] [--seconds 3] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from netweft.daemon.lab import check  # noqa: E402
from netweft.daemon.lab.lab import Lab, down  # noqa: E402
from netweft.daemon.lab.topology import LabSpec  # noqa: E402

TARGET = 0.95


@dataclass
class Series:
    name: str
    gbits: list[float]

    @property
    def median(self) -> float:
        return statistics.median(self.gbits)


def measure(lab: Lab, seconds: float) -> float:
    client, server = "node1-pod1", "node2-pod1"
    bps = check.iperf(lab.pod(server).netns, lab.pod_ip(server), lab.pod(client).netns,
                      seconds=seconds)
    return bps / 1e9


def measure_together(labs: dict[str, Lab], seconds: float) -> dict[str, float]:
    """Both flows at once: they share the CPUs at the same moment, so the machine's noise hits
    both alike and the split tells which dataplane costs more CPU per byte."""
    with ThreadPoolExecutor(max_workers=len(labs)) as pool:
        futures = {name: pool.submit(measure, lab, seconds) for name, lab in labs.items()}
        return {name: f.result() for name, f in futures.items()}


def run_backend(backend: str, rounds: int, seconds: float, tag: str,
                with_proxy: bool = False, calibrate: bool = False) -> dict[str, object]:
    specs = {
        "netweft": LabSpec(prefix=f"nwlbn{tag}", nodes=2, pods_per_node=1, backend=backend,
                           proxy=with_proxy,
                           dataplane="reference" if calibrate else "netweft"),
        "reference": LabSpec(prefix=f"nwlbr{tag}", nodes=2, pods_per_node=1, backend=backend,
                             dataplane="reference"),
    }
    labs: dict[str, Lab] = {}
    try:
        for name, spec in specs.items():
            labs[name] = Lab.up(spec)
        series = {name: Series(name, []) for name in labs}
        together = {name: Series(name, []) for name in labs}
        measure(labs["reference"], 1.0)  # warm-up (first run pays for page faults, ARP, ...)
        measure(labs["netweft"], 1.0)
        for r in range(rounds):
            order = ["netweft", "reference"] if r % 2 == 0 else ["reference", "netweft"]
            for name in order:
                series[name].gbits.append(measure(labs[name], seconds))
            both = measure_together(labs, seconds)
            for name, gbits in both.items():
                together[name].gbits.append(gbits)
            print(f"  {backend} round {r + 1}: netweft {series['netweft'].gbits[-1]:.2f}, "
                  f"reference {series['reference'].gbits[-1]:.2f} Gbit/s; at once: "
                  f"{both['netweft']:.2f} / {both['reference']:.2f}", flush=True)
    finally:
        for spec in specs.values():
            down(spec.prefix, spec.state_root)
    ratio = series["netweft"].median / series["reference"].median
    paired = [n / r for n, r in zip(series["netweft"].gbits, series["reference"].gbits,
                                    strict=True)]
    at_once = [n / r for n, r in zip(together["netweft"].gbits, together["reference"].gbits,
                                     strict=True)]
    return {
        "backend": backend,
        "with_proxy": with_proxy,
        "calibration": calibrate,
        "netweft_gbits": series["netweft"].gbits,
        "reference_gbits": series["reference"].gbits,
        "netweft_median": round(series["netweft"].median, 2),
        "reference_median": round(series["reference"].median, 2),
        "ratio": round(ratio, 3),
        "paired_ratio_median": round(statistics.median(paired), 3),
        "concurrent_netweft_gbits": together["netweft"].gbits,
        "concurrent_reference_gbits": together["reference"].gbits,
        "concurrent_ratio_median": round(statistics.median(at_once), 3),
        "target": TARGET,
        "meets_target": ratio >= TARGET,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", action="append", choices=["vxlan", "host-gw"])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--with-proxy", action="store_true",
                        help="Also run `netweft proxy` (its nftables hooks) on the netweft nodes; "
                             "by default the overlay alone is compared with the reference.")
    parser.add_argument("--calibrate", action="store_true",
                        help="A/A run: a second reference lab in netweft's place, to see the "
                             "machine's noise floor for these ratios.")
    parser.add_argument("--json", dest="json_path")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        print("dataplane.py: needs root (network namespaces)", file=sys.stderr)
        return 2
    tag = f"{os.getpid() % 10000:04d}"[-2:]
    results = []
    for backend in args.backend or ["vxlan", "host-gw"]:
        results.append(run_backend(backend, args.rounds, args.seconds, tag, args.with_proxy,
                                   args.calibrate))
    print()
    print(f"{'backend':<8} {'netweft':>10} {'reference':>10} {'ratio':>7} {'paired':>7} "
          f"{'at once':>7}  (median Gbit/s, {args.rounds} x {args.seconds:g} s iperf3 pod-to-pod "
          "across nodes)")
    for res in results:
        print(f"{res['backend']:<8} {res['netweft_median']:>10.2f} "
              f"{res['reference_median']:>10.2f} {res['ratio']:>7.3f} "
              f"{res['paired_ratio_median']:>7.3f} {res['concurrent_ratio_median']:>7.3f}  "
              f"{'ok' if res['meets_target'] else 'BELOW 0.95'}")
    if args.json_path:
        with open(args.json_path, "w") as f:
            json.dump(results, f, indent=2)
    return 0 if all(r["meets_target"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
