"""A small real-kernel topology for exercising the proxy's dataplane (tests, benchmarks):

    client ns eth0 192.0.2.1/24 -- br0 -- eth0 192.0.2.11/24 node ns cni0 10.244.1.1/24 -- pods
    (routes 10.96.0.0/12, 203.0.113.0/24,      (forwarding on; default route      10.244.1.x
     10.244.0.0/16 via the node)                via the client: service IPs route)

The underlay is the lab's (netweft.daemon.lab.underlay, its address plan: the client is the
outside host ``.1``, the node is node 1 at ``.11``). Namespaces come from a caller-supplied
``make_ns(tag)`` (the tests' ``netns_factory``), which also owns their deletion. Pods run the
labs' echo server (netweft.daemon.lab.whoami, ``--name <own ip>``: it answers
``"<own ip> <peer ip>"``); the client helper connects N times and reports who answered, or
how the attempt failed.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from netweft.daemon.lab import topology, underlay

CLIENT = r"""
import json, socket, sys, time
proto, host = sys.argv[1], sys.argv[2]
port, count, sport = int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[6])
timeout = float(sys.argv[5])
out = []
usock = None
for _ in range(count):
    t0 = time.perf_counter()
    try:
        if proto == "udp":
            if usock is None:
                usock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                usock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                usock.bind(("0.0.0.0", sport)); usock.settimeout(timeout)
                usock.connect((host, port))
            usock.send(b"hi")
            data = usock.recv(2048)
        else:
            kind = socket.IPPROTO_SCTP if proto == "sctp" else 0
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM, kind)
            s.settimeout(timeout)
            if sport:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); s.bind(("0.0.0.0", sport))
            s.connect((host, port))
            data = s.recv(2048)
            s.close()
        server, peer = data.decode().split()
        out.append({"server": server, "peer": peer, "seconds": time.perf_counter() - t0})
    except ConnectionRefusedError:
        out.append({"error": "refused", "seconds": time.perf_counter() - t0})
    except (socket.timeout, TimeoutError):
        out.append({"error": "timeout", "seconds": time.perf_counter() - t0})
    except OSError as exc:
        err = type(exc).__name__ + ":" + str(exc.errno)
        out.append({"error": err, "seconds": time.perf_counter() - t0})
print(json.dumps(out))
"""


INTERLEAVED = r"""
import ctypes, json, os, random, socket, sys, time
libc = ctypes.CDLL("libc.so.6", use_errno=True)
rng = random.Random(12)
targets = json.loads(sys.argv[1])        # [[netns path, host, port], ...]
count, timeout = int(sys.argv[2]), float(sys.argv[3])
fds = [os.open(t[0], os.O_RDONLY) for t in targets]
out = [[] for _ in targets]
k = len(targets)
order = list(range(k))
for i in range(count):
    rng.shuffle(order)
    for j in order:
        if libc.setns(fds[j], 0x40000000) != 0:       # CLONE_NEWNET: the socket's namespace
            raise OSError(ctypes.get_errno(), "setns")
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.settimeout(timeout)
        t0 = time.perf_counter()
        try:
            s.connect((targets[j][1], targets[j][2]))
            s.recv(2048)
            out[j].append(time.perf_counter() - t0)
        except OSError as exc:
            out[j].append(-1.0)
        finally:
            s.close()
print(json.dumps(out))
"""


def connect_interleaved(targets: Sequence[tuple[str, str, int]], count: int,
                        timeout: float = 2.0) -> list[list[float | None]]:
    """``count`` TCP connects + first byte to each ``(client namespace, host, port)``, one
    connection to each target in turn (each turn in a new random order, seeded: no target is
    always first, or always right after itself) from one process that enters each namespace
    before making that connection's socket: every target sees the same moments of machine
    load, at the grain of single connections. Returns, per target, the seconds of each
    connection (None: it failed)."""
    spec = json.dumps([[f"/run/netns/{ns}", host, port] for ns, host, port in targets])
    proc = subprocess.run([sys.executable, "-c", INTERLEAVED, spec, str(count), str(timeout)],
                          capture_output=True, text=True, check=True,
                          timeout=count * len(targets) * timeout + 30)
    return [[None if x < 0 else x for x in row] for row in json.loads(proc.stdout)]


@dataclass(frozen=True)
class Attempt:
    server: str | None
    peer: str | None
    error: str | None
    seconds: float


@dataclass
class Pod:
    netns: str
    ip: str
    server: subprocess.Popen[str] | None = None


@dataclass
class Testbed:
    __test__ = False            # not a pytest class, despite the name

    node: str
    client: str
    node_ip: str = str(topology.node_ip(1))
    client_ip: str = str(topology.GATEWAY_IP)
    bridge_ip: str = "10.244.1.1"
    pods: dict[str, Pod] = field(default_factory=dict)     # ip -> pod
    make_ns: Callable[[str], str] | None = None

    def add_pod(self, ip: str, serve: Sequence[str] = ("tcp:8080", "udp:8080")) -> Pod:
        """A pod namespace on the node's bridge at ``ip`` (10.244.1.x) running the server."""
        assert self.make_ns is not None
        ns = self.make_ns("ppod")
        idx = len(self.pods) + 1
        host_end = f"vp{idx}"
        _ip(self.node, "link", "add", host_end, "type", "veth", "peer", "name", "eth0",
            "netns", ns)
        _ip(self.node, "link", "set", host_end, "master", "cni0", "up")
        # like the bridge CNI plugin's hairpinMode (Flannel's default): with br_netfilter, a
        # DNAT back to the sender is bridged out of the port it came in on
        _ip(self.node, "link", "set", host_end, "type", "bridge_slave", "hairpin", "on")
        _ip(ns, "addr", "add", f"{ip}/24", "dev", "eth0")
        _ip(ns, "link", "set", "eth0", "up")
        _ip(ns, "route", "add", "default", "via", self.bridge_ip)
        pod = Pod(ns, ip)
        if serve:
            pod.server = start_server(ns, ip, serve)
        self.pods[ip] = pod
        return pod

    def stop_pod(self, ip: str) -> None:
        pod = self.pods[ip]
        if pod.server is not None:
            pod.server.kill()
            pod.server.wait()
            pod.server = None

    def close(self) -> None:
        for ip in list(self.pods):
            self.stop_pod(ip)

    def connect(self, from_ns: str, host: str, port: int, proto: str = "tcp", count: int = 1,
                timeout: float = 2.0, source_port: int = 0) -> list[Attempt]:
        proc = run_in(from_ns, [sys.executable, "-c", CLIENT, proto, host, str(port),
                                   str(count), str(timeout), str(source_port)],
                         timeout=count * timeout + 30)
        return [Attempt(r.get("server"), r.get("peer"), r.get("error"), r["seconds"])
                for r in json.loads(proc.stdout)]


def run_in(ns: str, cmd: Sequence[str], timeout: float = 60,
           check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", "netns", "exec", ns, *cmd], capture_output=True, text=True,
                          timeout=timeout, check=check)


def _ip(ns: str, *args: str) -> None:
    subprocess.run(["ip", "-n", ns, *args], check=True, capture_output=True)


def start_server(ns: str, ip: str, serve: Sequence[str]) -> subprocess.Popen[str]:
    listeners = [arg for spec in serve for arg in ("--listen", spec)]
    proc = subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, "-m",
                             "netweft.daemon.lab.whoami", "serve", "--name", ip, *listeners],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if line.strip() != "ready":
        proc.kill()
        err = proc.stderr.read() if proc.stderr else ""
        raise RuntimeError(f"pod server in {ns} did not start: {err}")
    return proc


def build(make_ns: Callable[[str], str]) -> Testbed:
    """Node + client namespaces wired as in the module docstring (no pods yet)."""
    node, client = make_ns("pnode"), make_ns("pcli")
    underlay_ns = make_ns("pul")
    bed = Testbed(node, client, make_ns=make_ns)
    underlay.create_underlay(underlay_ns)
    underlay.attach_host(underlay_ns, underlay.Host(client, "client", topology.GATEWAY_IP))
    underlay.attach_host(underlay_ns, underlay.Host(node, "node", topology.node_ip(1),
                                                    gateway=topology.GATEWAY_IP, forwarding=True))
    _ip(node, "link", "add", "cni0", "type", "bridge")
    _ip(node, "addr", "add", f"{bed.bridge_ip}/24", "dev", "cni0")
    _ip(node, "link", "set", "cni0", "up")
    for net in ("10.96.0.0/12", "203.0.113.0/24", "10.244.0.0/16"):
        _ip(client, "route", "add", net, "via", bed.node_ip)
    # the kernel rate-limits ICMP errors per destination host, even the first one here: the
    # tests count every "port unreachable" a rejected UDP service sends
    run_in(node, ["sysctl", "-qw", "net.ipv4.icmp_ratelimit=0"])
    # a UDP reply from a replaced backend must not keep the old entry alive in tests
    run_in(node, ["sysctl", "-qw", "net.netfilter.nf_conntrack_udp_timeout=30"], check=False)
    time.sleep(0.05)
    return bed
