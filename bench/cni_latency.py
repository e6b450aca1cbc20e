"""CNI ADD/DEL latency: netweft (installed executable + CNI server) against the reference Go
plugins, bridge + host-local, in two versions: Debian's containernetworking-plugins 1.1.1
(``ref``) and the current release built by deploy/flannel.sh (``cur``, v1.10.0), side by side in
one run.

Each plugin gets its own node namespace with the same subnet (10.250.1.0/24) and MTU (1450);
this process enters the node namespace itself and executes the plugin binary directly with the
CNI_* environment and the config on stdin, exactly as a runtime does. Sequential calls alternate
netweft/reference so machine noise hits both alike; then M ADDs (and DELs) run in parallel.

    sudo .venv/bin/python bench/cni_latency.py [--sequential 30] [--parallel 20] [--inproc 5]
        [--launcher both|bash|python] [--repeat R]

``bash`` is the installed executable (bash builtins, TCP fast path), ``python`` the Python
launcher it falls back to (``netweft-py``, unix socket); both talk to the same CNI server.
Prints medians and means (ms) and the ratio netweft/reference. Only namespaces named
<--ns-prefix, default nwc-bench>-<pid>-* are created, and all of them are removed at the end.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from netweft.cni import nsenter  # noqa: E402
from netweft.cni.install import PY_BIN_NAME, install  # noqa: E402
from netweft.cni.invoke import PluginCall, invoke  # noqa: E402
from netweft.daemon.lab import flannel  # noqa: E402

REF_DIR = flannel.DEBIAN_PLUGINS
REFERENCES = ("ref", "cur")   # Debian's 1.1.1, the current release
SUBNET = "10.250.1.0/24"
GATEWAY = "10.250.1.1"
NETWORK = "10.250.0.0/16"
MTU = 1450


def sh(*cmd: str) -> None:
    subprocess.run(cmd, check=True, capture_output=True)


class Bench:
    def __init__(self, tmp: str, ns_prefix: str = "nwc-bench") -> None:
        self.tmp = tmp
        self.prefix = f"{ns_prefix}-{os.getpid()}"
        self.namespaces: list[str] = []
        self.server: subprocess.Popen[bytes] | None = None
        self.cur_dir = flannel.load_build().plugins_dir

    # -- namespaces -----------------------------------------------------------------------
    def netns(self, tag: str) -> str:
        name = f"{self.prefix}-{tag}"
        sh("ip", "netns", "add", name)
        self.namespaces.append(name)
        return name

    def cleanup(self) -> None:
        if self.server is not None:
            self.server.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.server.wait(timeout=10)
        for name in reversed(self.namespaces):
            subprocess.run(["ip", "netns", "delete", name], capture_output=True)

    @contextlib.contextmanager
    def inside(self, netns: str) -> Iterator[None]:
        fd = nsenter.open_netns(f"/run/netns/{netns}")
        try:
            with nsenter.entered(fd):
                yield
        finally:
            os.close(fd)

    # -- set-up -----------------------------------------------------------------------------
    def setup(self) -> None:
        self.node_nw = self.netns("node-nw")
        self.node_ref = self.netns("node-ref")
        self.node_cur = self.netns("node-cur")
        subnet_env = os.path.join(self.tmp, "subnet.env")
        with open(subnet_env, "w") as f:
            f.write(f"FLANNEL_NETWORK={NETWORK}\nFLANNEL_SUBNET={GATEWAY}/24\n"
                    f"FLANNEL_MTU={MTU}\nFLANNEL_IPMASQ=true\n")
        self.sock = os.path.join(self.tmp, "cni.sock")
        done = install(os.path.join(self.tmp, "bin"), os.path.join(self.tmp, "conf"),
                       subnet_file=subnet_env, data_dir=os.path.join(self.tmp, "nwdata"),
                       socket_path=self.sock, log_file=os.path.join(self.tmp, "cni.log"),
                       ip_masq=False)
        self.exe = done.executable
        self.exe_py = os.path.join(os.path.dirname(done.executable), PY_BIN_NAME)
        with open(done.conflist) as f:
            conflist = json.load(f)
        plugin = dict(conflist["plugins"][0])
        plugin.pop("capabilities", None)
        # the reference speaks at most 1.0.0: both get the same version
        self.nw_conf = json.dumps({"cniVersion": "1.0.0", "name": "netweft", **plugin}).encode()
        self.ref_conf, self.cur_conf = (json.dumps({
            "cniVersion": "1.0.0", "name": f"{kind}net", "type": "bridge", "bridge": "cni0",
            "isGateway": True, "isDefaultGateway": True, "hairpinMode": True, "mtu": MTU,
            "ipam": {"type": "host-local", "subnet": SUBNET,
                     "dataDir": os.path.join(self.tmp, f"{kind}data"),
                     "routes": [{"dst": NETWORK}]},
        }).encode() for kind in REFERENCES)

    def start_server(self) -> None:
        sh("ip", "-n", self.node_nw, "link", "set", "lo", "up")  # the TCP fast path's loopback
        log = open(os.path.join(self.tmp, "server.out"), "wb")  # noqa: SIM115
        self.server = subprocess.Popen(
            ["ip", "netns", "exec", self.node_nw, sys.executable, "-m", "netweft.cni.server",
             "--socket-path", self.sock, "--log-file", os.path.join(self.tmp, "server.log")],
            stdout=log, stderr=subprocess.STDOUT,
            cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        for _ in range(200):
            if os.path.exists(self.sock) and os.path.exists(self.sock[:-5] + ".token"):
                return
            time.sleep(0.05)
        raise RuntimeError("CNI server did not start")

    def stop_server(self) -> None:
        if self.server is not None:
            self.server.terminate()
            self.server.wait(timeout=10)
            self.server = None

    # -- calls ------------------------------------------------------------------------------
    def call(self, which: str, command: str, cid: str, pod_ns: str) -> float:
        plugin_dir = self.cur_dir if which == "cur" else REF_DIR
        exe = {"nw": self.exe, "bash": self.exe, "python": self.exe_py}.get(
            which, os.path.join(plugin_dir, "bridge"))
        conf = {"ref": self.ref_conf, "cur": self.cur_conf}.get(which, self.nw_conf)
        call = PluginCall(exe, command, conf, cid, f"/run/netns/{pod_ns}", "eth0",
                          cni_path=plugin_dir)
        started = time.perf_counter()
        reply = invoke(call)
        elapsed = time.perf_counter() - started
        if reply.exit_code != 0:
            raise RuntimeError(f"{which} {command} {cid}: {reply.stdout} {reply.stderr}")
        return elapsed * 1000

    def run_in(self, which: str, fn: Callable[[], Any]) -> Any:
        with self.inside({"ref": self.node_ref, "cur": self.node_cur}.get(which, self.node_nw)):
            return fn()


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def sequential(b: Bench, n: int, tag: str,
               kinds: tuple[str, ...]) -> dict[str, dict[str, list[float]]]:
    pods = {w: [b.netns(f"{tag}{w[0]}{i}") for i in range(n)] for w in kinds}
    out: dict[str, dict[str, list[float]]] = {w: {"ADD": [], "DEL": []} for w in kinds}
    for command in ("ADD", "DEL"):
        for i in range(n):
            for which in kinds[i % len(kinds):] + kinds[:i % len(kinds)]:  # rotate the order
                out[which][command].append(
                    b.run_in(which, lambda w=which, p=pods[which][i], c=command, i=i:
                             b.call(w, c, f"{tag}-{w}-{i}", p)))
    return out


def parallel(b: Bench, m: int, tag: str,
             kinds: tuple[str, ...]) -> dict[str, dict[str, list[float]]]:
    out: dict[str, dict[str, list[float]]] = {w: {"ADD": [], "DEL": []} for w in kinds}
    for which in kinds:
        pods = [b.netns(f"{tag}{which[0]}{i}") for i in range(m)]
        for command in ("ADD", "DEL"):
            results: list[float] = []
            lock = threading.Lock()

            def one(i: int, w: str = which, c: str = command,
                    results: list[float] = results, lock: threading.Lock = lock) -> None:
                ms = b.run_in(w, lambda: b.call(w, c, f"{tag}-{w}-{i}", pods[i]))  # noqa: B023
                with lock:
                    results.append(ms)

            threads = [threading.Thread(target=one, args=(i,)) for i in range(m)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            if len(results) != m:
                raise RuntimeError(f"{which} parallel {command}: {m - len(results)} calls failed")
            out[which][command] = results
    return out


def report(title: str, data: dict[str, dict[str, list[float]]]) -> None:
    """Median (and mean) per call of each netweft launcher (and of the current reference
    release, ``cur``) against each reference: ``ref`` = Debian 1.1.1, ``cur`` = current."""
    print(f"\n{title}")
    print(f"  {'op':4} {'launcher':8} {'vs':4} {'median ms':>10} {'ref median':>11} "
          f"{'ratio':>7} {'mean ms':>9} {'ref mean':>9} {'ratio':>7}")
    for command in ("ADD", "DEL"):
        for yardstick in REFERENCES:
            ref = data[yardstick][command]
            for which in (w for w in data if w not in REFERENCES or
                          (w == "cur" and yardstick == "ref")):
                nw = data[which][command]
                mean_nw, mean_ref = statistics.fmean(nw), statistics.fmean(ref)
                print(f"  {command:4} {which:8} {yardstick:4} {median(nw):10.1f} "
                      f"{median(ref):11.1f} {median(nw) / median(ref):7.2f}x {mean_nw:9.1f} "
                      f"{mean_ref:9.1f} {mean_nw / mean_ref:7.2f}x")


def server_times(log_file: str) -> dict[str, list[float]]:
    """Per-request times the server logged (``... server ADD <id>/<if> code=0 3.1ms``)."""
    out: dict[str, list[float]] = {"ADD": [], "DEL": []}
    with open(log_file) as f:
        for line in f:
            parts = line.split()
            if len(parts) >= 6 and parts[1] in ("server", "tcp") and parts[2] in out \
                    and parts[4] == "code=0" and not parts[3].startswith("warm"):
                out[parts[2]].append(float(parts[5].rstrip("ms")))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sequential", type=int, default=30, help="N sequential ADDs then DELs")
    parser.add_argument("--parallel", type=int, default=20, help="M ADDs (then DELs) at once")
    parser.add_argument("--inproc", type=int, default=5,
                        help="also time N ADD/DELs without the CNI server (0: skip)")
    parser.add_argument("--launcher", choices=["both", "bash", "python"], default="both",
                        help="bash: the installed executable (TCP fast path); python: the "
                             "Python launcher (unix socket)")
    parser.add_argument("--repeat", type=int, default=1,
                        help="repeat the sequential and parallel runs R times (spread)")
    parser.add_argument("--ns-prefix", default="nwc-bench",
                        help="names of the namespaces this run creates (<prefix>-<pid>-*)")
    opts = parser.parse_args()
    kinds = (("bash", "python") if opts.launcher == "both" else (opts.launcher,)) + REFERENCES
    if os.geteuid() != 0:
        raise SystemExit("cni_latency: run as root (network namespaces)")
    if not os.path.exists(os.path.join(REF_DIR, "bridge")):
        raise SystemExit(f"cni_latency: {REF_DIR}/bridge missing: apt-get install "
                         "containernetworking-plugins")
    try:
        flannel.load_build()
    except flannel.FlannelMissing as exc:
        raise SystemExit(f"cni_latency: current reference plugins: {exc}") from None
    tmp = tempfile.mkdtemp(prefix="nwc-bench-")
    bench = Bench(tmp, opts.ns_prefix)
    try:
        bench.setup()
        bench.start_server()
        # warm-up (bridge creation, page cache) for both, not measured
        for which in kinds:
            warm = bench.netns(f"warm{which}")
            bench.run_in(which, lambda w=which, p=warm: bench.call(w, "ADD", "warm", p))
            bench.run_in(which, lambda w=which, p=warm: bench.call(w, "DEL", "warm", p))
        print(f"netweft CNI latency vs reference bridge+host-local: ref = Debian "
              f"({os.path.join(REF_DIR, 'bridge')}), cur = {flannel.load_build().plugins_version}"
              f" ({os.path.join(bench.cur_dir, 'bridge')}); subnet {SUBNET}, MTU {MTU}")
        ratios: dict[str, list[float]] = {}
        for r in range(opts.repeat):
            seq = sequential(bench, opts.sequential, f"s{r}", kinds)
            par = parallel(bench, opts.parallel, f"p{r}", kinds)
            load = os.getloadavg()[0]
            report(f"run {r + 1}: sequential, N={opts.sequential} (load {load:.1f})", seq)
            report(f"run {r + 1}: parallel, M={opts.parallel}", par)
            for mode, data in (("seq", seq), ("par", par)):
                for command in ("ADD", "DEL"):
                    for which in kinds[:-2]:
                        for yardstick in REFERENCES:
                            ratios.setdefault(f"{mode} {command} {which}/{yardstick}", []).append(
                                median(data[which][command]) / median(data[yardstick][command]))
        if opts.repeat > 1:
            print("\nmedian ratio netweft/reference over the runs (min .. max)")
            for key, values in ratios.items():
                print(f"  {key:22} {median(values):5.2f}x ({min(values):.2f} .. "
                      f"{max(values):.2f})")
        server_side = server_times(os.path.join(tmp, "cni.log"))
        print("\ninside the CNI server (median of all requests above): "
              f"ADD {median(server_side['ADD']):.1f} ms, DEL {median(server_side['DEL']):.1f} ms "
              "(the rest is process start-up and scheduling)")
        if opts.inproc:
            bench.stop_server()
            pods = [bench.netns(f"i{i}") for i in range(opts.inproc)]
            nw = kinds[0]
            adds = [bench.run_in(nw, lambda i=i, p=p: bench.call(nw, "ADD", f"i-{i}", p))
                    for i, p in enumerate(pods)]
            dels = [bench.run_in(nw, lambda i=i, p=p: bench.call(nw, "DEL", f"i-{i}", p))
                    for i, p in enumerate(pods)]
            print(f"\nwithout the CNI server (in-process fallback), N={opts.inproc}: "
                  f"ADD {median(adds):.1f} ms, DEL {median(dels):.1f} ms")
    finally:
        bench.cleanup()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
