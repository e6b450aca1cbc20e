"""Restart benchmark: one daemon restarted with N peers programmed, netweft beside the real
flanneld in the same run (issue 12).

For each daemon (netweft's, then flanneld v0.28.x from deploy/flannel.sh) a 2-node lab (vxlan,
same etcd layout) gets N remote leases (fake peers, never reached) plus one real joiner host on
the underlay (convergence.py's: its VXLAN device programmed by hand). Once node1 has every
route:

1. ``ip monitor link route neigh`` and ``bridge monitor fdb`` start in node1's namespace;
2. node1 pings an address in the joiner's subnet every 10 ms (``ping -D``);
3. node1's daemon is stopped (SIGTERM) and started again; the run waits until it is ready and
   every route is back, then 2 s more;
4. figures: kernel changes concerning the overlay (lines naming ``flannel.1`` or a route of the
   pod network, by kind: link/route/neigh/fdb), echo requests lost across the restart, and the
   time from the stop to the daemon being ready again.

    sudo .venv/bin/python bench/restart.py [--leases 1000] [--daemon both|netweft|flanneld]
        [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from ipaddress import IPv4Network

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import convergence  # noqa: E402
from netweft.daemon.lab.lab import Lab, down  # noqa: E402
from netweft.daemon.lab.topology import LabSpec  # noqa: E402

PING_INTERVAL = "0.01"
DEV = "flannel.1"


def fake_lease(i: int) -> str:
    """Lease JSON of fake vxlan peer ``i``: public IP in 198.18.0.0/15 (benchmarking range,
    never reached; only its kernel entries matter)."""
    return json.dumps({"PublicIP": f"198.18.{i // 250}.{i % 250 + 1}", "BackendType": "vxlan",
                       "BackendData": {"VNI": 1,
                                       "VtepMAC": f"0e:{i // 256:02x}:{i % 256:02x}:00:00:01"}})


def overlay_routes(ns: str) -> int:
    """Routes through the VXLAN device in ``ns``."""
    out = subprocess.run(["ip", "-n", ns, "route", "show", "dev", DEV], capture_output=True,
                         text=True).stdout
    return out.count(" via ")


def wait(cond: object, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():  # type: ignore[operator]
            return
        time.sleep(0.05)
    raise RuntimeError(f"timed out after {timeout:.0f}s waiting for {what}")


@dataclass
class Monitors:
    """``ip monitor`` and ``bridge monitor fdb`` in one namespace, output in files."""

    procs: list[subprocess.Popen[bytes]]
    paths: list[str]

    @classmethod
    def start(cls, ns: str, workdir: str) -> Monitors:
        procs, paths = [], []
        for name, cmd in (("ip", ["ip", "-n", ns, "monitor", "link", "route", "neigh"]),
                          ("fdb", ["bridge", "-n", ns, "monitor", "fdb"])):
            path = os.path.join(workdir, f"monitor-{name}.log")
            with open(path, "wb") as out:
                procs.append(subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT))
            paths.append(path)
        return cls(procs, paths)

    def stop(self) -> dict[str, int]:
        for proc in self.procs:
            proc.terminate()
            proc.wait(timeout=10)
        logs = []
        for path in self.paths:
            with open(path, encoding="utf-8", errors="replace") as f:
                logs.append(f.read())
        return count_changes(*logs)


def count_changes(ip_log: str, fdb_log: str) -> dict[str, int]:
    """Kernel changes concerning the overlay in ``ip monitor`` / ``bridge monitor fdb`` output,
    by kind. Pure. A link line names the device after its index (``5: flannel.1: <...``);
    neighbour and route lines name it after ``dev``; routes of the pod network (10.x) without
    the device (e.g. host-gw, deletions) count too."""
    counts = {"link": 0, "route": 0, "neigh": 0, "fdb": 0}
    for line in ip_log.splitlines():
        if re.match(rf"^(Deleted )?\d+: {re.escape(DEV)}[:@]", line):
            counts["link"] += 1
        elif f"dev {DEV}" in line and " lladdr " in line:
            counts["neigh"] += 1
        elif f"dev {DEV}" in line or re.match(r"^(Deleted )?10\.\d+\.\d+\.\d+/\d+ ", line):
            counts["route"] += 1
    counts["fdb"] = sum(1 for line in fdb_log.splitlines() if f"dev {DEV}" in line)
    counts["total"] = sum(counts.values())
    return counts


def ping_loss(output: str) -> tuple[int, int]:
    """(transmitted, received) from ping's summary. Pure."""
    m = re.search(r"(\d+) packets transmitted, (\d+) received", output)
    if not m:
        raise RuntimeError(f"no ping summary in: {output[-300:]!r}")
    return int(m.group(1)), int(m.group(2))


def measure(daemon: str, leases: int, timeout: float) -> dict[str, object]:
    prefix = f"nwrs{os.getpid() % 10000:04d}"
    spec = LabSpec(prefix=prefix, nodes=2, pods_per_node=0, backend="vxlan", proxy=False,
                   network=IPv4Network("10.0.0.0/8"), subnet_len=24,
                   flannel_nodes=2 if daemon == "flanneld" else 0)
    try:
        lab = Lab.up(spec)
        node1 = lab.topo.node("node1")
        joiner_ns = convergence.build_joiner(lab)
        agent = convergence.Agent.start(lab)
        try:
            *fakes, subnet = convergence.free_subnets(lab, leases + 1)
            agent.call({"op": "bulk", "items": [[lab.lease_key(s), fake_lease(i)]
                                                for i, s in enumerate(fakes)]})
            agent.call({"op": "put", "key": lab.lease_key(subnet),
                        "value": convergence.lease_value(lab), "ttl": 3600})
        finally:
            agent.stop()
        target = subnet.network_address + 1
        convergence.ip(joiner_ns, f"addr add {target}/32 dev lo")
        want = leases + 2  # the fakes, the joiner, node2
        try:
            wait(lambda: overlay_routes(node1.netns) >= want, timeout, f"{want} routes on node1")
        except RuntimeError as exc:
            with open(node1.daemon_log, errors="replace") as f:
                tail = f.read()[-1500:]
            raise RuntimeError(f"{exc} (has {overlay_routes(node1.netns)}); daemon log: "
                               f"{tail}") from None
        time.sleep(1.0)
        monitors = Monitors.start(node1.netns, lab.state_dir)
        time.sleep(0.5)
        ping = subprocess.Popen(["ip", "netns", "exec", node1.netns, "ping", "-D", "-n", "-i",
                                 PING_INTERVAL, "-W", "1", str(target)],
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        time.sleep(1.0)
        t0 = time.monotonic()
        lab.stop_daemon(node1)
        t_stopped = time.monotonic() - t0
        lab.start_daemon(node1)
        lab.wait_daemon_ready(node1, timeout=timeout)
        t_ready = time.monotonic() - t0
        wait(lambda: overlay_routes(node1.netns) >= want, timeout, "routes after the restart")
        time.sleep(2.0)
        ping.send_signal(signal.SIGINT)
        out, _ = ping.communicate(timeout=10)
        changes = monitors.stop()
        sent, received = ping_loss(out)
    finally:
        down(prefix)
    return {"daemon": daemon, "leases": leases, "stop_s": round(t_stopped, 2),
            "restart_ready_s": round(t_ready, 2), "kernel_changes": changes,
            "pings_sent": sent, "pings_lost": sent - received}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--leases", type=int, default=1000)
    parser.add_argument("--daemon", choices=["both", "netweft", "flanneld"], default="both")
    parser.add_argument("--timeout", type=float, default=120.0)
    parser.add_argument("--json", dest="json_path")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        print("restart.py: needs root (network namespaces)", file=sys.stderr)
        return 2
    daemons = ["netweft", "flanneld"] if args.daemon == "both" else [args.daemon]
    results = []
    for daemon in daemons:
        res = measure(daemon, args.leases, args.timeout)
        print(json.dumps(res), flush=True)
        results.append(res)
    print()
    for r in results:
        c = r["kernel_changes"]
        assert isinstance(c, dict)
        print(f"restart {r['daemon']:8} ({r['leases']} peers, vxlan): kernel changes "
              f"{c['total']} (link {c['link']}, route {c['route']}, neigh {c['neigh']}, "
              f"fdb {c['fdb']}); pings lost {r['pings_lost']} of {r['pings_sent']} "
              f"(every {float(PING_INTERVAL) * 1000:g} ms); stop -> ready "
              f"{r['restart_ready_s']} s")
    if args.json_path:
        with open(args.json_path, "w") as f:
            json.dump(results, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
