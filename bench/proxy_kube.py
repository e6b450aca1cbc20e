#!/usr/bin/env python3
"""netweft proxy vs the real kube-proxy (nftables and iptables modes), all fed by one real
kube-apiserver, in one run (issue 12 "Benchmarks", proxy half; issue 11's proxy benchmark).

Each proxy runs in a node namespace of its own (tests/support/proxy_testbed.py: client ns -> node ns
-> pod namespaces on a bridge), the three of them at the same time, watching the same apiserver
(daemon/controlplane.py: etcd + kube-apiserver, real TLS; no controller-manager, see below):

* ``netweft``      ``netweft proxy --source kube --mode nftables`` (its defaults)
* ``kp-nftables``  ``kube-proxy --proxy-mode nftables`` (k8s.io/kubernetes, deploy/controlplane.sh)
* ``kp-iptables``  ``kube-proxy --proxy-mode iptables`` (Debian's iptables = the nf_tables backend)

Objects: N Services (ClusterIP, one TCP port, no selector) + N EndpointSlices with 3 ready
endpoints each, written directly through the API (concurrent creates) with the managed-by label
``bench.netweft.io``: no controller owns them (a Service without a selector is ignored by the
EndpointSlice controller), so kube-controller-manager is not run at all.

"All rules in the kernel" is read from the kernel of each node namespace, never from the
proxies' own reports:

* netweft:     every bench ClusterIP in ``ip netweft-proxy`` map ``service-ips`` with a
               ``cluster-tcp-3`` verdict (3 backends)
* kp-nftables: every bench ClusterIP in ``ip kube-proxy`` map ``service-ips`` (kube-proxy
               puts a service there only once it has endpoints)
* kp-iptables: ``iptables-save -t nat``: a ``KUBE-SERVICES ... -j KUBE-SVC-`` jump per service
               (again only with endpoints)

Figures (each printed as one JSON line per proxy, then a table with ratios to kube-proxy):

1. ``converge``: 1,000 / 10,000 / 30,000 services (cumulative), proxies running while the objects
   are written: time from the last API write to all of them in the kernel.
2. ``change``: at each ``--at`` size (10,000 by default), one EndpointSlice changed (an
   endpoint address replaced): time from the API write to the new address in each kernel,
   seen by ``nft monitor`` in each namespace (iptables-nft rules are nftables rules too);
   p50/p99. Changes are spaced 1.5 s apart, past
   every proxy's default 1 s minimum sync interval.
3. ``restart``: at each ``--at`` size, each proxy alone restarted (the other two stopped):
   start -> all rules in the kernel (a full sync from the API), CPU seconds (process + waited
   children: iptables-restore, nft) and peak RSS (VmHWM) of the proxy process (psutil).
4. ``first_packet``: TCP connect + first byte from the client namespace through each node to a
   pod, with 10 services loaded and at each ``--at`` size: one client process, one connection
   through each proxy's testbed in turn (random order per turn), ``--connects`` per proxy in
   ``--rounds`` rounds; p50/p99, per-round spread, 95% intervals of the ratios to kube-proxy
   nftables.

Writes go over keep-alive HTTPS from 32 threads (more in flight was slower: 135 vs 179 writes/s
at 64); an apiserver that times out (504 on a saturated machine) is retried. Each write phase
prints a ``write`` row: writes/s and the CPU each process spent per write. Where the time goes:
kube-apiserver v1.37.2 spends ~7 ms of CPU per write on an empty cluster, and more with every
Service already there: its ClusterIP allocator (pkg/registry/core/service/ipallocator,
``createIPAddress``) refreshes two metrics gauges after each allocation with ``Used()`` and
``Free()``, each listing and parsing every IPAddress object. Writing N services therefore costs
O(N^2) apiserver CPU (22.7 ms per write on average from 1,000 to 10,000 services; ~4 services/s
at 12,000 with the proxies running; alone it stayed at about one core, 28.9 writes/s up to
20,000). ``--quiet-writes`` stops the proxies while a size is written, then starts each one as a
measured restart; the proxies are never fed from anywhere but the API.

    .venv/bin/python bench/proxy_kube.py [--sizes 1000,10000,30000] [--at 10000] [--quick]
        [--sides netweft,kp-nftables,kp-iptables] [--iptables-max 10000] [--quiet-writes]
        [--measure-lock FILE]
        [--first-packet-only] [--connects 300] [--rounds 6] [--dump-rulesets DIR] [--json F]

``--first-packet-only`` measures the first packet at 10 services and stops (more connects and
rounds make a few-percent difference readable; ``--baseline .venv/bin/netweft`` adds a second
netweft in a testbed of its own: an A/A pair, the testbeds' own spread). ``--dump-rulesets``
keeps each proxy's ruleset for bench/proxy_firstpacket.py, which moves the rulesets alone
through the same testbeds in turn (testbed and proxy-process effects cancelled).
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import fcntl
import hashlib
import http.client
import json
import os
import signal
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import psutil
from netweft.daemon.controlplane import ControlPlane, Process
from netweft.daemon.kubeproxy_run import (
    KubeProxy,
    KubeProxySettings,
    node_with_address,
    proxier_kubeconfig,
)
from netweft.daemon.nsrelay import NsRelay

# test support (tests/support: the proxy testbed) is not shipped; it is imported from tests/
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from proxy_firstpacket import round_bootstrap_ci  # bench/: paired-rounds intervals
from proxy_scale import delete_all, make_ns  # bench/: namespaces nwp-bench<pid>-*, deleted at exit
from support.proxy_testbed import Testbed, build, connect_interleaved  # noqa: E402

NAMESPACE = "bench"
MANAGED_BY = "bench.netweft.io"
CLUSTER_CIDR = "10.128.0.0/9"          # bulk endpoints 10.129.x.x+, the beds' pods 10.244.1.x
POD_IPS = ("10.244.1.11", "10.244.1.12", "10.244.1.13")
EP_BASE = (10 << 24) | (129 << 16)
CHANGE_BASE = (10 << 24) | (250 << 16)
SIDES = ("netweft", "kp-nftables", "kp-iptables")
BASELINE = "netweft-base"     # --baseline: another netweft build, beside the others


# --- namespaces ----------------------------------------------------------------------------------


def in_ns(ns: str, *cmd: str) -> list[str]:
    return ["nsenter", f"--net=/run/netns/{ns}", *cmd]


def run_in(ns: str, *cmd: str) -> str:
    """stdout of ``cmd`` in ``ns`` ("" when it fails: a table that is not there yet)."""
    proc = subprocess.run(in_ns(ns, *cmd), capture_output=True, text=True)
    return proc.stdout if proc.returncode == 0 else ""


# --- kernel detectors ----------------------------------------------------------------------------


def kube_proxy_svc_chain(namespace: str, name: str, port: str, protocol: str = "tcp") -> str:
    """kube-proxy's iptables chain of a service port: ``KUBE-SVC-`` + the first 16 characters
    of base32(sha256(servicePortName + protocol)) (pkg/proxy/iptables/proxier.go
    ``portProtoHash``; servicePortName is ``namespace/name:port``)."""
    digest = hashlib.sha256(f"{namespace}/{name}:{port}{protocol}".encode()).digest()
    return "KUBE-SVC-" + base64.b32encode(digest).decode()[:16]


def programmed(side: str, ns: str) -> int:
    """How many services with endpoints the kernel of ``ns`` holds for ``side`` (see the module
    docstring for what is counted)."""
    if side.startswith("netweft"):
        text = run_in(ns, "nft", "list", "map", "ip", "netweft-proxy", "service-ips")
        return text.count("cluster-tcp-3")
    if side == "kp-nftables":
        text = run_in(ns, "nft", "list", "map", "ip", "kube-proxy", "service-ips")
        return text.count("goto service-")
    text = run_in(ns, "iptables-save", "-t", "nat")
    return sum(1 for line in text.splitlines()
               if line.startswith("-A KUBE-SERVICES ") and "-j KUBE-SVC-" in line)


def has_service(side: str, ns: str, cluster_ip: str, name: str) -> bool:
    """A cheap check that one service is programmed (used before the full count)."""
    if side == "kp-iptables":
        chain = kube_proxy_svc_chain(NAMESPACE, name, "http")
        return subprocess.run(in_ns(ns, "iptables", "-t", "nat", "-S", chain),
                              capture_output=True).returncode == 0
    table = "netweft-proxy" if side.startswith("netweft") else "kube-proxy"
    return subprocess.run(in_ns(ns, "nft", "get", "element", "ip", table, "service-ips",
                                f"{{ {cluster_ip} . tcp . 80 }}"),
                          capture_output=True).returncode == 0


def wait_programmed(side: str, ns: str, want: int, last_ip: str, last_name: str, start: float,
                    deadline: float, alive: Callable[[], bool]) -> dict[str, object]:
    """Poll until ``ns`` holds ``want`` services for ``side``; seconds from ``start``
    (perf_counter) to the end of the first poll that saw them all, and the poll's own length
    (the resolution). ``None`` seconds when ``deadline`` (s after start) passed first or the
    proxy died."""
    polls = 0
    while True:
        now = time.perf_counter()
        if not alive():
            return {"seconds": None, "died": True, "programmed": programmed(side, ns),
                    "want": want}
        if now - start > deadline:
            return {"seconds": None, "timeout_s": deadline,
                    "programmed": programmed(side, ns), "want": want}
        polls += 1
        t0 = time.perf_counter()
        if has_service(side, ns, last_ip, last_name):
            count = programmed(side, ns)
            t1 = time.perf_counter()
            if count >= want:
                return {"seconds": t1 - start, "poll_s": t1 - t0, "polls": polls}
        time.sleep(0.05)


class Monitor:
    """``nft monitor`` in a namespace; remembers when each watched string first appeared."""

    def __init__(self, ns: str) -> None:
        self.proc = subprocess.Popen(in_ns(ns, "nft", "monitor"), stdout=subprocess.PIPE,
                                     text=True, bufsize=1)
        self.seen: dict[str, float] = {}
        self.watch: set[str] = set()
        self.lock = threading.Lock()
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            now = time.perf_counter()
            with self.lock:
                for word in list(self.watch):
                    if word in line:
                        self.seen.setdefault(word, now)
                        self.watch.discard(word)

    def expect(self, word: str) -> None:
        with self.lock:
            self.watch.add(word)

    def when(self, word: str) -> float | None:
        with self.lock:
            return self.seen.get(word)

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait()


# --- the proxies ---------------------------------------------------------------------------------


def cpu_seconds(process: psutil.Process) -> float:
    """User+system CPU seconds of ``process``, of its children it has waited for, and of its
    descendants still running (an iptables-restore in progress: the kernel adds a child's time
    to ``children_*`` only once it is reaped). psutil.Error if ``process`` is gone."""
    t = process.cpu_times()
    total = t.user + t.system + t.children_user + t.children_system
    for child in process.children(recursive=True):
        with contextlib.suppress(psutil.Error):
            c = child.cpu_times()
            total += c.user + c.system
    return total


@dataclass
class Side:
    """One proxy in its own testbed (node namespace = ``bed.node``), reaching the apiserver
    through a loopback relay in that namespace (daemon/nsrelay.py). kube-proxy is run by
    daemon/kubeproxy_run.py (private mount namespace, read-only sysfs, global conntrack knobs
    left alone) with its default sync periods (minSyncPeriod 1 s, syncPeriod 30 s); netweft
    with its defaults (--min-sync-interval 1.0). Both use the same identity: kubeadm's
    kube-proxy service account (ClusterRole system:node-proxier)."""

    name: str
    bed: Testbed
    kubeconfig: Path
    workdir: Path
    api_port: int
    netweft: Process | None = None
    relay: NsRelay | None = None
    kube_proxy: KubeProxy | None = None
    binary: str | None = None         # netweft sides: the netweft executable (default ours)

    @property
    def ns(self) -> str:
        return self.bed.node

    @property
    def node_name(self) -> str:
        return f"bench-{self.name}"

    def start(self) -> None:
        if self.name.startswith("netweft"):
            self.relay = NsRelay(self.ns, self.api_port).start()
            self.netweft = Process("netweft proxy", in_ns(
                self.ns, self.binary or str(Path(sys.executable).parent / "netweft"), "proxy",
                "--source", "kube", "--mode", "nftables", f"--kubeconfig={self.kubeconfig}",
                f"--node-name={self.node_name}", f"--node-ip={self.bed.node_ip}",
                f"--cluster-cidr={CLUSTER_CIDR}", "--healthz-bind-address=127.0.0.1"),
                self.workdir / f"{self.name}-proxy.log")
            self.netweft.start()
            return
        settings = KubeProxySettings(self.node_name, self.bed.node_ip, self.kubeconfig,
                                     mode=self.name.split("-", 1)[1],
                                     cluster_cidr=CLUSTER_CIDR, min_sync_period=1.0,
                                     sync_period=30.0, verbosity=1)
        workdir = self.workdir / self.name
        workdir.mkdir(exist_ok=True)
        self.kube_proxy = KubeProxy(self.ns, settings, relay_port=self.api_port,
                                    workdir=workdir).start()

    @property
    def pid(self) -> int | None:
        return self.netweft.pid if self.netweft is not None else (
            self.kube_proxy.pid if self.kube_proxy is not None else None)

    def alive(self) -> bool:
        if self.netweft is not None:
            return self.netweft.running()
        return self.kube_proxy is not None and self.kube_proxy.running()

    def sample(self) -> dict[str, float]:
        """CPU seconds (:func:`cpu_seconds`: the process, its waited children and the ones still
        running: iptables-restore, nft) and RSS / peak RSS (VmHWM) in MiB of the proxy process
        (every wrapper execs: the PID is the proxy's own)."""
        assert self.pid is not None
        p = psutil.Process(self.pid)
        cpu = cpu_seconds(p)
        hwm = 0
        with open(f"/proc/{p.pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    hwm = int(line.split()[1])
        return {"cpu_s": cpu, "peak_rss_mib": hwm / 1024,
                "rss_mib": p.memory_info().rss / 2**20}

    def stop(self) -> None:
        if self.netweft is not None:
            self.netweft.stop()
            self.netweft = None
        if self.relay is not None:
            self.relay.stop()
            self.relay = None
        if self.kube_proxy is not None:
            self.kube_proxy.stop()
            self.kube_proxy = None

    def flush(self) -> None:
        """Empty the node's ruleset (the testbed itself has no rules), so a restart starts
        from nothing."""
        subprocess.run(in_ns(self.ns, "nft", "flush", "ruleset"), check=True)


# --- API objects ---------------------------------------------------------------------------------


def ip_of(n: int) -> str:
    return f"{n >> 24 & 255}.{n >> 16 & 255}.{n >> 8 & 255}.{n & 255}"


def service_obj(name: str) -> dict[str, object]:
    return {"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": name, "namespace": NAMESPACE},
            "spec": {"type": "ClusterIP", "ports": [{"name": "http", "port": 80,
                                                     "targetPort": 8080, "protocol": "TCP"}]}}


def slice_obj(name: str, ips: tuple[str, ...]) -> dict[str, object]:
    return {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": f"{name}-bench", "namespace": NAMESPACE,
                         "labels": {"kubernetes.io/service-name": name,
                                    "endpointslice.kubernetes.io/managed-by": MANAGED_BY}},
            "addressType": "IPv4",
            "endpoints": [{"addresses": [ip], "conditions": {"ready": True},
                           "nodeName": f"node-{k}"} for k, ip in enumerate(ips)],
            "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}]}


def bulk_ips(i: int) -> tuple[str, ...]:
    return tuple(ip_of(EP_BASE + 3 * i + k) for k in range(3))


class Api:
    """Bulk writes as the admin over keep-alive HTTPS connections (stdlib http.client, one per
    worker thread: lightkube's model round trip cost ~5 ms of client CPU per object, more than
    the apiserver's own share), and the services written so far (name -> ClusterIP)."""

    def __init__(self, plane: ControlPlane, concurrency: int) -> None:
        self.plane = plane
        self.concurrency = concurrency
        self.cluster_ips: dict[str, str] = {}
        self.local = threading.local()
        assert plane.pki is not None
        self.tls = ssl.create_default_context(cafile=str(plane.pki.ca_cert))
        self.tls.load_cert_chain(*(str(f) for f in plane.pki.clients["admin"]))

    def _request(self, method: str, path: str, obj: dict[str, object] | None = None,
                 ) -> tuple[int, bytes]:
        """One request on this thread's keep-alive connection; (status, body). A broken
        connection is reopened and the request sent once more."""
        for attempt in range(2):
            conn = getattr(self.local, "conn", None)
            if conn is None:
                conn = http.client.HTTPSConnection("127.0.0.1", self.plane.port, timeout=120,
                                                   context=self.tls)
                self.local.conn = conn
            try:
                conn.request(method, path, None if obj is None else json.dumps(obj),
                             {"Content-Type": "application/json"})
                response = conn.getresponse()
                return response.status, response.read()
            except (OSError, http.client.HTTPException):
                conn.close()
                self.local.conn = None
                if attempt:
                    raise
        raise AssertionError("unreachable")

    def _post(self, path: str, obj: dict[str, object]) -> dict[str, Any]:
        """Create ``obj`` at ``path``; the object as stored. An overloaded apiserver's 429/5xx
        (its request timeout fires on a saturated machine) and a ClusterIP allocation that timed
        out in etcd (422) are retried, up to 20 times; a 409
        after such a retry means the first attempt did land: the stored object is read back.
        RuntimeError on any other answer."""
        name = obj["metadata"]["name"]  # type: ignore[index]
        for _ in range(20):
            status, body = self._request("POST", path, obj)
            if status == 201:
                return cast(dict[str, Any], json.loads(body))
            if status == 409:
                status, body = self._request("GET", f"{path}/{name}")
                if status == 200:
                    return cast(dict[str, Any], json.loads(body))
            # kube-apiserver answers 422 "failed to allocate IP: etcdserver: request timed
            # out" when its IPAddress write timed out in etcd (seen at 21,903 services): a
            # storage hiccup, not an invalid object, so it is retried like a 5xx.
            allocation_timeout = status == 422 and b"failed to allocate IP" in body \
                and b"timed out" in body
            if status not in (409, 429) and status < 500 and not allocation_timeout:
                raise RuntimeError(f"POST {path}: {status} {body[:200]!r}")
            time.sleep(1.0)
        raise RuntimeError(f"POST {path}: still {status} after 20 attempts")

    def write(self, services: list[tuple[str, tuple[str, ...]]]) -> tuple[float, float]:
        """Create each Service then its EndpointSlice, ``concurrency`` pairs in flight; returns
        (perf_counter of the last write's answer, seconds the writes took)."""
        svc_path = f"/api/v1/namespaces/{NAMESPACE}/services"
        slice_path = f"/apis/discovery.k8s.io/v1/namespaces/{NAMESPACE}/endpointslices"

        def pair(item: tuple[str, tuple[str, ...]]) -> float:
            name, ips = item
            svc = self._post(svc_path, service_obj(name))
            self.cluster_ips[name] = svc["spec"]["clusterIP"]
            self._post(slice_path, slice_obj(name, ips))
            return time.perf_counter()

        t0 = time.perf_counter()
        with ThreadPoolExecutor(self.concurrency) as pool:
            last = max(pool.map(pair, services))
        return last, last - t0

    def setup(self) -> None:
        self._post("/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace",
                                          "metadata": {"name": NAMESPACE}})

    def change(self, name: str, ips: tuple[str, ...]) -> float:
        """Replace the slice's endpoints (merge patch); perf_counter just before the write,
        on a connection already open."""
        self._request("GET", "/readyz")                 # open (and keep) the connection
        patch = {"endpoints": [{"addresses": [ip], "conditions": {"ready": True},
                                "nodeName": f"node-{k}"} for k, ip in enumerate(ips)]}
        t0 = time.perf_counter()
        conn = self.local.conn
        conn.request("PATCH", f"/apis/discovery.k8s.io/v1/namespaces/{NAMESPACE}/"
                     f"endpointslices/{name}-bench", json.dumps(patch),
                     {"Content-Type": "application/merge-patch+json"})
        response = conn.getresponse()
        body = response.read()
        if response.status != 200:
            raise RuntimeError(f"PATCH {name}-bench: {response.status} {body[:200]!r}")
        return t0


# --- the run -------------------------------------------------------------------------------------


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.results: dict[str, list[dict[str, object]]] = {
            "write": [], "dropped": [], "converge": [], "change": [], "restart": [],
            "first_packet": []}
        self.work = Path(tempfile.mkdtemp(prefix="netweft-proxybench-"))
        self.plane = ControlPlane(controller_manager=False, workdir=self.work / "plane")
        self.sides: list[Side] = []
        self.retired: list[Side] = []           # dropped during the run (Bench.drop)
        self.spares: list[Testbed] = []         # --spare-testbeds: built first, never used
        self.api: Api | None = None
        self.written = 0

    @contextlib.contextmanager
    def measuring(self) -> Iterator[None]:
        """Hold ``--measure-lock`` (an exclusive flock; nothing without the option) while the
        block runs: the measured phases, not the long write phases, so other benchmarks on the
        same machine can run between them (under the same lock) instead of waiting an hour."""
        if not self.args.measure_lock:
            yield
            return
        with open(self.args.measure_lock, "a") as lock:
            t0 = time.perf_counter()
            fcntl.flock(lock, fcntl.LOCK_EX)
            print(f"measure-lock taken after {time.perf_counter() - t0:.1f} s", file=sys.stderr)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def show(self, section: str, row: dict[str, object]) -> None:
        row = {"section": section, "loadavg_1m": round(os.getloadavg()[0], 2), **row}
        self.results[section].append(row)
        print(json.dumps(row), flush=True)
        if self.args.json:
            Path(self.args.json).write_text(json.dumps(self.results, indent=2))

    def start(self) -> None:
        self.plane.start()
        self.api = Api(self.plane, self.args.concurrency)
        self.api.setup()
        kubeconfig = proxier_kubeconfig(self.plane, self.work / "kube-proxy.kubeconfig")
        for _ in range(self.args.spare_testbeds):
            bed = build(make_ns)
            for ip in POD_IPS:
                bed.add_pod(ip)
            self.spares.append(bed)
        names = self.args.sides.split(",") + ([BASELINE] if self.args.baseline else [])
        for name in names:
            bed = build(make_ns)
            for ip in POD_IPS:
                bed.add_pod(ip)
            side = Side(name, bed, kubeconfig, self.work, self.plane.port,
                        binary=self.args.baseline if name == BASELINE else None)
            node_with_address(self.plane, side.node_name, bed.node_ip)
            self.sides.append(side)
        # the first-packet target, plus fillers up to 10 services
        self.api.write([("target", POD_IPS)])
        self.grow(10, converge=False)
        for side in self.sides:
            side.start()
        self.wait_all(10, "start")

    def drop(self, name: str, reason: str) -> None:
        """Stop ``name`` for the rest of the run (its namespaces stay until :meth:`close`);
        a ``dropped`` row says why."""
        for side in [s for s in self.sides if s.name == name]:
            side.stop()
            self.sides.remove(side)
            self.retired.append(side)
            self.show("dropped", {"proxy": name, "services": self.written, "reason": reason})

    def close(self) -> None:
        for bed in self.spares:
            bed.close()
        for side in self.sides + self.retired:
            side.stop()
            side.bed.close()
        self.plane.stop()
        print(f"logs: {self.work}", file=sys.stderr)

    def grow(self, total: int, converge: bool = True) -> None:
        """Write services until ``total`` exist (the target counts); with ``converge``, measure
        last write -> all in each kernel (proxies running)."""
        assert self.api is not None
        start = max(self.written, 1)
        batch = [(f"svc-{i}", bulk_ips(i)) for i in range(start, total)]
        if not batch:
            return
        before = self.cpu_by_process()
        load0 = os.getloadavg()[0]
        last, took = self.api.write(batch)
        after = self.cpu_by_process()
        self.written = total
        writes = 2 * len(batch)
        self.show("write", {
            "services": total, "writes": writes, "seconds": took,
            "writes_per_s": writes / took, "concurrency": self.api.concurrency,
            "loadavg_1m_before": round(load0, 2),
            "cpu_s": {k: round(after[k] - before[k], 2) for k in after if k in before},
            "cpu_ms_per_write": {k: round(1000 * (after[k] - before[k]) / writes, 3)
                                 for k in after if k in before}})
        if converge:
            self.wait_all(total, "converge", last, took)

    def cpu_by_process(self) -> dict[str, float]:
        """CPU seconds (:func:`cpu_seconds`) so far of each process taking part in a write
        phase: ``kube-apiserver``, ``etcd``, each running proxy (by side name), ``bench`` (this
        process alone, not its children: the writer threads and the namespace relays) and
        ``machine``: all CPUs' busy seconds (user, nice, system, irq, softirq of
        psutil.cpu_times; guest time is inside user), to see what the rest of the machine
        took."""
        pids: dict[str, int | None] = {
            "kube-apiserver": self.plane.apiserver.pid if self.plane.apiserver else None,
            "etcd": self.plane.etcd.pid if self.plane.etcd else None,
            **{s.name: s.pid for s in self.sides if s.alive()}}
        out: dict[str, float] = {}
        for name, pid in pids.items():
            if pid is None:
                continue
            with contextlib.suppress(psutil.Error):
                out[name] = cpu_seconds(psutil.Process(pid))
        own = psutil.Process().cpu_times()
        out["bench"] = own.user + own.system
        t = psutil.cpu_times()
        out["machine"] = t.user + t.nice + t.system + t.irq + t.softirq
        return out

    def wait_all(self, total: int, section: str, start: float | None = None,
                 write_s: float | None = None) -> None:
        start = time.perf_counter() if start is None else start
        assert self.api is not None
        last_name = f"svc-{total - 1}" if total > 1 else "target"
        last_ip = self.api.cluster_ips[last_name]
        rows: dict[str, dict[str, object]] = {}

        def one(side: Side) -> None:
            rows[side.name] = wait_programmed(side.name, side.ns, total, last_ip, last_name,
                                              start, self.args.deadline, side.alive)

        threads = [threading.Thread(target=one, args=(s,), daemon=True)
                   for s in self.sides if s.alive()]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if section == "start":
            return
        for side in self.sides:
            if side.name in rows:
                self.show(section, {"proxy": side.name, "services": total,
                                    "write_s": write_s, **rows[side.name]})

    def changes(self, count: int) -> None:
        assert self.api is not None
        monitors = {s.name: Monitor(s.ns) for s in self.sides}
        lat: dict[str, list[float]] = {s.name: [] for s in self.sides}
        missed: dict[str, int] = {s.name: 0 for s in self.sides}
        try:
            time.sleep(1.0)
            for j in range(count):
                i = 1 + (j * 7919) % (self.written - 1)
                new = ip_of(CHANGE_BASE + j)
                for m in monitors.values():
                    m.expect(new)
                t0 = self.api.change(f"svc-{i}", (*bulk_ips(i)[:2], new))
                end = time.perf_counter() + 30
                while time.perf_counter() < end and any(
                        m.when(new) is None for m in monitors.values()):
                    time.sleep(0.01)
                for name, m in monitors.items():
                    seen = m.when(new)
                    if seen is None:
                        missed[name] += 1
                    else:
                        lat[name].append(seen - t0)
                time.sleep(1.5)
        finally:
            for m in monitors.values():
                m.stop()
        for name, values in lat.items():
            self.show("change", {"proxy": name, "services": self.written, "changes": count,
                                 "missed": missed[name], "all_ms": [round(1000 * v, 1)
                                                                    for v in values],
                                 "p50_ms": 1000 * statistics.median(values) if values else None,
                                 "p99_ms": 1000 * pct(values, 0.99) if values else None})

    def first_packet(self, connects: int, rounds: int = 6) -> None:
        """``connects`` TCP connections per proxy to the target service, in ``rounds`` rounds.
        One client process makes them, one connection through each proxy's testbed in turn,
        in a new random order each turn (support.proxy_testbed.connect_interleaved): every
        proxy sees the same moments of machine load. Each row has the pooled p50/p99, the
        per-round medians (min / median / max) and, beside kube-proxy nftables, the per-round
        ratio of medians (min / median / max)."""
        assert self.api is not None
        target = self.api.cluster_ips["target"]
        secs: dict[str, list[float]] = {s.name: [] for s in self.sides}
        per_round: dict[str, list[float]] = {s.name: [] for s in self.sides}
        batches: dict[str, list[list[float]]] = {s.name: [] for s in self.sides}
        failed: dict[str, int] = {s.name: 0 for s in self.sides}
        targets = [(side.bed.client, target, 80) for side in self.sides]
        connect_interleaved(targets, 10)                                    # warm up
        for _ in range(rounds):
            rows = connect_interleaved(targets, max(1, connects // rounds))
            for side, row in zip(self.sides, rows, strict=True):
                ok = [x for x in row if x is not None]
                failed[side.name] += len(row) - len(ok)
                secs[side.name] += ok
                batches[side.name].append(ok)
                if ok:
                    per_round[side.name].append(statistics.median(ok))
        ref = per_round.get("kp-nftables", [])
        for side in self.sides:
            values = secs[side.name]
            rounds_p50 = sorted(per_round[side.name])
            ratios = sorted(a / b for a, b in zip(per_round[side.name], ref, strict=False))
            self.show("first_packet", {
                "proxy": side.name, "services": self.written, "connects": len(values),
                "rounds": rounds, "failed": failed[side.name],
                "p50_us": 1e6 * statistics.median(values) if values else None,
                "p99_us": 1e6 * pct(values, 0.99) if values else None,
                "round_p50_us_min_med_max": [round(1e6 * x, 1) for x in (
                    rounds_p50[0], statistics.median(rounds_p50), rounds_p50[-1])]
                if rounds_p50 else None,
                "round_ratio_to_kp_nftables_min_med_max": [round(x, 4) for x in (
                    ratios[0], statistics.median(ratios), ratios[-1])] if ratios else None,
                **({f"ratio_{q}_to_kp_nftables_ci95": [round(x, 4) for x in round_bootstrap_ci(
                    batches[side.name], batches["kp-nftables"], v)]
                    for q, v in (("p50", 0.5), ("p99", 0.99))}
                   if ratios and all(batches["kp-nftables"]) else {})})

    def dump_rulesets(self, where: Path) -> None:
        """Each side's whole ruleset (``nft list ruleset`` in its node namespace) as
        ``<where>/<side>.nft``, and the target's ClusterIP as ``<where>/target``: the input of
        bench/proxy_firstpacket.py (the rulesets alone, rotated through the same testbeds)."""
        assert self.api is not None
        where.mkdir(parents=True, exist_ok=True)
        (where / "target").write_text(self.api.cluster_ips["target"] + "\n")
        for side in self.sides:
            (where / f"{side.name}.nft").write_text(run_in(side.ns, "nft", "list", "ruleset"))

    def restarts(self, again: bool = True, keep: bool = False) -> None:
        """Each proxy alone: start with everything in the API -> all in the kernel. With
        ``again``, start them all afterwards (for the next size); without (the last size),
        leave them stopped: a second full sync of every proxy measures nothing. With ``keep``
        (``--quiet-writes``), each proxy keeps running once measured, so the next one starts
        beside the earlier ones idling in their steady state (no second full sync of each)."""
        for side in self.sides:
            side.stop()
        assert self.api is not None
        last_name = f"svc-{self.written - 1}"
        for side in self.sides:
            side.flush()
            assert programmed(side.name, side.ns) == 0, f"{side.name}: rules left"
            t0 = time.perf_counter()
            side.start()
            row = wait_programmed(side.name, side.ns, self.written,
                                  self.api.cluster_ips[last_name], last_name, t0,
                                  self.args.deadline, side.alive)
            stats = side.sample() if side.alive() else {}
            time.sleep(self.args.settle)      # the steady state after the full sync
            settled = side.sample() if side.alive() else {}
            self.show("restart", {"proxy": side.name, "services": self.written, **row,
                                  **stats, "settled_after_s": self.args.settle,
                                  "settled_cpu_s": settled.get("cpu_s"),
                                  "settled_rss_mib": settled.get("rss_mib"),
                                  "others_running": keep})
            if not keep:
                side.stop()
        if keep or not again:
            return
        for side in self.sides:
            side.start()
        self.wait_all(self.written, "start")


def table(results: dict[str, list[dict[str, object]]]) -> None:
    """Side-by-side summary with netweft / kube-proxy ratios (below 1: netweft is better)."""
    def fmt(v: object, unit: str = "") -> str:
        return "-" if v is None else (f"{v:.3g}{unit}" if isinstance(v, float) else str(v))

    def ratios(rows: dict[str, object]) -> str:
        nw = rows.get("netweft")
        out = []
        for other in ("kp-nftables", "kp-iptables", BASELINE):
            o = rows.get(other)
            if isinstance(nw, (int, float)) and isinstance(o, (int, float)) and o:
                out.append(f"{other} {nw / o:.3g}x")
        return ", ".join(out)

    print("\nfigure | netweft | kube-proxy nftables | kube-proxy iptables | netweft-base"
          " | netweft/kube-proxy")
    groups: dict[tuple[str, object, str], dict[str, object]] = {}
    for section, key in (("converge", "seconds"), ("restart", "seconds"), ("restart", "cpu_s"),
                         ("restart", "peak_rss_mib"), ("restart", "settled_rss_mib"),
                         ("change", "p50_ms"), ("change", "p99_ms"),
                         ("first_packet", "p50_us"), ("first_packet", "p99_us")):
        for row in results[section]:
            groups.setdefault((section, row["services"], key), {})[str(row["proxy"])] = row.get(key)
    for (section, n, key), rows in groups.items():
        print(f"{section} {n} {key} | " + " | ".join(fmt(rows.get(s))
                                                     for s in (*SIDES, BASELINE))
              + f" | {ratios(rows)}")
    for row in results["write"]:
        per = cast(dict[str, float], row["cpu_ms_per_write"])
        print(f"write up to {row['services']} services: {row['writes']} writes in "
              f"{fmt(row['seconds'], ' s')} ({fmt(row['writes_per_s'], '/s')}, "
              f"{row['concurrency']} in flight); CPU ms per write: "
              + ", ".join(f"{k} {v:.3g}" for k, v in per.items()))
    for row in results["dropped"]:
        print(f"dropped {row['proxy']} at {row['services']} services: {row['reason']}")


def quiet_size(bench: Bench, n: int, at: bool, args: argparse.Namespace) -> None:
    """``--quiet-writes``: the proxies are stopped while the services up to ``n`` are written
    (the apiserver gets the machine's 2 cores), then started one after the other, each
    measured as a restart (start -> all ``n`` in its kernel, CPU, peak RSS) and left running;
    then the first-packet and change figures. No "converge while writing" figure."""
    for side in bench.sides:
        side.stop()
    bench.grow(n, converge=False)
    with bench.measuring():
        if at:
            bench.restarts(keep=True)
            bench.first_packet(args.connects, args.rounds)
            bench.changes(args.changes)
            return
        for side in bench.sides:
            side.start()
        bench.wait_all(n, "start")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="1000,10000,30000")
    ap.add_argument("--at", default="10000",
                    help="sizes (comma list) for the change / restart / first-packet figures")
    ap.add_argument("--changes", type=int, default=40)
    ap.add_argument("--connects", type=int, default=300, help="per proxy and figure")
    ap.add_argument("--rounds", type=int, default=6,
                    help="first packet: rounds the connects are split into (order alternates)")
    ap.add_argument("--first-packet-only", action="store_true",
                    help="only the first-packet figure at 10 services (no --sizes)")
    ap.add_argument("--spare-testbeds", type=int, default=0, metavar="N",
                    help="build N testbeds (with pods) before the proxies' and leave them unused: "
                         "the first-built testbed had the worst first-packet p99 in 6 of 7 runs")
    ap.add_argument("--dump-rulesets", default=None, metavar="DIR",
                    help="write each side's nft ruleset at 10 services (+ the target's IP) "
                         "to DIR, for bench/proxy_firstpacket.py")
    ap.add_argument("--concurrency", type=int, default=32, help="API writes in flight")
    ap.add_argument("--deadline", type=float, default=900.0,
                    help="give a proxy this long (s) to program everything")
    ap.add_argument("--settle", type=float, default=20.0)
    ap.add_argument("--iptables-max", type=int, default=10000,
                    help="stop kube-proxy iptables before writing more services than this "
                         "(at 10,000 its restart put none into the kernel within 900 s)")
    ap.add_argument("--quiet-writes", action="store_true",
                    help="stop the proxies while each size is written (kube-apiserver v1.37's "
                         "ClusterIP allocator costs O(services) CPU per Service create), then "
                         "start each and measure it; no converge-while-writing figure")
    ap.add_argument("--measure-lock", default=None, metavar="FILE",
                    help="hold an exclusive flock on FILE only while measuring (start, restarts, "
                         "first packet, changes), not while writing (with --quiet-writes the "
                         "writes of 30,000 services take about an hour)")
    ap.add_argument("--quick", action="store_true", help="sizes 100,300; at 300")
    ap.add_argument("--sides", default=",".join(SIDES),
                    help="which proxies to run (comma list of netweft, kp-nftables, "
                         "kp-iptables): kp-iptables' restart takes minutes from 3,000 up")
    ap.add_argument("--json", default=None)
    ap.add_argument("--baseline", default=None, metavar="NETWEFT",
                    help="also run this netweft executable (another build, e.g. an older "
                         "checkout's .venv/bin/netweft) as side netweft-base, for before/after")
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("proxy_kube.py: run as root (it creates network namespaces)")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))   # clean up on kill
    sizes = [int(x) for x in args.sizes.split(",")]
    if not set(args.sides.split(",")) <= set(SIDES):
        sys.exit(f"proxy_kube.py: --sides: choose from {','.join(SIDES)}")
    if args.quick:
        sizes, args.at, args.changes, args.connects, args.settle = [100, 300], "300", 5, 60, 2
    bench = Bench(args)
    try:
        with bench.measuring():
            bench.start()
            bench.first_packet(args.connects, args.rounds)
            if args.dump_rulesets:
                bench.dump_rulesets(Path(args.dump_rulesets))
        for n in [] if args.first_packet_only else sizes:
            if n > args.iptables_max:
                bench.drop("kp-iptables", f"--iptables-max {args.iptables_max}: at 10,000 "
                           "services its restart put none into the kernel within 900 s")
            at = str(n) in args.at.split(",")
            if args.quiet_writes:
                quiet_size(bench, n, at, args)
                continue
            bench.grow(n)
            if at:
                bench.first_packet(args.connects, args.rounds)
                bench.changes(args.changes)
                bench.restarts(again=n != sizes[-1])
    finally:
        with contextlib.suppress(Exception):
            bench.close()
        delete_all()
        table(bench.results)    # also after a kill (SIGTERM): what was measured so far


if __name__ == "__main__":
    main()
