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

``--against flanneld`` puts a pair of real flanneld nodes (deploy/flannel.sh; their pods wired by
the reference bridge plugin, as Flannel's CNI plugin delegates) in the reference's place (issue
12): the same figures, netweft's pair vs flanneld's.

``--wireguard`` measures the encrypted overlay instead (issue 13): two netweft labs, wireguard
(userspace wireguard-go where the kernel has no WireGuard) and vxlan, and the raw underlay
(node to node over eth0), each with 1 and 4 parallel streams, rounds alternating the order.
Beside Gbit/s it reports the CPU seconds each side spends: iperf3's own (its JSON report; the
kernel's TCP and VXLAN work runs mostly in its context) plus wireguard-go's (``/proc/<pid>/
stat``), and the whole machine's busy CPU seconds over the run (``/proc/stat``; other load on
the machine counts too). No target: "works and is measured".

    sudo .venv/bin/python bench/dataplane.py [--backend vxlan --backend host-gw]
                                             [--rounds 5] [--seconds 3] [--json out.json]
    sudo .venv/bin/python bench/dataplane.py --against flanneld [--backend vxlan ...]
    sudo .venv/bin/python bench/dataplane.py --wireguard [--rounds 3] [--seconds 3]
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
                with_proxy: bool = False, calibrate: bool = False,
                against: str = "hand") -> dict[str, object]:
    """``against``: "hand" (the hand-programmed lab) or "flanneld" (both nodes run the real
    flanneld, pods wired by the reference bridge plugin from its subnet.env)."""
    reference = (LabSpec(prefix=f"nwlbf{tag}", nodes=2, pods_per_node=1, backend=backend,
                         proxy=False, flannel_nodes=2) if against == "flanneld" else
                 LabSpec(prefix=f"nwlbr{tag}", nodes=2, pods_per_node=1, backend=backend,
                         dataplane="reference"))
    specs = {
        "netweft": LabSpec(prefix=f"nwlbn{tag}", nodes=2, pods_per_node=1, backend=backend,
                           proxy=with_proxy,
                           dataplane="reference" if calibrate else "netweft"),
        "reference": reference,
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
        "reference": against,
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


def proc_cpu_seconds(pid: int | None) -> float:
    """user + system CPU seconds of process ``pid`` so far (0 when it is gone or None)."""
    if not pid:
        return 0.0
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def machine_busy_seconds() -> float:
    """Busy CPU seconds of the whole machine so far (all CPUs, /proc/stat, idle+iowait out)."""
    with open("/proc/stat", encoding="ascii") as f:
        values = [int(v) for v in f.readline().split()[1:]]
    return (sum(values[:8]) - values[3] - values[4]) / os.sysconf("SC_CLK_TCK")


def wireguard_go_pid(lab: Lab, node: str) -> int | None:
    status = lab.daemon_status(lab.topo.node(node)) or {}
    pid = (status.get("dataplane") or {}).get("pid")
    return int(pid) if pid else None


def overlay_run(lab: Lab, path: str, streams: int, seconds: float) -> dict[str, float]:
    """One iperf3 run: ``path`` is "pod" (node1-pod1 -> node2-pod1) or "underlay" (node1 ->
    node2's eth0). Returns Gbit/s and CPU seconds per side."""
    if path == "pod":
        client_ns, server_ns = lab.pod("node1-pod1").netns, lab.pod("node2-pod1").netns
        server_ip = lab.pod_ip("node2-pod1")
    else:
        n1, n2 = lab.topo.node("node1"), lab.topo.node("node2")
        client_ns, server_ns, server_ip = n1.netns, n2.netns, n2.ip
    pids = {side: wireguard_go_pid(lab, node) if path == "pod" else None
            for side, node in (("client", "node1"), ("server", "node2"))}
    before = {side: proc_cpu_seconds(pid) for side, pid in pids.items()}
    busy = machine_busy_seconds()
    data = check.iperf_json(server_ns, server_ip, client_ns, seconds=seconds,
                            extra=["-P", str(streams)])
    busy = machine_busy_seconds() - busy
    wg = {side: proc_cpu_seconds(pid) - before[side] for side, pid in pids.items()}
    end = data["end"]
    cpu = end.get("cpu_utilization_percent", {})
    wall = float(end["sum_received"].get("seconds") or seconds)
    return {
        "gbits": float(end["sum_received"]["bits_per_second"]) / 1e9,
        "client_iperf_cpu_s": float(cpu.get("host_total", 0.0)) * wall / 100,
        "server_iperf_cpu_s": float(cpu.get("remote_total", 0.0)) * wall / 100,
        "client_wireguard_go_cpu_s": wg["client"],
        "server_wireguard_go_cpu_s": wg["server"],
        "machine_busy_cpu_s": busy,
    }


def run_overlays(rounds: int, seconds: float, tag: str) -> dict[str, object]:
    """wireguard vs vxlan vs the raw underlay, 1 and 4 streams, in one run (order alternating
    every round); per case the medians of every figure and the ratios to the underlay."""
    specs = {b: LabSpec(prefix=f"nwlbo{b[0]}{tag}", nodes=2, pods_per_node=1, backend=b,
                        proxy=False) for b in ("wireguard", "vxlan")}
    cases = [(name, streams) for name in ("wireguard", "vxlan", "underlay")
             for streams in (1, 4)]
    runs: dict[str, list[dict[str, float]]] = {f"{n} x{s}": [] for n, s in cases}
    labs: dict[str, Lab] = {}
    try:
        for name, spec in specs.items():
            labs[name] = Lab.up(spec)
        for name in ("wireguard", "vxlan"):
            overlay_run(labs[name], "pod", 1, 1.0)  # warm-up: handshakes, ARP, page faults
        for r in range(rounds):
            order = cases if r % 2 == 0 else list(reversed(cases))
            for name, streams in order:
                lab = labs["vxlan" if name == "underlay" else name]
                res = overlay_run(lab, "underlay" if name == "underlay" else "pod", streams,
                                  seconds)
                runs[f"{name} x{streams}"].append(res)
                print(f"  round {r + 1} {name} x{streams}: {res['gbits']:.2f} Gbit/s, cpu s "
                      f"client {res['client_iperf_cpu_s'] + res['client_wireguard_go_cpu_s']:.2f}"
                      f" server {res['server_iperf_cpu_s'] + res['server_wireguard_go_cpu_s']:.2f}"
                      f" machine {res['machine_busy_cpu_s']:.2f}", flush=True)
    finally:
        for spec in specs.values():
            down(spec.prefix, spec.state_root)
    summary: dict[str, dict[str, float]] = {}
    for case, results in runs.items():
        summary[case] = {key: round(statistics.median(r[key] for r in results), 3)
                         for key in results[0]}
    for name, streams in cases:
        base = summary[f"underlay x{streams}"]["gbits"]
        summary[f"{name} x{streams}"]["ratio_to_underlay"] = round(
            summary[f"{name} x{streams}"]["gbits"] / base, 3) if base else 0.0
    return {"mode": "wireguard", "rounds": rounds, "seconds": seconds, "runs": runs,
            "summary": summary}


def print_overlays(res: dict[str, object]) -> None:
    summary = res["summary"]
    assert isinstance(summary, dict)
    print()
    print(f"{'case':<14} {'Gbit/s':>7} {'x ulay':>7} {'client cpu s':>21} "
          f"{'server cpu s':>21} {'machine':>8}")
    print(f"{'':<14} {'':>7} {'':>7} {'iperf3':>10} {'wg-go':>10} {'iperf3':>10} {'wg-go':>10} "
          f"{'busy s':>8}")
    for case, s in summary.items():
        print(f"{case:<14} {s['gbits']:>7.2f} {s['ratio_to_underlay']:>7.3f} "
              f"{s['client_iperf_cpu_s']:>10.2f} {s['client_wireguard_go_cpu_s']:>10.2f} "
              f"{s['server_iperf_cpu_s']:>10.2f} {s['server_wireguard_go_cpu_s']:>10.2f} "
              f"{s['machine_busy_cpu_s']:>8.2f}")
    print(f"(medians of {res['rounds']} rounds x {res['seconds']:g} s iperf3; pod-to-pod across "
          "nodes; underlay = node to node over eth0)")


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
    parser.add_argument("--wireguard", action="store_true",
                        help="wireguard vs vxlan vs the raw underlay, 1 and 4 streams, with CPU "
                             "seconds per side (issue 13); no target.")
    parser.add_argument("--against", choices=["hand", "flanneld"], default="hand",
                        help="The reference pair: the hand-programmed lab (default) or two "
                             "nodes running the real flanneld (deploy/flannel.sh; issue 12).")
    parser.add_argument("--json", dest="json_path")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        print("dataplane.py: needs root (network namespaces)", file=sys.stderr)
        return 2
    tag = f"{os.getpid() % 10000:04d}"[-2:]
    if args.wireguard:
        res = run_overlays(args.rounds, args.seconds, tag)
        print_overlays(res)
        if args.json_path:
            with open(args.json_path, "w") as f:
                json.dump(res, f, indent=2)
        return 0
    results = []
    for backend in args.backend or ["vxlan", "host-gw"]:
        results.append(run_backend(backend, args.rounds, args.seconds, tag, args.with_proxy,
                                   args.calibrate, args.against))
    print()
    ref = "flanneld" if args.against == "flanneld" else "reference"
    print(f"{'backend':<8} {'netweft':>10} {ref:>10} {'ratio':>7} {'paired':>7} "
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
