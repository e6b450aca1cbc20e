#!/usr/bin/env python3
"""One `netweft daemon` (vxlan) with N remote leases in etcd: time to program them all, RSS,
latency of one added lease, and a restart with nothing changed.

Reference in the same run: the same N neighbour + FDB + route entries programmed by hand with
`ip -batch` / `bridge -batch` in a fresh namespace (what a hand-built dataplane costs), and
(``--flanneld``, on by default) the real flanneld (deploy/flannel.sh) in the same setting: start
-> all N routes in the kernel, CPU seconds and RSS of the process (1 s after programming, and
``--rss-later`` seconds after that: the daemon's periodic full passes have run by then).
Everything runs in namespaces named nwd-bench-<pid>-*, removed at the end.

    sudo .venv/bin/python bench/daemon_scale.py --leases 1000 --runs 3 [--no-flanneld]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from ipaddress import IPv4Address, IPv4Network

# test support (tests/support: NodeLab, polling) is not shipped; it is imported from tests/
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                "tests"))

from netweft.daemon import netns  # noqa: E402
from netweft.daemon.lab import flannel  # noqa: E402
from support.nodelab import NodeLab  # noqa: E402
from support.polling import wait_for  # noqa: E402

PUT_SCRIPT = r"""
import asyncio, json, sys
from netweft.kv.etcd import EtcdClient, EtcdSettings
async def main(endpoint, prefix, n):
    async with EtcdClient(EtcdSettings((endpoint,), prefix)) as etcd:
        etcd.connect()
        sem = asyncio.Semaphore(64)
        async def put(i):
            subnet = f"10.{100 + i // 256}.{i % 256}.0"
            value = {"PublicIP": f"198.18.{i // 250}.{i % 250 + 1}",
                     "BackendType": "vxlan",
                     "BackendData": {"VNI": 1,
                                     "VtepMAC": f"0e:{i // 256:02x}:{i % 256:02x}:00:00:01"}}
            async with sem:
                await etcd.put(f"{prefix}/subnets/{subnet}-24", json.dumps(value))
        await asyncio.gather(*(put(i) for i in range(n)))
asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3])))
"""


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def reference(n: int, name: str) -> float:
    """Hand-programmed: one vxlan device, N neigh + N fdb + N routes via iproute2 batches."""
    netns.add(name)
    try:
        run = lambda *a: subprocess.run(["ip", "-n", name, *a], check=True)  # noqa: E731
        run("link", "add", "eth0", "type", "veth", "peer", "name", "eth0p")
        run("addr", "add", "192.0.2.10/24", "dev", "eth0")
        run("link", "set", "eth0", "up")
        run("link", "add", "flannel.1", "type", "vxlan", "id", "1", "local", "192.0.2.10",
            "dstport", "8472", "nolearning", "dev", "eth0")
        run("link", "set", "flannel.1", "up")
        neigh, fdb, routes = [], [], []
        for i in range(n):
            gw = f"10.{100 + i // 256}.{i % 256}.0"
            mac = f"0e:{i // 256:02x}:{i % 256:02x}:00:00:01"
            neigh.append(f"neigh replace {gw} lladdr {mac} dev flannel.1 nud permanent")
            fdb.append(f"fdb replace {mac} dev flannel.1 dst 198.18.{i // 250}.{i % 250 + 1} "
                       "self permanent")
            routes.append(f"route replace {gw}/24 via {gw} dev flannel.1 onlink proto 78")
        t0 = time.perf_counter()
        subprocess.run(["ip", "-n", name, "-batch", "-"], input="\n".join(neigh) + "\n",
                       text=True, check=True)
        subprocess.run(["bridge", "-n", name, "-batch", "-"], input="\n".join(fdb) + "\n",
                       text=True, check=True)
        subprocess.run(["ip", "-n", name, "-batch", "-"], input="\n".join(routes) + "\n",
                       text=True, check=True)
        return time.perf_counter() - t0
    finally:
        netns.delete(name)


def cpu_seconds(pid: int) -> float:
    """utime + stime of ``pid`` (fields 14 and 15 of /proc/<pid>/stat), in seconds."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def flannel_routes(ns: str) -> int:
    return subprocess.run(["ip", "-n", ns, "route", "show", "dev", "flannel.1"],
                          capture_output=True, text=True).stdout.count(" via ")


def bench_lab(tag: str) -> tuple[list[str], str, NodeLab]:
    """Fresh namespaces nwd-bench-<pid>-<tag>-{ul,n1,out} and a work dir: (names, dir, lab)."""
    names = [f"nwd-bench-{os.getpid()}-{tag}-{x}" for x in ("ul", "n1", "out")]
    for name in names:
        netns.delete(name)
        netns.add(name)
    work = tempfile.mkdtemp(prefix="nwd-bench-")
    return names, work, NodeLab(names[0], [names[1]], names[2], work, prefix="/nwd-bench/network")


def fill(lab: NodeLab, underlay_ns: str, n: int) -> None:
    """Build the lab, write the vxlan config and ``n`` remote leases."""
    lab.build()
    lab.set_config({"Network": "10.0.0.0/8", "SubnetLen": 24, "Backend": {"Type": "vxlan"}})
    netns.run(underlay_ns, [sys.executable, "-c", PUT_SCRIPT, lab.endpoint, lab.prefix, str(n)],
              timeout=300)


def close(lab: NodeLab, names: list[str], work: str) -> None:
    lab.close()
    for name in names:
        netns.delete(name)
    subprocess.run(["rm", "-rf", work])


def flanneld_run(n: int, tag: str, flanneld: str, later: float) -> dict[str, float]:
    """The real flanneld in the same setting: start -> all ``n`` routes, CPU s, RSS (1 s
    after, and ``later`` seconds after that)."""
    names, work, lab = bench_lab(tag)
    proc = None
    try:
        fill(lab, names[0], n)
        ns = names[1]
        with open(os.path.join(work, "flanneld.log"), "wb") as log:
            t0 = time.perf_counter()
            proc = subprocess.Popen(
                ["ip", "netns", "exec", ns, flanneld, f"--etcd-endpoints={lab.endpoint}",
                 f"--etcd-prefix={lab.prefix}", f"--subnet-file={work}/subnet.env",
                 "--ip-masq"], stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        wait_for(lambda: flannel_routes(ns) >= n, timeout=300, interval=0.02,
                 what=f"flanneld: {n} routes")
        t_program = time.perf_counter() - t0
        cpu = cpu_seconds(proc.pid)
        time.sleep(1.0)
        rss = rss_kib(proc.pid) / 1024
        time.sleep(later)
        return {"program_s": t_program, "cpu_s": cpu, "rss_mib": rss,
                "rss_later_mib": rss_kib(proc.pid) / 1024}
    finally:
        if proc is not None:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        close(lab, names, work)


def pass_seconds(lab: NodeLab, ns: str) -> tuple[float, float]:
    """(sum, count) of the daemon's reconcile pass durations."""
    total = count = 0.0
    for line in lab.http(ns, "/metrics")[1].splitlines():
        if line.startswith("netweft_reconcile_duration_seconds_sum"):
            total = float(line.split()[1])
        if line.startswith("netweft_reconcile_duration_seconds_count"):
            count = float(line.split()[1])
    return total, count


def one_run(n: int, tag: str, later: float) -> dict[str, float]:
    names, work, lab = bench_lab(tag)
    try:
        fill(lab, names[0], n)
        ns = names[1]
        t0 = time.perf_counter()
        proc = lab.start_daemon(ns, "--reconcile-interval", "10", "--log-level", "warning")
        wait_for(lambda: (lab.status(ns) or {}).get("peers") == n, timeout=300, interval=0.02,
                 what=f"{n} peers programmed")
        t_program = time.perf_counter() - t0
        cpu = cpu_seconds(proc.pid)
        routes = subprocess.run(["ip", "-n", ns, "route", "show", "proto", "78"],
                                capture_output=True, text=True).stdout.count("\n")
        assert routes == n, f"{routes} routes in the kernel, expected {n}"
        first_pass, passes = pass_seconds(lab, ns)
        assert passes == 1, passes  # the first full pass programmed everything
        time.sleep(1.0)
        rss = rss_kib(proc.pid)
        # Steady state: after full passes (every 10 s: kernel dump, diff), not just the first.
        time.sleep(later)
        rss_later = rss_kib(proc.pid)
        # One more lease at a time: time until its route is in the kernel (median of 5).
        adds = []
        for k in range(5):
            lab.put_lease(f"10.250.{k}.0/24", {
                "PublicIP": f"198.19.0.{k + 1}", "BackendType": "vxlan",
                "BackendData": {"VNI": 1, "VtepMAC": f"0e:ff:00:00:00:{k + 1:02x}"}})
            t1 = time.perf_counter()  # after etcdctl returned (its own start-up is not ours)
            wait_for(lambda k=k: f"10.250.{k}.0/24" in subprocess.run(
                ["ip", "-n", ns, "route", "show", f"10.250.{k}.0/24"], capture_output=True,
                text=True).stdout, timeout=60, interval=0.002)
            adds.append(time.perf_counter() - t1)
        t_add = statistics.median(adds)
        # Restart with nothing changed: ready again, and no kernel change.
        lab.stop_daemon(ns)
        os.unlink(os.path.join(lab.paths(ns)["state_dir"], "status.json"))
        t2 = time.perf_counter()
        lab.start_daemon(ns, "--reconcile-interval", "10", "--log-level", "info")
        wait_for(lambda: (lab.status(ns) or {}).get("peers") == n + 5, timeout=300,
                 interval=0.02)
        t_restart = time.perf_counter() - t2
        changes = lab.log(ns).split("public interface")[-1].count("kernel change")
        noop_pass, _ = pass_seconds(lab, ns)
        return {"program_s": t_program, "cpu_s": cpu, "program_pass_s": first_pass,
                "rss_mib": rss / 1024, "rss_later_mib": rss_later / 1024,
                "add_one_s": t_add, "restart_s": t_restart, "restart_kernel_changes": changes,
                "noop_pass_s": noop_pass}
    finally:
        close(lab, names, work)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--leases", type=int, default=1000)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--rss-later", type=float, default=21.0,
                    help="also read each side's RSS this many seconds after the first reading "
                         "(default 21: two of the daemon's 10 s full passes)")
    ap.add_argument("--flanneld", action=argparse.BooleanOptionalAction, default=True,
                    help="also measure the real flanneld (deploy/flannel.sh)")
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("daemon_scale.py: needs root (network namespaces)")
    assert IPv4Network("10.0.0.0/8") and IPv4Address("198.18.0.1")
    flanneld = flannel.load_build().flanneld if args.flanneld else None
    results, refs, fl = [], [], []
    for r in range(args.runs):
        results.append(one_run(args.leases, f"r{r}", args.rss_later))
        refs.append(reference(args.leases, f"nwd-bench-{os.getpid()}-ref{r}"))
        if flanneld:
            fl.append(flanneld_run(args.leases, f"f{r}", flanneld, args.rss_later))
        print(json.dumps({**results[-1], "reference_ip_batch_s": refs[-1],
                          "flanneld": fl[-1] if fl else None}), flush=True)
    med = {k: statistics.median(r[k] for r in results) for k in results[0]}
    ref = statistics.median(refs)
    print(f"\n{args.leases} remote leases ({3 * args.leases} kernel entries), {args.runs} runs, "
          "medians:")
    print(f"  daemon start -> all peers programmed : {med['program_s']:.2f} s "
          "(interpreter start, etcd, lease, device, firewall, first pass)")
    print(f"  first reconcile pass (programs all)  : {med['program_pass_s']:.3f} s")
    print(f"  hand-programmed (ip/bridge -batch)   : {ref:.3f} s   "
          f"(first pass / reference = {med['program_pass_s'] / ref:.2f}x)")
    print(f"  reconcile pass, nothing to change    : {med['noop_pass_s'] * 1000:.0f} ms")
    print(f"  RSS after programming                : {med['rss_mib']:.1f} MiB")
    later = f"RSS {args.rss_later:.0f} s later"
    print(f"  {later:37}: {med['rss_later_mib']:.1f} MiB")
    print(f"  lease put returned -> route in kernel: {med['add_one_s'] * 1000:.0f} ms")
    print(f"  restart -> reconciled                : {med['restart_s']:.2f} s, "
          f"kernel changes {med['restart_kernel_changes']:.0f}")
    print(f"  CPU seconds, start -> all programmed : {med['cpu_s']:.2f} s")
    if fl:
        fmed = {k: statistics.median(r[k] for r in fl) for k in fl[0]}
        print(f"flanneld {flannel.load_build().version}, same setting, medians:")
        print(f"  flanneld start -> all routes         : {fmed['program_s']:.2f} s   "
              f"(netweft/flanneld = {med['program_s'] / fmed['program_s']:.2f}x)")
        print(f"  CPU seconds, start -> all routes     : {fmed['cpu_s']:.2f} s   "
              f"(netweft/flanneld = {med['cpu_s'] / fmed['cpu_s']:.2f}x)")
        print(f"  RSS after programming                : {fmed['rss_mib']:.1f} MiB   "
              f"(netweft/flanneld = {med['rss_mib'] / fmed['rss_mib']:.2f}x)")
        print(f"  {later:37}: {fmed['rss_later_mib']:.1f} MiB   "
              f"(netweft/flanneld = {med['rss_later_mib'] / fmed['rss_later_mib']:.2f}x)")


if __name__ == "__main__":
    main()
