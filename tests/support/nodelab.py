"""A miniature cluster for node-level tests and benchmarks: an underlay bridge namespace with a
real etcd on it, node namespaces running ``netweft daemon`` (as a runtime would: ``ip netns exec``),
and an "outside" host that is the nodes' default gateway. Built by the lab's own builder
(support.underlay over netweft.daemon.lab.underlay) with the lab's address plan: outside .1,
etcd .2 (on the underlay bridge), node i at .(10+i).

Everything lives in namespaces the caller names (and deletes); processes are stopped by PID.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from ipaddress import IPv4Interface, IPv4Network

from netweft.common import defaults
from netweft.daemon import netns
from netweft.daemon.etcd_process import EtcdProcess
from netweft.daemon.lab.topology import ETCD_IP, UNDERLAY, UNDERLAY_BRIDGE

from support import underlay


@dataclass
class NodeLab:
    underlay_ns: str
    node_nss: list[str]
    outside_ns: str
    workdir: str
    prefix: str = defaults.ETCD_PREFIX
    etcd: EtcdProcess | None = None
    nodes: list[underlay.UnderlayNode] = field(default_factory=list)
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    @property
    def endpoint(self) -> str:
        return f"http://{ETCD_IP}:2379"

    def build(self, pod_stand_ins: bool = True) -> NodeLab:
        self.nodes = underlay.build(self.underlay_ns, self.node_nss, outside_ns=self.outside_ns)
        subprocess.run(["ip", "-n", self.underlay_ns, "addr", "add",
                        f"{ETCD_IP}/{UNDERLAY.prefixlen}", "dev", UNDERLAY_BRIDGE],
                       check=True, capture_output=True)
        data_dir = os.path.join(self.workdir, "etcd")
        os.makedirs(data_dir, exist_ok=True)
        self.etcd = EtcdProcess(host=str(ETCD_IP), netns=self.underlay_ns,
                                data_dir=data_dir).start()
        return self

    # --- etcd access (from inside the underlay namespace) ------------------------------------

    def etcdctl(self, *args: str, check: bool = True) -> str:
        env = dict(os.environ, ETCDCTL_API="3")
        proc = subprocess.run(["ip", "netns", "exec", self.underlay_ns, "etcdctl",
                               f"--endpoints={self.endpoint}", *args], capture_output=True,
                              text=True, env=env, timeout=20)
        if check and proc.returncode != 0:
            raise RuntimeError(f"etcdctl {' '.join(args)}: {proc.stderr.strip()}")
        return proc.stdout

    def netweft(self, ns: str, *args: str, check: bool = True,
                timeout: float = 30) -> subprocess.CompletedProcess[str]:
        cmd = [sys.executable, "-m", "netweft.daemon.cli", "--etcd-endpoints", self.endpoint,
               "--etcd-prefix", self.prefix, *args]
        return netns.run(ns, cmd, check=check, timeout=timeout)

    def set_config(self, doc: dict[str, object]) -> None:
        self.etcdctl("put", f"{self.prefix}/config", json.dumps(doc))

    def put_lease(self, subnet: str, value: dict[str, object]) -> None:
        key = subnet.replace("/", "-")
        self.etcdctl("put", f"{self.prefix}/subnets/{key}", json.dumps(value))

    def delete_lease(self, subnet: str) -> None:
        self.etcdctl("del", f"{self.prefix}/subnets/{subnet.replace('/', '-')}")

    def leases(self) -> dict[str, dict[str, object]]:
        out = self.etcdctl("get", "--prefix", f"{self.prefix}/subnets/", "-w", "json")
        doc = json.loads(out)
        import base64
        res = {}
        for kv in doc.get("kvs", []):
            key = base64.b64decode(kv["key"]).decode().rsplit("/", 1)[1]
            val = json.loads(base64.b64decode(kv["value"]))
            val["_lease"] = kv.get("lease", 0)
            res[key.replace("-", "/")] = val
        return res

    # --- daemons ------------------------------------------------------------------------------

    def paths(self, ns: str) -> dict[str, str]:
        base = os.path.join(self.workdir, ns)
        return {"subnet_file": os.path.join(base, "subnet.env"),
                "state_dir": os.path.join(base, "state"), "log": os.path.join(base, "daemon.log")}

    def start_daemon(self, ns: str, *extra: str,
                     store: tuple[str, ...] | None = None) -> subprocess.Popen[bytes]:
        """``netweft daemon`` in ``ns``; ``store``: the group options naming the store (default:
        the lab's etcd; ``()`` for ``--kube-subnet-mgr``, whose options go in ``extra``)."""
        p = self.paths(ns)
        os.makedirs(os.path.dirname(p["log"]), exist_ok=True)
        if store is None:
            store = ("--etcd-endpoints", self.endpoint, "--etcd-prefix", self.prefix)
        cmd = ["ip", "netns", "exec", ns, sys.executable, "-m", "netweft.daemon.cli",
               *store, "daemon",
               "--subnet-file", p["subnet_file"], "--state-dir", p["state_dir"],
               "--metrics-addr", "127.0.0.1:9464",
               "--cni-socket", os.path.join(os.path.dirname(p["log"]), "cni.sock"),
               "--node-name", ns, "--cni-data-dir", os.path.join(self.workdir, "ipam"),
               "--cni-cache-dir", os.path.join(self.workdir, ns, "cni-cache"), *extra]
        log = open(p["log"], "ab")  # noqa: SIM115 - handed to the child
        # Each node keeps its own WireGuard key (Flannel's override of /run/flannel/wgkey).
        env = dict(os.environ, WIREGUARD_KEY_FILE=os.path.join(p["state_dir"], "wgkey"))
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env,
                                stdin=subprocess.DEVNULL, start_new_session=True)
        log.close()
        self.procs[ns] = proc
        return proc

    def stop_daemon(self, ns: str, sig: int = signal.SIGTERM, timeout: float = 10) -> int | None:
        proc = self.procs.pop(ns, None)
        if proc is None:
            return None
        if proc.poll() is None:
            os.kill(proc.pid, sig)
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait()
        return proc.returncode

    def log(self, ns: str) -> str:
        try:
            with open(self.paths(ns)["log"], encoding="utf-8", errors="replace") as f:
                return f.read()
        except OSError:
            return ""

    def status(self, ns: str) -> dict[str, object] | None:
        try:
            with open(os.path.join(self.paths(ns)["state_dir"], "status.json"),
                      encoding="utf-8") as f:
                return json.load(f)  # type: ignore[no-any-return]
        except (OSError, ValueError):
            return None

    def subnet(self, ns: str) -> IPv4Network | None:
        from netweft.ipam import subnetenv
        try:
            env = subnetenv.read(self.paths(ns)["subnet_file"])
        except subnetenv.SubnetEnvError:
            return None
        return env.subnet.network if env.subnet else None

    def http(self, ns: str, path: str) -> tuple[int, str]:
        code = ("import sys,urllib.request,urllib.error\n"
                "try:\n r=urllib.request.urlopen('http://127.0.0.1:9464'+sys.argv[1],timeout=3)\n"
                " print(r.status); print(r.read().decode())\n"
                "except urllib.error.HTTPError as e:\n print(e.code); print(e.read().decode())\n")
        out = netns.run(ns, [sys.executable, "-c", code, path], check=False).stdout
        status, _, body = out.partition("\n")
        return (int(status) if status.strip().isdigit() else 0), body

    def add_pod_stand_in(self, ns: str, subnet: IPv4Network) -> IPv4Interface:
        addr = IPv4Interface(f"{subnet.network_address + 1}/{subnet.prefixlen}")
        underlay.add_pod_stand_in(ns, addr)
        return addr

    def close(self) -> None:
        for ns in list(self.procs):
            self.stop_daemon(ns, timeout=5)
        if self.etcd is not None:
            self.etcd.stop()
