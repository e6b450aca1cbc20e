#!/usr/bin/env python3
"""First-packet latency of nftables rulesets alone, each in turn in the same testbeds (issue 12).

bench/proxy_kube.py measures each proxy in a testbed of its own (client ns -> node ns -> pods),
so a difference between two proxies there is the rulesets *plus* the testbeds (namespaces,
veths, pod servers, where the scheduler puts them) *plus* the proxy processes idling beside
them. This script takes the rulesets alone -- dumps of the real proxies' tables (``nft list
ruleset`` in their node namespace while bench/proxy_kube.py ran: ``--dump-rulesets DIR``), a
table rendered by the current tree, or a minimal DNAT + masquerade table as the floor -- and
moves each through every testbed:

* K rulesets, K identical testbeds (tests/support/proxy_testbed.py, 3 pods); in round r,
  testbed i holds ruleset (i + r) mod K (``nft flush ruleset; nft -f``, then ``conntrack -F``):
  every ruleset visits every testbed equally often, so a slower testbed cannot favour one.
* In each round one client process makes ``--connects`` TCP connects + first byte to the target
  ClusterIP through every testbed, one connection to each in turn (a new random order each
  turn); it enters each client namespace before making that connection's socket
  (support.proxy_testbed ``connect_interleaved``), so every ruleset sees the same moments of
  machine load. The time is connect() + recv() in the client, in us.

Prints one JSON line per round and a summary per ruleset: p50 and p99 of all connections,
the per-round medians (min / median / max), and for each ruleset its per-round ratio of
medians to the reference (the first ruleset given, or ``--reference``): min / median / max,
a 95% confidence interval of that median (order statistics, distribution-free: the rounds
are paired, same load for both) and the pooled ratios of p50 and p99 with 95% intervals (a
bootstrap over whole rounds, ``round_bootstrap_ci``). Per testbed: the pooled p50 (its own
bias, cancelled by the rotation).

    sudo .venv/bin/python bench/proxy_firstpacket.py --target 10.96.12.34 \
        --ruleset kp-nftables=DIR/kp-nftables.nft --ruleset netweft-live=DIR/netweft.nft \
        [--render netweft] [--minimal] [--grow NAME=10000:DIR/kp-nftables.nft] \
        [--pair A/B] [--reference NAME] [--rounds 12] [--connects 100] [--json F]

(``--render``: netweft's table as this tree renders it for the same world; the target's
ClusterIP is the one in ``DIR/target``.) Figures: proxy/README.md, "First packet, netweft vs
kube-proxy nftables, measured properly".

Namespaces: ``nwp-bench<pid>-*`` (created and deleted here, as bench/proxy_scale.py).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from netweft.proxy.model import (  # noqa: E402
    Endpoint,
    EndpointPort,
    Protocol,
    Service,
    ServiceKey,
    ServicePort,
    ServiceType,
)
from netweft.proxy.nftables import NftState  # noqa: E402
from netweft.proxy.plan import NodeContext, plan_service  # noqa: E402
from proxy_scale import delete_all, make_ns  # noqa: E402
from support.proxy_testbed import Testbed, build, connect_interleaved  # noqa: E402

POD_IPS = ("10.244.1.11", "10.244.1.12", "10.244.1.13")     # bench/proxy_kube.py's target pods
CLUSTER_CIDR = "10.128.0.0/9"                                # and its --cluster-cidr
NODE_IP = "192.0.2.11"                                       # the testbed's node address
PORT, TARGET_PORT = 80, 8080


def minimal_ruleset(target: str) -> str:
    """The least a ClusterIP needs here: DNAT to one of the 3 pods, masquerade the outside
    client (its source is not in the pod network). The floor the proxies' rulesets sit on."""
    pods = ", ".join(f"{i} : {ip}" for i, ip in enumerate(POD_IPS))
    return f"""table ip floor {{
	chain pre {{ type nat hook prerouting priority dstnat; policy accept;
		ip daddr {target} tcp dport {PORT} meta mark set 0x4000 \
			dnat ip to numgen random mod 3 map {{ {pods} }}:{TARGET_PORT}
	}}
	chain post {{ type nat hook postrouting priority srcnat; policy accept;
		meta mark 0x4000 masquerade fully-random
	}}
}}
"""


def netweft_ruleset(target: str, fillers: int = 9) -> str:
    """netweft's table as the current tree renders it for bench/proxy_kube.py's world at 10
    services: the target (3 pods) + ``fillers`` services of 3 remote endpoints each."""
    node = NodeContext("bench-netweft", (NODE_IP,), (CLUSTER_CIDR,))
    state = NftState(node)
    plans = {}
    for i in range(fillers + 1):
        key = ServiceKey("bench", "target" if i == 0 else f"svc-{i}")
        ip = target if i == 0 else f"10.96.200.{i}"
        ips = POD_IPS if i == 0 else tuple(f"10.129.0.{3 * i + k}" for k in range(3))
        svc = Service(key, ServiceType.CLUSTER_IP, (ip,),
                      (ServicePort("http", Protocol.TCP, PORT, TARGET_PORT),))
        eps = tuple(Endpoint(a, (EndpointPort("http", TARGET_PORT),), node=f"node-{k}")
                    for k, a in enumerate(ips))
        plans[key] = plan_service(svc, eps, node)
    state.update(plans, delta=False)
    return state.full_text()


Fill = tuple[str, tuple[str, ...]]       # a filler service: ClusterIP, endpoints


def filler(i: int) -> tuple[str, tuple[str, ...]]:
    """Filler service ``i`` (1..): its ClusterIP (10.97.0.0/16 on: none of the API's) and its
    3 remote endpoints (10.130.0.0/16 on, off the testbed)."""
    ip = f"10.{97 + (i >> 16)}.{i >> 8 & 255}.{i & 255}"
    base = 3 * i
    eps = tuple(f"10.{130 + (n >> 16)}.{n >> 8 & 255}.{n & 255}" for n in range(base, base + 3))
    return ip, eps


def extend_dump(text: str, services: int, have: int = 10) -> str:
    """A dumped ruleset grown from ``have`` to ``services`` services the way its own proxy
    lays a ClusterIP service (one TCP port, 3 endpoints) out, as read from the dump:

    * ``ip kube-proxy`` (kube-proxy v1.37 nftables): an element in ``cluster-ips``, an element
      ``<ip> . tcp . 80 : goto service-<h>-<ns>/<name>/tcp/http`` in ``service-ips``, and that
      chain: ``meta l4proto tcp dnat ip to numgen random mod 3 map { 0 : <ep> . 8080, ... }``
    * ``ip netweft-proxy``: ``<ip> . tcp . 80 : goto cluster-tcp-3`` in ``service-ips`` and
      ``<ip> . 80 . 0|1|2 : <ep> . 8080`` in ``backends-tcp``.

    Anything else: ValueError. (The real programs at 10,000 services are bench/proxy_kube.py's
    figures; this is their 10-service layout repeated, for the rulesets-alone comparison.)"""
    extra = [filler(i) for i in range(1, services - have + 1)]
    out = [text]
    if "table ip kube-proxy" in text:
        t = "ip kube-proxy"
        for i, (_, eps) in enumerate(extra, 1):
            chain = f"service-F{i:07d}-bench/fill-{i}/tcp/http"
            picks = ", ".join(f"{k} : {a} . 8080" for k, a in enumerate(eps))
            out.append(f"add chain {t} {chain}\n"
                       f"add rule {t} {chain} meta l4proto tcp dnat ip to numgen random mod 3 "
                       f"map {{ {picks} }}\n")
        for part in _chunks(extra, 1000):
            out.append(f"add element {t} cluster-ips {{ "
                       + ", ".join(ip for ip, _ in part) + " }\n")
        for start, part in _chunks_at(extra, 1000):
            out.append(f"add element {t} service-ips {{ " + ", ".join(
                f"{ip} . tcp . 80 : goto service-F{start + j:07d}-bench/fill-{start + j}/tcp/http"
                for j, (ip, _) in enumerate(part)) + " }\n")
        return "".join(out)
    if "table ip netweft-proxy" in text:
        t = "ip netweft-proxy"
        for part in _chunks(extra, 1000):
            out.append(f"add element {t} service-ips {{ " + ", ".join(
                f"{ip} . tcp . 80 : goto cluster-tcp-3" for ip, _ in part) + " }\n")
            out.append(f"add element {t} backends-tcp {{ " + ", ".join(
                f"{ip} . 80 . {k} : {a} . 8080" for ip, eps in part for k, a in enumerate(eps))
                + " }\n")
        return "".join(out)
    raise ValueError("extend_dump: neither an ip kube-proxy nor an ip netweft-proxy table")


def _chunks(items: list[Fill], n: int) -> list[list[Fill]]:
    return [items[i:i + n] for i in range(0, len(items), n)]


def _chunks_at(items: list[Fill], n: int) -> list[tuple[int, list[Fill]]]:
    """``_chunks`` with each chunk's 1-based index of its first item."""
    return [(i + 1, items[i:i + n]) for i in range(0, len(items), n)]


@dataclass
class Result:
    samples: list[float] = field(default_factory=list)           # seconds, every connection
    rounds: list[list[float]] = field(default_factory=list)      # the same, per round
    round_p50: list[float] = field(default_factory=list)         # seconds, one per round


def median_ci(values: list[float], level: float = 0.95) -> tuple[float, float]:
    """A distribution-free confidence interval of the median (order statistics: the sign
    test's binomial(n, 1/2) bounds); the whole range when there are too few values."""
    s = sorted(values)
    n = len(s)
    cum, k = 0.0, 0
    for j in range(n + 1):
        cum += math.comb(n, j) / 2 ** n
        if cum > (1 - level) / 2:
            k = j
            break
    lo, hi = (k - 1, n - k) if k >= 1 else (0, n - 1)
    return s[max(0, lo)], s[min(n - 1, hi)]


def round_bootstrap_ci(a_rounds: list[list[float]], b_rounds: list[list[float]], q: float,
                       iterations: int = 1000, level: float = 0.95,
                       seed: int = 7) -> tuple[float, float]:
    """Confidence interval of pct(a, q) / pct(b, q) for paired rounds (``a_rounds[r]`` and
    ``b_rounds[r]`` measured at the same time): resample whole rounds with replacement (a block
    bootstrap: the load a round saw stays paired), pool each side, take the ratio; percentile
    interval over ``iterations`` resamples."""
    rng = random.Random(seed)
    n = len(a_rounds)
    ratios = []
    for _ in range(iterations):
        pick = [rng.randrange(n) for _ in range(n)]
        a = [x for i in pick for x in a_rounds[i]]
        b = [x for i in pick for x in b_rounds[i]]
        ratios.append(pct(a, q) / pct(b, q))
    ratios.sort()
    tail = (1 - level) / 2
    return ratios[int(tail * iterations)], ratios[min(iterations - 1, int((1 - tail) * iterations))]


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))]


def load(bed: Testbed, text: str) -> None:
    """Replace the node's whole ruleset with ``text`` and forget every conntrack entry."""
    with tempfile.NamedTemporaryFile("w", suffix=".nft") as f:
        f.write("flush ruleset\n" + text)
        f.flush()
        subprocess.run(["ip", "netns", "exec", bed.node, "nft", "-f", f.name], check=True)
    subprocess.run(["ip", "netns", "exec", bed.node, "conntrack", "-F"], capture_output=True)


def measure(beds: list[Testbed], target: str, connects: int) -> list[list[float]]:
    """``connects`` connections to ``target`` through each bed, interleaved one by one
    (support.proxy_testbed.connect_interleaved); seconds per bed. Raises on a failure."""
    rows = connect_interleaved([(b.client, target, PORT) for b in beds], connects)
    out = []
    for bed, row in zip(beds, rows, strict=True):
        ok = [x for x in row if x is not None]
        if len(ok) < len(row):
            raise RuntimeError(f"{len(row) - len(ok)} of {connects} connections failed "
                               f"through {bed.node}")
        out.append(ok)
    return out


def run(rulesets: dict[str, str], target: str, rounds: int, connects: int,
        reference: str, pairs: tuple[tuple[str, str], ...] = ()) -> dict[str, object]:
    """The rotation of the module docstring; ``pairs``: (a, b) ruleset names whose ratio a / b
    is summarised too, like each one's ratio to ``reference``."""
    names = list(rulesets)
    k = len(names)
    beds = []
    for _ in range(k):
        bed = build(make_ns)
        for ip in POD_IPS:
            bed.add_pod(ip)
        beds.append(bed)
    results = {n: Result() for n in names}
    per_bed: dict[int, list[float]] = {i: [] for i in range(k)}
    rows = []
    try:
        for r in range(rounds):
            held = {i: names[(i + r) % k] for i in range(k)}
            for i, bed in enumerate(beds):
                load(bed, rulesets[held[i]])
            measure(beds, target, 5)                             # warm up, not counted
            row: dict[str, object] = {"round": r, "loadavg_1m": round(os.getloadavg()[0], 2)}
            for i, secs in enumerate(measure(beds, target, connects)):
                res = results[held[i]]
                res.samples += secs
                res.rounds.append(secs)
                res.round_p50.append(statistics.median(secs))
                per_bed[i] += secs
                row[held[i]] = {"bed": i, "p50_us": round(1e6 * statistics.median(secs), 1),
                                "p99_us": round(1e6 * pct(secs, 0.99), 1)}
            rows.append(row)
            print(json.dumps(row), flush=True)
    finally:
        for bed in beds:
            bed.close()
    summary: dict[str, object] = {"rounds": rounds, "connects_per_round": connects,
                                  "reference": reference}
    ref = results[reference]
    for n in names:
        res = results[n]
        ratios = [a / b for a, b in zip(res.round_p50, ref.round_p50, strict=True)]
        rp = sorted(res.round_p50)
        summary[n] = {
            "connections": len(res.samples),
            "p50_us": round(1e6 * statistics.median(res.samples), 1),
            "p99_us": round(1e6 * pct(res.samples, 0.99), 1),
            "round_p50_us_min_med_max": [round(1e6 * x, 1)
                                         for x in (rp[0], statistics.median(rp), rp[-1])],
            "ratio_p50_pooled": round(statistics.median(res.samples)
                                      / statistics.median(ref.samples), 4),
            "ratio_p99_pooled": round(pct(res.samples, 0.99) / pct(ref.samples, 0.99), 4),
            "round_ratio_min_med_max": [round(x, 4) for x in (min(ratios),
                                                               statistics.median(ratios),
                                                               max(ratios))],
            "round_ratio_median_ci95": [round(x, 4) for x in median_ci(ratios)],
            "ratio_p50_pooled_ci95": [round(x, 4) for x in round_bootstrap_ci(
                res.rounds, ref.rounds, 0.5)],
            "ratio_p99_pooled_ci95": [round(x, 4) for x in round_bootstrap_ci(
                res.rounds, ref.rounds, 0.99)],
            "rounds_below_reference": sum(1 for x in ratios if x < 1),
        }
    for a, b in pairs:
        ra, rb = results[a], results[b]
        ratios = [x / y for x, y in zip(ra.round_p50, rb.round_p50, strict=True)]
        summary[f"{a} / {b}"] = {
            "ratio_p50_pooled": round(statistics.median(ra.samples)
                                      / statistics.median(rb.samples), 4),
            "ratio_p50_pooled_ci95": [round(x, 4) for x in round_bootstrap_ci(
                ra.rounds, rb.rounds, 0.5)],
            "ratio_p99_pooled": round(pct(ra.samples, 0.99) / pct(rb.samples, 0.99), 4),
            "ratio_p99_pooled_ci95": [round(x, 4) for x in round_bootstrap_ci(
                ra.rounds, rb.rounds, 0.99)],
            "round_ratio_min_med_max": [round(x, 4) for x in (
                min(ratios), statistics.median(ratios), max(ratios))],
            "round_ratio_median_ci95": [round(x, 4) for x in median_ci(ratios)],
        }
    summary["bed_p50_us"] = {i: round(1e6 * statistics.median(v), 1) for i, v in per_bed.items()}
    return {"rows": rows, "summary": summary}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--target", required=True, help="the target service's ClusterIP")
    ap.add_argument("--ruleset", action="append", default=[], metavar="NAME=FILE",
                    help="a dumped ruleset (nft list ruleset); repeatable")
    ap.add_argument("--grow", action="append", default=[], metavar="NAME=N:FILE",
                    help="a dumped 10-service ruleset grown to N services in its own layout "
                         "(extend_dump); repeatable")
    ap.add_argument("--render", action="append", default=[], metavar="NAME",
                    help="netweft's table as this tree renders it, under NAME; repeatable")
    ap.add_argument("--minimal", action="store_true", help="add the floor (minimal_ruleset)")
    ap.add_argument("--reference", default=None, help="ratios against this one (default: first)")
    ap.add_argument("--pair", action="append", default=[], metavar="A/B",
                    help="also summarise ruleset A against ruleset B; repeatable")
    ap.add_argument("--rounds", type=int, default=12)
    ap.add_argument("--connects", type=int, default=100, help="per ruleset and round")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("proxy_firstpacket.py: run as root (it creates network namespaces)")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    rulesets: dict[str, str] = {}
    for spec in args.ruleset:
        name, _, path = spec.partition("=")
        rulesets[name] = Path(path).read_text()
    for spec in args.grow:
        name, _, rest = spec.partition("=")
        size, _, path = rest.partition(":")
        rulesets[name] = extend_dump(Path(path).read_text(), int(size))
    for name in args.render:
        rulesets[name] = netweft_ruleset(args.target)
    if args.minimal:
        rulesets["minimal"] = minimal_ruleset(args.target)
    if len(rulesets) < 2:
        sys.exit("proxy_firstpacket.py: give at least two rulesets")
    reference = args.reference or next(iter(rulesets))
    pairs = tuple((a, b) for a, _, b in (p.partition("/") for p in args.pair))
    if unknown := {n for pair in pairs for n in pair} - set(rulesets):
        sys.exit(f"proxy_firstpacket.py: --pair: no ruleset {', '.join(sorted(unknown))}")
    try:
        out = run(rulesets, args.target, args.rounds, args.connects, reference, pairs)
    finally:
        delete_all()
    print(json.dumps(out["summary"], indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
