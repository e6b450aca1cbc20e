"""Convergence benchmark: time from a lease appearing in etcd to the route being usable on
another node, p50/p99 over 20 joins.

A 2-node netweft lab plus a hand-programmed "joiner" host on the underlay (its VXLAN device or
host-gw route back to node1 set up by hand, so only node1's reaction is measured). Each join:

1. node1 pings an address in the joiner's next subnet every 2 ms (``ping -D`` timestamps);
   without a route those pings go to the default gateway and are lost;
2. an agent inside the etcd namespace grants an etcd lease and puts the joiner's subnet lease
   (Flannel JSON) and reports the wall-clock time the put returned;
3. convergence = first echo reply - put returned (same clock: one machine).

Then the lease is deleted, node1 drops the route, and the next join uses a fresh subnet.

``--daemon both`` (default) runs the same joins against netweft's daemon and against the real
flanneld (deploy/flannel.sh; the lab's ``--flannel-nodes``) as node1, one after the other in one
run, and prints both and the ratio netweft/flanneld.

    sudo .venv/bin/python bench/convergence.py [--joins 20] [--backend vxlan|host-gw]
        [--daemon both|netweft|flanneld] [--rounds R]

``--rounds R`` alternates the two daemons R times (``--joins`` each per round, a fresh lab each
time) and pools the samples, so a load change on the shared machine hits both sides alike.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from netweft.daemon.lab import inspect, underlay  # noqa: E402
from netweft.daemon.lab.lab import Lab, down  # noqa: E402
from netweft.daemon.lab.topology import NODE_IFACE, LabSpec  # noqa: E402

JOINER_IP = IPv4Address("192.0.2.200")
JOINER_MAC = "0e:00:00:00:00:c8"
PING_INTERVAL = "0.002"


# ---- the etcd agent (runs inside the etcd namespace) ------------------------------------------
async def agent(endpoint: str) -> None:
    from netweft.kv.etcd import EtcdClient, EtcdSettings

    client = EtcdClient(EtcdSettings.from_strings(endpoint))
    client.connect()
    loop = asyncio.get_running_loop()
    while True:
        line = await loop.run_in_executor(None, sys.stdin.readline)
        if not line:
            break
        req = json.loads(line)
        if req["op"] == "put":
            lease = await client.grant(int(req["ttl"]))
            t0 = time.time()
            await client.put(req["key"], req["value"], lease=lease)
            t1 = time.time()
            reply = {"t0": t0, "t1": t1}
        elif req["op"] == "bulk":  # [[key, value], ...] without a TTL, 64 at a time
            items = req["items"]
            for start in range(0, len(items), 64):
                await asyncio.gather(*(client.put(k, v) for k, v in items[start:start + 64]))
            reply = {"ok": True}
        else:
            await client.delete(req["key"])
            reply = {"ok": True}
        sys.stdout.write(json.dumps(reply) + "\n")
        sys.stdout.flush()
    await client.close()


@dataclass
class Agent:
    proc: subprocess.Popen[str]

    @classmethod
    def start(cls, lab: Lab) -> Agent:
        proc = subprocess.Popen(
            ["ip", "netns", "exec", lab.topo.etcd_ns, sys.executable, os.path.abspath(__file__),
             "--agent", lab.topo.etcd_endpoint],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )
        return cls(proc)

    def call(self, req: dict[str, object]) -> dict[str, float]:
        assert self.proc.stdin and self.proc.stdout
        self.proc.stdin.write(json.dumps(req) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError("etcd agent exited")
        return json.loads(line)

    def stop(self) -> None:
        if self.proc.stdin:
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


# ---- the joiner ---------------------------------------------------------------------------------
def ip(ns: str, *lines: str, tool: str = "ip") -> None:
    underlay.ip_batch(ns, list(lines), tool=tool)


def build_joiner(lab: Lab, node1_mac: str | None = None) -> str:
    """The hand-programmed joiner host, its dataplane back to node1 set up; ``node1_mac``:
    node1's VTEP MAC (default: from its lease in etcd)."""
    ns = f"{lab.topo.prefix}-joiner"
    underlay.attach_host(lab.topo.underlay_ns, underlay.Host(ns, "joiner", JOINER_IP))
    node1 = lab.topo.node("node1")
    subnet = lab.node_network(node1)
    assert subnet is not None
    spec = lab.topo.spec
    if spec.backend == "vxlan":
        mac = node1_mac
        if mac is None:
            lease = lab.node_lease(node1)
            assert lease is not None
            mac = lease["BackendData"]["VtepMAC"]
        dev = f"flannel.{spec.vni}"
        ip(ns, f"link add {dev} address {JOINER_MAC} type vxlan id {spec.vni} local {JOINER_IP} "
               f"dev {NODE_IFACE} dstport {spec.port} nolearning",
           f"link set {dev} up",
           f"neigh replace {subnet.network_address} lladdr {mac} dev {dev} nud permanent",
           f"route replace {subnet} via {subnet.network_address} dev {dev} onlink")
        ip(ns, f"fdb append {mac} dev {dev} dst {node1.ip} self permanent", tool="bridge")
    else:  # host-gw: node1's pods are reached through node1 (same L2)
        ip(ns, f"route replace {subnet} via {node1.ip}")
    return ns


def free_subnets(lab: Lab, count: int) -> list[IPv4Network]:
    spec = lab.topo.spec
    used = {lab.node_network(n) for n in lab.topo.nodes}
    candidates = list(spec.network.subnets(new_prefix=spec.subnet_len))[::-1]
    return [s for s in candidates if s not in used][:count]


def lease_value(lab: Lab) -> str:
    spec = lab.topo.spec
    if spec.backend == "vxlan":
        return json.dumps({"PublicIP": str(JOINER_IP), "BackendType": "vxlan",
                           "BackendData": {"VNI": spec.vni, "VtepMAC": JOINER_MAC}})
    return json.dumps({"PublicIP": str(JOINER_IP), "BackendType": "host-gw"})


def first_reply(output: str) -> float | None:
    for line in output.splitlines():
        if "bytes from" in line and line.startswith("["):
            return float(line[1:line.index("]")])
    return None


def join_once(lab: Lab, agent_: Agent, joiner_ns: str, subnet: IPv4Network,
              timeout: float, src_ns: str | None = None) -> tuple[float, float]:
    """One etcd-mode join (lease put -> first reply to node1, or to ``src_ns``); (from put
    returned, from put started) in seconds."""
    key = lab.lease_key(subnet)

    def publish() -> tuple[float, float]:
        times = agent_.call({"op": "put", "key": key, "value": lease_value(lab), "ttl": 600})
        return times["t0"], times["t1"]

    return timed_join(lab, joiner_ns, subnet, publish,
                      lambda: agent_.call({"op": "del", "key": key}), timeout, src_ns)


def timed_join(lab: Lab, joiner_ns: str, subnet: IPv4Network,
               publish: Callable[[], tuple[float, float]], withdraw: Callable[[], object],
               timeout: float, src_ns: str | None = None) -> tuple[float, float]:
    """Ping an address in the joiner's ``subnet`` from ``src_ns`` (default: node1) every 2 ms,
    ``publish()`` the joiner (returns wall-clock times (started, returned)), wait for node1's
    route, ``withdraw()`` it again and wait until the route is gone. Returns (first echo reply
    - publish returned, first echo reply - publish started) in seconds; RuntimeError if no
    reply came within ``timeout``."""
    node1 = lab.topo.node("node1")
    target = subnet.network_address + 1
    ip(joiner_ns, f"addr add {target}/32 dev lo")
    ping = subprocess.Popen(
        # no -w: with a deadline, ping exits at the first ICMP error (net unreachable)
        ["ip", "netns", "exec", src_ns or node1.netns, "ping", "-D", "-n", "-i", PING_INTERVAL,
         "-W", "1", str(target)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    time.sleep(0.05)
    t0, t1 = publish()
    # the route is usable once one echo comes back; then stop pinging
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and inspect.route_to(node1.netns, str(subnet)) is None:
        time.sleep(0.005)
    time.sleep(0.1)
    ping.send_signal(signal.SIGINT)   # ping flushes its (piped, buffered) output on SIGINT
    out, _ = ping.communicate(timeout=5)
    withdraw()
    end = time.monotonic() + timeout
    while time.monotonic() < end and inspect.route_to(node1.netns, str(subnet)) is not None:
        time.sleep(0.01)
    ip(joiner_ns, f"addr del {target}/32 dev lo")
    reply = first_reply(out)
    if reply is None:
        raise RuntimeError(f"no echo reply from {target} within {timeout}s")
    return reply - t1, reply - t0


def percentile(values: list[float], pct: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(values)
    rank = max(1, int(-(-pct * len(ordered) // 100)))
    return ordered[rank - 1]


def measure(args: argparse.Namespace, daemon: str) -> dict[str, object]:
    """``args.joins`` joins against ``daemon`` (netweft or flanneld) as node1 in a fresh lab;
    the figures."""
    prefix = f"nwlc{os.getpid() % 10000:04d}"
    spec = LabSpec(prefix=prefix, nodes=2, pods_per_node=0, backend=args.backend,
                   proxy=False, flannel_nodes=2 if daemon == "flanneld" else 0)
    samples: list[float] = []
    upper: list[float] = []
    try:
        lab = Lab.up(spec)
        joiner_ns = build_joiner(lab)
        agent_ = Agent.start(lab)
        try:
            for i, subnet in enumerate(free_subnets(lab, args.joins)):
                conv, conv_upper = join_once(lab, agent_, joiner_ns, subnet, args.timeout)
                samples.append(conv)
                upper.append(conv_upper)
                print(f"  {daemon} join {i + 1:2d} {subnet}: {conv * 1000:7.1f} ms",
                      flush=True)
        finally:
            agent_.stop()
    finally:
        down(prefix)
    return summary(daemon, args.backend, samples, upper)


def summary(daemon: str, backend: str, samples: list[float],
            upper: list[float]) -> dict[str, object]:
    """The figures of ``samples`` (seconds from put returned; ``upper``: from put started)."""
    ms = [s * 1000 for s in samples]
    result: dict[str, object] = {
        "daemon": daemon, "backend": backend, "joins": len(ms),
        "p50_ms": round(percentile(ms, 50), 1), "p99_ms": round(percentile(ms, 99), 1),
        "mean_ms": round(statistics.mean(ms), 1), "max_ms": round(max(ms), 1),
        "p50_ms_from_put_start": round(percentile([u * 1000 for u in upper], 50), 1),
    }
    result["samples_ms"] = [round(m, 2) for m in ms]
    result["samples_from_put_start_ms"] = [round(u * 1000, 2) for u in upper]
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--joins", type=int, default=20)
    parser.add_argument("--backend", choices=["vxlan", "host-gw"], default="vxlan")
    parser.add_argument("--daemon", choices=["both", "netweft", "flanneld"], default="both")
    parser.add_argument("--rounds", type=int, default=1,
                        help="alternate the daemons this many times, --joins each per round "
                             "(pooled figures; each round in a fresh lab)")
    parser.add_argument("--timeout", type=float, default=10.0)
    parser.add_argument("--json", dest="json_path")
    parser.add_argument("--agent", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.agent:
        asyncio.run(agent(args.agent))
        return 0
    if os.geteuid() != 0:
        print("convergence.py: needs root (network namespaces)", file=sys.stderr)
        return 2
    daemons = ["netweft", "flanneld"] if args.daemon == "both" else [args.daemon]
    if args.rounds == 1:
        results = [measure(args, d) for d in daemons]
    else:
        results = interleaved(args, daemons)
    report(results, "daemon", "convergence",
           f"{args.backend}, lease put -> first echo reply on another node", args.json_path)
    return 0


def interleaved(args: argparse.Namespace, daemons: list[str]) -> list[dict[str, object]]:
    """``args.rounds`` rounds, each ``args.joins`` joins per daemon in turn (a fresh lab each),
    so both sides see the machine's load alike; the pooled figures, with each round's p50."""
    pooled: dict[str, tuple[list[float], list[float]]] = {d: ([], []) for d in daemons}
    rounds: dict[str, list[float]] = {d: [] for d in daemons}
    for r in range(args.rounds):
        for daemon in daemons:
            one = measure(args, daemon)
            pooled[daemon][0].extend(m / 1000 for m in one["samples_ms"])  # type: ignore[attr-defined]
            pooled[daemon][1].extend(m / 1000 for m in one["samples_from_put_start_ms"])  # type: ignore[attr-defined]
            rounds[daemon].append(float(one["p50_ms"]))  # type: ignore[arg-type]
            print(f"round {r + 1} {daemon}: p50 {one['p50_ms']} ms, p99 {one['p99_ms']} ms "
                  f"(load {os.getloadavg()[0]:.1f})", flush=True)
    results = []
    for daemon in daemons:
        result = summary(daemon, args.backend, *pooled[daemon])
        result["round_p50_ms"] = rounds[daemon]
        results.append(result)
    return results


def report(results: list[dict[str, object]], key: str, title: str, what: str,
           json_path: str | None = None) -> None:
    """Print one ``title <r[key]> (what, N joins): p50/p99/max`` line per result and, for two,
    the ratio first/second of p50 and p99; write the results as JSON to ``json_path``."""
    print()
    width = max(len(str(r[key])) for r in results)
    for r in results:
        print(f"{title} {str(r[key]):{width}} ({what}, {r['joins']} joins): p50 {r['p50_ms']} ms, "
              f"p99 {r['p99_ms']} ms, max {r['max_ms']} ms"
              + (f"; per-round p50 {r['round_p50_ms']}" if "round_p50_ms" in r else ""))
    if len(results) == 2:
        a, b = results
        print(f"ratio {a[key]}/{b[key]}: p50 {float(a['p50_ms']) / float(b['p50_ms']):.2f}x, "  # type: ignore[arg-type]
              f"p99 {float(a['p99_ms']) / float(b['p99_ms']):.2f}x")  # type: ignore[arg-type]
    if json_path:
        with open(json_path, "w") as f:
            json.dump(results if len(results) > 1 else results[0], f, indent=2)


if __name__ == "__main__":
    sys.exit(main())
