#!/usr/bin/env python3
"""netweft's own service proxy scale benchmark, in process (root; everything happens in
namespaces this script creates). The comparison with the real kube-proxy, fed by a real
apiserver, is bench/proxy_kube.py; these are netweft's internal figures (no API, no process
start), useful to see where the proxy's own time goes.

1. Full sync, end to end from the model (plans + render + kernel), of N services x 3 endpoints,
   nftables and iptables. Endpoints are spread over 10 nodes, the proxy runs on one of them
   (its hairpin set holds only its own endpoints).
2. One-service change at 10,000 services: event (tracker call) to kernel, median and p90.
3. First-packet latency (TCP connect + first byte) to a service with 10 and with 10,000
   services loaded, from a client namespace through a node namespace to a pod.

    sudo .venv/bin/python bench/proxy_scale.py [--sizes 1000,10000,30000] [--quick] [--json F]
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import dataclasses
import itertools
import json
import os
import resource
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

# test support (tests/support: the proxy testbed) is not shipped; it is imported from tests/
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from netweft.backends.nft.applier import NftApplier  # noqa: E402
from netweft.proxy.dataplane import IptablesDataplane, NftablesDataplane  # noqa: E402
from netweft.proxy.ipt_apply import IptablesApplier  # noqa: E402
from netweft.proxy.model import (  # noqa: E402
    Endpoint,
    EndpointPort,
    Protocol,
    Service,
    ServiceKey,
    ServicePort,
    ServiceType,
)
from netweft.proxy.plan import NodeContext  # noqa: E402
from netweft.proxy.runner import ProxyRunner, RunnerOptions  # noqa: E402
from support.proxy_testbed import build, connect_interleaved  # noqa: E402

PREFIX = f"nwp-bench{os.getpid() % 100000}"
NODE = NodeContext("node-0", ("192.0.2.11",), ("10.128.0.0/9",))
CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL("libc.so.6", use_errno=True)
_made: list[str] = []
_counter = itertools.count()


def make_ns(tag: str) -> str:
    name = f"{PREFIX}-{tag}-{next(_counter)}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True)
    _made.append(name)
    return name


def delete_all() -> None:
    for name in reversed(_made):
        subprocess.run(["ip", "netns", "delete", name], capture_output=True)
    _made.clear()


@contextmanager
def inside(ns: str) -> Iterator[None]:
    """Move this thread (and the libnftables context created within) into ``ns``."""
    home = os.open("/proc/self/ns/net", os.O_RDONLY)
    target = os.open(f"/run/netns/{ns}", os.O_RDONLY)
    try:
        if _libc.setns(target, CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), "setns")
        yield
    finally:
        _libc.setns(home, CLONE_NEWNET)
        os.close(target)
        os.close(home)


def cpu_seconds() -> float:
    """CPU time of this process (libnftables and its netlink work run in it) and of finished
    children (nft, iptables-restore): unlike wall time, barely moved by a busy machine."""
    me = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def ip_of(base: int) -> str:
    return f"{base >> 24 & 255}.{base >> 16 & 255}.{base >> 8 & 255}.{base & 255}"


SVC_BASE = (10 << 24) | (96 << 16)
EP_BASE = (10 << 24) | (128 << 16)


NODES = 10   # endpoints are spread over this many nodes; the proxy runs on "node-0"


def model(n: int, endpoints: int = 3) -> list[tuple[Service, tuple[Endpoint, ...]]]:
    out = []
    for i in range(n):
        svc = Service(ServiceKey("bench", f"svc-{i}"), ServiceType.CLUSTER_IP,
                      (ip_of(SVC_BASE + 1 + i),), (ServicePort("http", Protocol.TCP, 80, 8080),))
        eps = tuple(Endpoint(ip_of(EP_BASE + 1 + i * endpoints + k),
                             (EndpointPort("http", 8080),),
                             node=f"node-{(i * endpoints + k) % NODES}")
                    for k in range(endpoints))
        out.append((svc, eps))
    return out


def runner_for(mode: str, applier_ns: str | None = None) -> ProxyRunner:
    if mode == "nftables":
        dp: NftablesDataplane | IptablesDataplane = NftablesDataplane(
            NODE, NftApplier(netns=applier_ns))
    else:   # "iptables-legacy" or "iptables" (Debian's default, the nf_tables backend)
        dp = IptablesDataplane(NODE, IptablesApplier(netns=applier_ns, binary=mode))
    runner = ProxyRunner(NODE, dp, None, RunnerOptions(status_port=None,
                                                       health_check_ports=False))
    return runner


def feed(runner: ProxyRunner, items: list[tuple[Service, tuple[Endpoint, ...]]]) -> float:
    t0 = time.perf_counter()
    for svc, eps in items:
        runner.tracker.service_updated(svc)
        runner.tracker.endpoints_updated(svc.key, eps)
    runner.tracker.synced()
    return time.perf_counter() - t0


def full_sync(mode: str, n: int, runs: int) -> dict[str, object]:
    items = model(n)
    times, ingest, kernel, cpu = [], [], [], []
    load = os.getloadavg()[0]
    counts: tuple[int, int, int] = (0, 0, 0)
    for _ in range(runs):
        ns = make_ns("full")
        with inside(ns):
            runner = runner_for(mode)
            ingest.append(feed(runner, items))
            c0 = cpu_seconds()
            t0 = time.perf_counter()
            result = runner.sync_once()
            times.append(time.perf_counter() - t0)
            cpu.append(cpu_seconds() - c0)
            kernel.append(runner.dataplane.apply_seconds)  # type: ignore[attr-defined]
            assert result is not None
            counts = (result.chains, result.rules, result.elements)
        subprocess.run(["ip", "netns", "delete", ns], check=True)
        _made.remove(ns)
    return {"mode": mode, "services": n, "runs": runs, "median_s": statistics.median(times),
            "all_s": times, "cpu_s": statistics.median(cpu),
            "kernel_load_s": statistics.median(kernel),
            "ingest_s": statistics.median(ingest), "loadavg_1m": load, "chains": counts[0],
            "rules": counts[1], "elements": counts[2],
            "applier": "libnftables" if mode == "nftables" and NftApplier()._lib else "process"}


def one_change(mode: str, n: int, changes: int, applier_ns: bool = False) -> dict[str, object]:
    items = model(n)
    ns = make_ns("chg")
    lat = []
    try:
        with inside(ns) if not applier_ns else _nullctx():
            runner = runner_for(mode, ns if applier_ns else None)
            feed(runner, items)
            runner.sync_once()
            svc, eps = items[n // 2]
            for j in range(changes):
                new_eps = (eps[0], eps[1], Endpoint(ip_of(EP_BASE + 200000 + j),
                                                    (EndpointPort("http", 8080),), node="node-0"))
                t0 = time.perf_counter()
                runner.tracker.endpoints_updated(svc.key, new_eps)
                result = runner.sync_once()
                lat.append(time.perf_counter() - t0)
                assert result is not None and not result.full
    finally:
        subprocess.run(["ip", "netns", "delete", ns], check=True)
        _made.remove(ns)
    lat.sort()
    return {"mode": mode, "services": n, "changes": changes,
            "applier": ("nft -f - process" if applier_ns else "libnftables")
            if mode == "nftables" else f"{mode}-restore --noflush",
            "median_ms": 1000 * statistics.median(lat),
            "p90_ms": 1000 * lat[int(0.9 * (len(lat) - 1))]}


def one_change_loop(n: int, changes: int, min_interval: float) -> dict[str, object]:
    """The same change through the runner's asyncio loop: tracker call -> rate limiter ->
    sync -> kernel, measured until the runner reports the sync done."""
    items = model(n)
    ns = make_ns("loop")
    lat: list[float] = []
    try:
        with inside(ns):
            runner = runner_for("nftables")
            runner.options.min_sync_interval = min_interval
            feed(runner, items)
            runner.sync_once()
            svc, eps = items[n // 2]

            async def drive() -> None:
                task = asyncio.create_task(runner.loop())
                for j in range(changes):
                    await asyncio.sleep(min_interval * 1.05 + 0.01)   # the limiter is idle
                    runner.synced_event.clear()
                    new_eps = (eps[0], eps[1], Endpoint(ip_of(EP_BASE + 300000 + j),
                                                        (EndpointPort("http", 8080),),
                                                        node="node-0"))
                    t0 = time.perf_counter()
                    runner.tracker.endpoints_updated(svc.key, new_eps)
                    await runner.synced_event.wait()
                    lat.append(time.perf_counter() - t0)
                task.cancel()
            asyncio.run(drive())
    finally:
        subprocess.run(["ip", "netns", "delete", ns], check=True)
        _made.remove(ns)
    lat.sort()
    return {"mode": "nftables via runner loop", "services": n, "changes": changes,
            "min_sync_interval_s": min_interval, "applier": "libnftables",
            "median_ms": 1000 * statistics.median(lat),
            "p90_ms": 1000 * lat[int(0.9 * (len(lat) - 1))]}


@contextmanager
def _nullctx() -> Iterator[None]:
    yield


def first_packet(mode: str, sizes: list[int], connects: int, rounds: int = 6) -> dict[str, object]:
    """Two identical testbeds, one per ruleset size, measured connection by connection in
    alternation (same noise)."""
    items_all = model(max(sizes))
    # the target sorts last: iptables walks NETWEFT-SERVICES in service order (worst case)
    target_svc = dataclasses.replace(items_all[0][0], key=ServiceKey("zzz", "target"))
    pods = ("10.244.1.11", "10.244.1.12", "10.244.1.13")
    target_eps = tuple(Endpoint(ip, (EndpointPort("http", 8080),), node="node-0") for ip in pods)
    beds = []
    out: dict[str, object] = {"mode": mode, "connects_per_round": connects, "rounds": rounds}
    try:
        for n in sizes:
            bed = build(make_ns)
            beds.append(bed)
            for ip in pods:
                bed.add_pod(ip)
            runner = runner_for(mode, bed.node)
            feed(runner, [(target_svc, target_eps), *items_all[1:n]])
            runner.sync_once()
            bed.connect(bed.client, target_svc.cluster_ips[0], 80, count=20)   # warm up
        samples: dict[int, list[float]] = {n: [] for n in sizes}
        ratios = []
        targets = [(bed.client, target_svc.cluster_ips[0], 80) for bed in beds]
        for _ in range(rounds):
            medians = {}
            # one connection through each testbed in turn (random order per turn): both sizes
            # see the same moments of machine load (support.proxy_testbed.connect_interleaved)
            for n, row in zip(sizes, connect_interleaved(targets, connects), strict=True):
                secs = [x for x in row if x is not None]
                if len(secs) < len(row):
                    raise RuntimeError(f"{len(row) - len(secs)} failed connections at {n}")
                samples[n] += secs
                medians[n] = statistics.median(secs)
            ratios.append(medians[sizes[-1]] / medians[sizes[0]])
        for n in sizes:
            out[f"median_us_{n}"] = 1e6 * statistics.median(samples[n])
            out[f"p90_us_{n}"] = 1e6 * sorted(samples[n])[int(0.9 * (len(samples[n]) - 1))]
        out["ratio_median"] = out[f"median_us_{sizes[-1]}"] / out[f"median_us_{sizes[0]}"]  # type: ignore[operator]
        out["ratio_per_round"] = [round(r, 3) for r in ratios]
    finally:
        for bed in beds:
            bed.close()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="1000,10000,30000")
    ap.add_argument("--iptables-sizes", default="1000,10000,30000", help="iptables-legacy")
    ap.add_argument("--iptables-nft-sizes", default="1000",
                    help="iptables with the nf_tables backend (10,000 takes about 90 s)")
    ap.add_argument("--runs", type=int, default=3, help="full-sync repetitions (30k: 1)")
    ap.add_argument("--changes", type=int, default=30)
    ap.add_argument("--connects", type=int, default=100, help="per round (6 rounds)")
    ap.add_argument("--sections", default="all",
                    help="comma list of: nftables, iptables, change, first-packet")
    ap.add_argument("--quick", action="store_true", help="small sizes, for a smoke run")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("proxy_scale.py: run as root (it creates network namespaces)")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))     # clean up namespaces on kill
    sizes = [int(x) for x in args.sizes.split(",")]
    ipt_sizes = [int(x) for x in args.iptables_sizes.split(",") if x]
    iptn_sizes = [int(x) for x in args.iptables_nft_sizes.split(",") if x]
    big = 10000
    if args.quick:
        sizes, ipt_sizes, big = [100, 1000], [100, 1000], 1000
        iptn_sizes = [100]
        args.changes, args.connects, args.runs = 10, 30, 1
    results: dict[str, list[dict[str, object]]] = {"full": [], "change": [], "first_packet": []}

    def show(section: str, row: dict[str, object]) -> None:
        results[section].append(row)
        print(json.dumps(row), flush=True)

    want = set(args.sections.split(","))

    def on(name: str) -> bool:
        return "all" in want or name in want

    try:
        for n in sizes if on("nftables") else []:
            show("full", full_sync("nftables", n, args.runs if n < 30000 else 1))
        for n in ipt_sizes if on("iptables") else []:
            show("full", full_sync("iptables-legacy", n, args.runs if n < 10000 else 1))
        for n in iptn_sizes if on("iptables") else []:
            show("full", full_sync("iptables", n, args.runs if n < 10000 else 1))
        if on("change"):
            show("change", one_change("nftables", big, args.changes))
            show("change", one_change_loop(big, args.changes, 0.1))
            show("change", one_change("nftables", big, args.changes, applier_ns=True))
            show("change", one_change("iptables-legacy", big, max(5, args.changes // 3)))
        if on("first-packet"):
            show("first_packet", first_packet("nftables", [10, big], args.connects))
            show("first_packet", first_packet("iptables-legacy", [10, big], args.connects))
    finally:
        delete_all()
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
