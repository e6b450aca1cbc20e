"""The lab as one object: build it (``up``), inspect it (``status``), prove it (``check``), change
it (add/remove nodes and pods, stop/start daemons and etcd) and remove it (:func:`down`).

State lives in ``/run/netweft-lab/<prefix>/``: ``lab.json`` (the topology and pod addresses),
``pids/*.pid`` and ``nodes/<node>/`` (subnet.env, CNI dirs, logs, the daemon's socket).
:func:`down` needs none of it: it also scans namespaces named ``<prefix>-*`` and the processes
living in them, so it cleans up after a crash.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Interface, IPv4Network
from typing import TYPE_CHECKING, Any

from netweft.common import defaults
from netweft.common.atomicfile import write_atomic
from netweft.daemon import netns
from netweft.daemon.etcd_process import EtcdProcess
from netweft.daemon.lab import check as checks
from netweft.daemon.lab import flannel, procs, reference, runtime, underlay
from netweft.daemon.lab.etcdctl import LabEtcd
from netweft.daemon.lab.topology import (
    CNI_NETWORK_NAME,
    DAEMON_ACCOUNT,
    ETCD_CLIENT_PORT,
    ETCD_IP,
    KUBE_PROCESSES,
    PROXY_ACCOUNT,
    SERVICE_NAME,
    SERVICE_NODE_PORT,
    SERVICE_PORT,
    WHOAMI_PORT,
    KubePaths,
    LabSpec,
    Node,
    Pod,
    Topology,
    cni_install_args,
    lab_state_dir,
    make_node,
    make_pod,
    network_config,
    plan,
)

if TYPE_CHECKING:
    from netweft.daemon.lab.kube import KubeApi

STATE_FILE = "lab.json"
DAEMON_READY_TIMEOUT = 30.0
DAEMON_STATUS_FILE = "status.json"   # written by the daemon into its --state-dir
SOCKET_GRACE = 2.0
SERVICES_PREFIX = defaults.SERVICES_PREFIX  # the daemon's and proxy's default --services-prefix


class LabError(RuntimeError):
    """An expected lab failure; the message is one line the user can act on."""


def netweft_bin_dir() -> str:
    """The directory holding the ``netweft`` executable of this installation."""
    return os.path.dirname(sys.executable)


def netweft_command() -> list[str]:
    exe = os.path.join(netweft_bin_dir(), "netweft")
    if os.access(exe, os.X_OK):
        return [exe]
    found = shutil.which("netweft")
    if found:
        return [found]
    return [sys.executable, "-m", "netweft.daemon.cli"]


def daemon_command(topo: Topology, node: Node, network: str = CNI_NETWORK_NAME,
                   kube_paths: KubePaths | None = None) -> list[str]:
    """How the lab starts ``netweft daemon`` on ``node`` (inside the node's namespace);
    ``network``: the CNI network name (IPAM directory), Flannel's on a migrated node;
    ``kube_paths``: Kubernetes mode (``--kube-subnet-mgr`` with the ``netweft`` service
    account's token and Flannel's net-conf.json; no etcd at all)."""
    if kube_paths is not None:
        store = ["daemon", "--kube-subnet-mgr", "--kubeconfig-file", kube_paths.daemon_kubeconfig,
                 "--net-conf-path", kube_paths.net_conf]
    else:
        store = ["--etcd-endpoints", topo.etcd_endpoint, "--etcd-prefix", topo.spec.etcd_prefix,
                 "daemon"]
    return [
        *netweft_command(),
        *store,
        "--iface", "eth0",
        "--subnet-file", node.subnet_env,
        "--state-dir", node.daemon_state_dir,
        "--cni-socket", node.cni_socket,
        "--node-name", node.name,
        "--cni-data-dir", node.cni_data_dir,
        "--cni-network", network,
        "--cni-cache-dir", runtime.cache_dir(node),
    ]


def proxy_command(topo: Topology, node: Node,
                  kube_paths: KubePaths | None = None) -> list[str]:
    """How the lab starts ``netweft proxy`` on ``node``: services from etcd, or with
    ``kube_paths`` from the API (Services + EndpointSlices, the ``netweft-proxy`` token)."""
    if kube_paths is not None:
        source = ["proxy", "--source", "kube", "--kubeconfig", kube_paths.proxy_kubeconfig]
    else:
        source = ["--etcd-endpoints", topo.etcd_endpoint, "--etcd-prefix",
                  topo.spec.etcd_prefix, "proxy", "--source", "etcd"]
    return [
        *netweft_command(),
        *source,
        "--mode", topo.spec.proxy_mode,
        "--node-name", node.name,
        "--subnet-file", node.subnet_env,
    ]


def cni_install_command(node: Node, network: str = CNI_NETWORK_NAME) -> list[str]:
    """How the lab installs the CNI plugin (executable + conflist) with the node's own paths."""
    return [*netweft_command(), "cni", "install", *cni_install_args(node), "--name", network]


def node_env(topo: Topology, node: Node | None = None) -> dict[str, str]:
    """Environment for commands run in a lab node: netweft on PATH, pointed at the lab's etcd
    and (for `netweft routes|status`) at the node's own subnet.env and state dir."""
    env = dict(os.environ)
    env["PATH"] = f"{netweft_bin_dir()}:{env.get('PATH', '/usr/sbin:/usr/bin:/sbin:/bin')}"
    if not topo.spec.kube:  # Kubernetes mode: no etcd for the nodes at all
        env["NETWEFT_ETCD_ENDPOINTS"] = topo.etcd_endpoint
        env["NETWEFT_ETCD_PREFIX"] = topo.spec.etcd_prefix
    if node is not None:
        env["WIREGUARD_KEY_FILE"] = node.wireguard_key_file  # Flannel's override, per node
        for cmd in ("ROUTES", "STATUS"):
            env[f"NETWEFT_{cmd}_SUBNET_FILE"] = node.subnet_env
            env[f"NETWEFT_{cmd}_STATE_DIR"] = node.daemon_state_dir
    return env


@dataclass
class ServiceState:
    """The lab's NodePort service (backed by every pod's whoami server)."""

    name: str
    cluster_ip: str
    port: int
    node_port: int


@dataclass
class PodState:
    pod: Pod
    ip: IPv4Address | None = None


class Lab:
    def __init__(self, topo: Topology, pods: dict[str, PodState] | None = None,
                 retired: list[int] | None = None, flannel_nodes: set[str] | None = None) -> None:
        self.topo = topo
        self.pods: dict[str, PodState] = pods or {}
        self.retired: list[int] = retired or []   # indexes of removed nodes (never reused)
        self.service: ServiceState | None = None
        # nodes running the real flanneld instead of netweft's daemon (daemon/lab/flannel.py)
        self.flannel_nodes: set[str] = flannel_nodes if flannel_nodes is not None else {
            n.name for n in topo.nodes[:topo.spec.flannel_nodes]}
        # nodes migrated from flanneld keep Flannel's CNI network name, so netweft's IPAM
        # (host-local's layout) continues host-local's allocations in <data dir>/cbr0
        self.migrated: set[str] = set()
        self.kube: KubePaths | None = None   # Kubernetes mode: the control plane's files

    # ---- state -------------------------------------------------------------------------
    @property
    def state_dir(self) -> str:
        return self.topo.state_dir

    @property
    def etcd(self) -> LabEtcd:
        return LabEtcd(self.topo.etcd_ns, self.topo.etcd_endpoint)

    def pidfile(self, name: str) -> str:
        return os.path.join(self.state_dir, "pids", f"{name}.pid")

    def save(self) -> None:
        data = {
            "spec": self.topo.spec.to_dict(),
            "nodes": [n.index for n in self.topo.nodes],
            "retired": self.retired,
            "flannel_nodes": sorted(self.flannel_nodes),
            "migrated": sorted(self.migrated),
            "service": dataclasses.asdict(self.service) if self.service else None,
            "kube": self.kube.to_dict() if self.kube else None,
            "pods": [
                {"name": s.pod.name, "node": s.pod.node,
                 "index": int(s.pod.name.rsplit("pod", 1)[1]),
                 "labels": s.pod.labels, "ip": str(s.ip) if s.ip else None}
                for s in self.pods.values()
            ],
        }
        write_atomic(os.path.join(self.state_dir, STATE_FILE), json.dumps(data, indent=1))

    @classmethod
    def load(cls, prefix: str, state_root: str = LabSpec.state_root) -> Lab:
        path = os.path.join(lab_state_dir(state_root, prefix), STATE_FILE)
        try:
            with open(path) as f:
                data = json.load(f)
        except FileNotFoundError:
            raise LabError(
                f"no lab {prefix!r} (no {path}); start one with `netweft lab up`") from None
        except (OSError, ValueError) as exc:
            raise LabError(
                f"{path}: unreadable lab state ({exc}); `netweft lab down` removes it") from None
        spec = LabSpec.from_dict(data["spec"])
        nodes = tuple(make_node(spec, i) for i in data["nodes"])
        pods: dict[str, PodState] = {}
        for p in data["pods"]:
            node = next(n for n in nodes if n.name == p["node"])
            pod = make_pod(spec, node, p["index"], p["labels"])
            pods[pod.name] = PodState(pod, IPv4Address(p["ip"]) if p["ip"] else None)
        topo = Topology(spec, nodes, tuple(s.pod for s in pods.values()))
        lab = cls(topo, pods, list(data.get("retired", [])),
                  set(data.get("flannel_nodes", [])))
        lab.migrated = set(data.get("migrated", []))
        if data.get("service"):
            lab.service = ServiceState(**data["service"])
        if data.get("kube"):
            lab.kube = KubePaths.from_dict(data["kube"])
        return lab

    def _set_topology(self, nodes: Sequence[Node] | None = None) -> None:
        self.topo = Topology(self.topo.spec, tuple(nodes if nodes is not None else self.topo.nodes),
                             tuple(s.pod for s in self.pods.values()))

    # ---- build -------------------------------------------------------------------------
    @classmethod
    def up(cls, spec: LabSpec, log: Any = None) -> Lab:
        """Build the whole lab; on any failure remove what was made and raise :class:`LabError`."""
        topo = plan(spec)
        if netns.list_names(f"{spec.prefix}-") or os.path.exists(topo.state_dir):
            raise LabError(f"lab {spec.prefix!r} already exists; `netweft lab down "
                           f"--prefix {spec.prefix}` removes it") from None
        lab = cls(topo)
        say = log or (lambda msg: None)
        try:
            os.makedirs(lab.state_dir)
            lab.save()
            say(f"underlay {topo.underlay_ns}: bridge, {len(topo.nodes)} nodes, etcd, outside")
            underlay.build(topo)
            lab.start_whoami()
            if spec.dataplane == "reference":
                for name, ip in reference.program(topo).items():
                    lab.pods[name] = PodState(next(p for p in topo.pods if p.name == name), ip)
                    say(f"{name}: {ip} (hand-programmed)")
                lab.save()
                return lab
            if spec.kube:
                lab.start_control_plane()
                assert lab.kube is not None
                say(f"Kubernetes control plane at {lab.kube.server} (in {topo.etcd_ns}); "
                    f"RBAC of deploy/kubernetes applied; one Node per lab node")
            else:
                lab.start_etcd()
                say(f"etcd at {topo.etcd_endpoint}; network config at {spec.etcd_prefix}/config")
                lab.etcd.put_retrying(f"{spec.etcd_prefix}/config",
                                      json.dumps(network_config(spec)))
            for node in topo.nodes:
                lab.prepare_node(node)
                lab.register_node(node)
                lab.start_daemon(node)
            for node in topo.nodes:
                lab.wait_daemon_ready(node)
                say(f"{node.name} ({node.ip}): daemon up, subnet {lab.node_subnet(node)}")
            for pod in topo.pods:
                net = lab._add_pod(pod)
                say(f"{pod.name}: {net.address}")
            lab.save()
            if spec.proxy:
                for node in topo.nodes:
                    lab.start_proxy(node)
                lab.create_service()
                assert lab.service is not None
                say(f"service {lab.service.name}: {lab.service.cluster_ip}:{lab.service.port}, "
                    f"NodePort {lab.service.node_port} (netweft proxy on every node)")
                lab.save()
                lab.wait_service()
        except BaseException as exc:
            down(spec.prefix, spec.state_root)
            if isinstance(exc, (LabError, underlay.LabBuildError, runtime.PluginCallError,
                                RuntimeError, OSError)):
                raise LabError(f"lab up failed: {exc}") from exc
            raise
        return lab

    def runs_flanneld(self, node: Node) -> bool:
        return node.name in self.flannel_nodes

    def cni_network(self, node: Node) -> str:
        """The node's CNI network name: Flannel's (``cbr0``) on a node migrated from it."""
        return flannel.FLANNEL_CNI_NAME if node.name in self.migrated else CNI_NETWORK_NAME

    def prepare_node(self, node: Node) -> None:
        """Directories and, for a netweft node, ``netweft cni install``; a flanneld node gets
        its conflist once flanneld wrote subnet.env (:meth:`wait_daemon_ready`)."""
        for d in (node.state_dir, node.cni_bin_dir, node.cni_conf_dir, node.cni_data_dir):
            os.makedirs(d, exist_ok=True)
        if self.runs_flanneld(node):
            return
        proc = subprocess.run(cni_install_command(node, self.cni_network(node)),
                              capture_output=True, text=True)
        if proc.returncode != 0:
            raise LabError(f"cni install for {node.name}: "
                           f"{(proc.stderr or proc.stdout).strip()[:300]}")
        if not os.path.exists(node.conflist_path):
            raise LabError(f"cni install for {node.name} wrote no {node.conflist_path}")

    def start_etcd(self) -> None:
        data_dir = os.path.join(self.state_dir, "etcd")
        os.makedirs(data_dir, exist_ok=True)
        server = EtcdProcess(host=str(ETCD_IP), client_port=ETCD_CLIENT_PORT,
                             netns=self.topo.etcd_ns, data_dir=data_dir,
                             log_path=os.path.join(self.state_dir, "etcd.log"),
                             name=f"{self.topo.prefix}-etcd", stop_with_parent=False)
        server.start()
        assert server.pid is not None
        started = procs.start_time(server.pid)
        procs.write_pidfile(self.pidfile("etcd"), procs.ProcessRecord(server.pid, started or 0))

    def stop_etcd(self, sig: int = signal.SIGTERM) -> None:
        procs.stop(self.pidfile("etcd"), sig=sig)

    def start_control_plane(self) -> None:
        """Kubernetes mode: the real control plane in the control-plane namespace
        (daemon/lab/kube.py), its PIDs recorded; the manifests' RBAC applied; the daemons' and
        proxies' kubeconfigs (service-account tokens) written."""
        from netweft.daemon.lab import kube

        try:
            self.kube, pids = kube.start_control_plane(self.topo)
        finally:
            self.save()
        for name, pid in pids.items():
            procs.write_pidfile(self.pidfile(name),
                                procs.ProcessRecord(pid, procs.start_time(pid) or 0))
        self.save()
        with self.api() as api:
            api.apply_rbac()
            api.write_token_kubeconfig(DAEMON_ACCOUNT, self.kube.daemon_kubeconfig)
            api.write_token_kubeconfig(PROXY_ACCOUNT, self.kube.proxy_kubeconfig)

    def api(self) -> KubeApi:
        """The admin's API client (Kubernetes mode only)."""
        # imported here: lightkube costs ~1 s of start-up that no other `netweft` command
        # should pay (every command loads this module)
        from netweft.daemon.lab import kube

        if self.kube is None:
            raise LabError(f"lab {self.topo.prefix!r} runs no Kubernetes control plane "
                           "(`lab up --control-plane kubernetes`)")
        return kube.KubeApi(self.topo, self.kube)

    def register_node(self, node: Node) -> None:
        """Kubernetes mode: the node's Node object (a kubelet registers it); nothing in etcd
        mode."""
        if self.topo.spec.kube:
            with self.api() as api:
                api.create_node(node.name)

    def start_whoami(self) -> None:
        procs.start(self.topo.outside_ns,
                    [sys.executable, "-m", "netweft.daemon.lab.whoami", "serve",
                     "--port", str(WHOAMI_PORT)],
                    self.pidfile("whoami"), os.path.join(self.state_dir, "whoami.log"))
        if not checks.wait_listening(self.topo.outside_ns, WHOAMI_PORT):
            raise LabError("whoami server on the outside host did not start")

    def start_daemon(self, node: Node) -> procs.ProcessRecord:
        """Start the node's daemon (netweft's, or flanneld on a flanneld node: same PID file);
        a socket left by a killed one is removed first, so the socket's appearance tells that
        the new daemon is serving."""
        if self.daemon_record(node) is not None:
            raise LabError(f"{self.daemon_kind(node)} on {node.name} is already running")
        if self.runs_flanneld(node):
            try:
                build = flannel.load_build()
            except flannel.FlannelMissing as exc:
                raise LabError(str(exc)) from None
            kube_args = (self.kube.daemon_kubeconfig, self.kube.net_conf) if self.kube \
                else (None, None)
            return procs.start(node.netns, flannel.flanneld_command(build.flanneld, self.topo,
                                                                     node, *kube_args),
                               self.pidfile(f"daemon-{node.name}"), node.daemon_log,
                               env=flannel.flanneld_env(node))
        with contextlib.suppress(FileNotFoundError):
            os.unlink(node.cni_socket)
        os.makedirs(node.daemon_state_dir, exist_ok=True)
        return procs.start(node.netns, daemon_command(self.topo, node, self.cni_network(node),
                                                      self.kube),
                           self.pidfile(f"daemon-{node.name}"), node.daemon_log,
                           env=node_env(self.topo, node))

    def start_proxy(self, node: Node) -> procs.ProcessRecord:
        return procs.start(node.netns, proxy_command(self.topo, node, self.kube),
                           self.pidfile(f"proxy-{node.name}"), node.proxy_log,
                           env=node_env(self.topo, node))

    def netweft_in_etcd_ns(self, args: Sequence[str]) -> subprocess.CompletedProcess[str]:
        """Run a ``netweft`` CLI command where the lab's etcd is reachable."""
        return subprocess.run(
            ["ip", "netns", "exec", self.topo.etcd_ns, *netweft_command(),
             "--etcd-endpoints", self.topo.etcd_endpoint,
             "--etcd-prefix", self.topo.spec.etcd_prefix, *args],
            capture_output=True, text=True, timeout=30)

    def create_service(self) -> None:
        """A NodePort service selecting every pod of the lab (label ``lab=<prefix>``), served by
        the whoami server each pod runs: a Kubernetes Service in Kubernetes mode, records in
        etcd (`netweft service create`) otherwise."""
        if self.topo.spec.kube:
            with self.api() as api:
                cluster_ip = api.create_service()
            self.service = ServiceState(SERVICE_NAME, cluster_ip, SERVICE_PORT,
                                        SERVICE_NODE_PORT)
            return
        proc = self.netweft_in_etcd_ns([
            "service", "create", SERVICE_NAME, "--port", f"{SERVICE_PORT}:{WHOAMI_PORT}",
            "--selector", f"lab={self.topo.prefix}", "--type", "NodePort",
            "--node-port", str(SERVICE_NODE_PORT), "--json"])
        if proc.returncode != 0:
            raise LabError(f"service create: {(proc.stderr or proc.stdout).strip()[:300]}")
        record = json.loads(proc.stdout)
        self.service = ServiceState(SERVICE_NAME, record["clusterIP"], SERVICE_PORT,
                                    SERVICE_NODE_PORT)

    def wait_service(self, node: Node | None = None, timeout: float = 30.0) -> None:
        """Wait until the service answers through ``node``'s (default: the first node's)
        NodePort from outside."""
        assert self.service is not None
        node = node or self.topo.nodes[0]
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            proc = subprocess.run(
                ["ip", "netns", "exec", self.topo.outside_ns, sys.executable, "-m",
                 "netweft.daemon.lab.whoami", "ask", str(node.ip),
                 "--port", str(self.service.node_port), "--timeout", "1"],
                capture_output=True, text=True, timeout=15)
            if proc.returncode == 0:
                return
            time.sleep(0.2)
        raise LabError(f"service {self.service.name} does not answer on {node.ip}:"
                       f"{self.service.node_port} after {timeout:.0f}s; see {node.proxy_log}")

    def start_pod_server(self, pod: Pod) -> None:
        procs.start(pod.netns, [sys.executable, "-m", "netweft.daemon.lab.whoami", "serve",
                                "--port", str(WHOAMI_PORT)],
                    self.pidfile(f"whoami-{pod.name}"), "/dev/null")

    def stop_pod_processes(self, pod: Pod) -> None:
        procs.stop(self.pidfile(f"whoami-{pod.name}"))
        procs.kill_netns_processes(pod.netns)

    def daemon_record(self, node: Node) -> procs.ProcessRecord | None:
        record = procs.read_pidfile(self.pidfile(f"daemon-{node.name}"))
        return record if record is not None and procs.is_running(record) else None

    def stop_daemon(self, node: Node, sig: int = signal.SIGTERM) -> None:
        procs.stop(self.pidfile(f"daemon-{node.name}"), sig=sig)

    def daemon_status(self, node: Node) -> dict[str, Any] | None:
        """The daemon's own status file (written after each reconcile), if any."""
        try:
            with open(os.path.join(node.daemon_state_dir, DAEMON_STATUS_FILE)) as f:
                data = json.load(f)
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) else None

    def daemon_kind(self, node: Node) -> str:
        return "flanneld" if self.runs_flanneld(node) else "netweft daemon"

    def _wait_until(self, node: Node, timeout: float, ready: Callable[[procs.ProcessRecord],
                                                                       bool]) -> None:
        """Poll ``ready(record)`` for the node's running daemon; LabError (naming the log) when
        it exits or is not ready within ``timeout`` seconds."""
        kind = self.daemon_kind(node)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            record = self.daemon_record(node)
            if record is None:
                raise LabError(f"{kind} on {node.name} exited; see {node.daemon_log}: "
                               f"{tail(node.daemon_log)}")
            if ready(record):
                return
            time.sleep(0.05)
        raise LabError(f"{kind} on {node.name} not ready after {timeout:.0f}s; "
                       f"see {node.daemon_log}")

    def _subnet_env_written_by(self, node: Node, record: procs.ProcessRecord) -> bool:
        try:
            return os.stat(node.subnet_env).st_mtime >= procs.started_at(record)
        except FileNotFoundError:
            return False

    def _daemon_reported(self, node: Node, record: procs.ProcessRecord) -> bool:
        status = self.daemon_status(node)
        return (os.path.exists(node.subnet_env) and status is not None
                and status.get("pid") == record.pid)

    def wait_daemon_ready(self, node: Node, timeout: float = DAEMON_READY_TIMEOUT) -> None:
        """Wait until this node's running daemon has written subnet.env and reported its first
        reconcile (status file with its PID), then briefly for its CNI socket; fail early if
        the daemon exits. A flanneld node: until flanneld (re)wrote subnet.env; then the
        node's bridge conflist is written from it."""
        if self.runs_flanneld(node):
            self._wait_until(node, timeout, lambda r: self._subnet_env_written_by(node, r))
            try:
                flannel.install_cni(node)
            except (OSError, KeyError, ValueError) as exc:
                raise LabError(f"{node.subnet_env}: no bridge conflist from it: {exc}") from None
            return
        self._wait_until(node, timeout, lambda r: self._daemon_reported(node, r))
        # the CNI request server may come up just after; without it the plugin works in-process
        socket_deadline = time.monotonic() + SOCKET_GRACE
        while not os.path.exists(node.cni_socket) and time.monotonic() < socket_deadline:
            time.sleep(0.05)

    def node_subnet(self, node: Node) -> str | None:
        try:
            with open(node.subnet_env) as f:
                for line in f:
                    if line.startswith("FLANNEL_SUBNET="):
                        return line.split("=", 1)[1].strip()
        except OSError:
            return None
        return None

    def node_network(self, node: Node) -> IPv4Network | None:
        """The node's leased subnet, from its subnet.env."""
        subnet = self.node_subnet(node)
        return IPv4Interface(subnet).network if subnet else None

    def lease_key(self, subnet: IPv4Network) -> str:
        return f"{self.topo.spec.etcd_prefix}/subnets/{subnet.network_address}-{subnet.prefixlen}"

    def node_lease(self, node: Node) -> dict[str, Any] | None:
        """The node's lease value as stored in etcd (None if absent)."""
        subnet = self.node_network(node)
        if subnet is None:
            return None
        raw = self.etcd.get(self.lease_key(subnet))
        return json.loads(raw) if raw else None

    # ---- nodes and pods ----------------------------------------------------------------
    def add_node(self, pods: int | None = None, flanneld: bool = False) -> Node:
        """Join one more node (next free index), start its daemon (flanneld if ``flanneld``)
        and its pods."""
        index = max([n.index for n in self.topo.nodes] + self.retired, default=0) + 1
        node = make_node(self.topo.spec, index)
        if flanneld:
            self.flannel_nodes.add(node.name)
        self._set_topology([*self.topo.nodes, node])
        self.save()
        underlay.attach_host(self.topo.underlay_ns, underlay.node_host(node))
        self.prepare_node(node)
        self.register_node(node)
        self.start_daemon(node)
        self.wait_daemon_ready(node)
        if self.topo.spec.proxy:
            self.start_proxy(node)
        for k in range(1, (self.topo.spec.pods_per_node if pods is None else pods) + 1):
            self.add_pod(node.name, k)
        self.save()
        if self.service is not None:
            self.wait_service(node)
        return node

    def migrate_node(self, name: str) -> None:
        """Swap a flanneld node to netweft's daemon the way an operator does: stop flanneld,
        install netweft's CNI config, start ``netweft daemon`` with the same subnet.env (it
        keeps the subnet and the VTEP MAC of the lease). Running pods keep their wiring."""
        node = self.topo.node(name)
        if not self.runs_flanneld(node):
            raise LabError(f"NODE: {name} does not run flanneld")
        self.stop_daemon(node)
        self.flannel_nodes.discard(name)
        self.migrated.add(name)
        self.save()
        os.unlink(node.conflist_path)  # flannel's bridge conflist: replaced, not chained onto
        self.prepare_node(node)
        self.start_daemon(node)
        self.wait_daemon_ready(node)

    def remove_node(self, name: str) -> None:
        node = self.topo.node(name)
        self.stop_daemon(node)
        procs.stop(self.pidfile(f"proxy-{node.name}"))
        gone = [s for s in self.pods.values() if s.pod.node == name]
        for state in gone:
            self.stop_pod_processes(state.pod)
            netns.delete(state.pod.netns)
            del self.pods[state.pod.name]
        procs.kill_netns_processes(node.netns)
        if self.topo.spec.kube:
            # what the node controller and pod GC do for a node taken away: its pods, then the
            # Node object (peers drop the node from their dataplane when it is deleted)
            with self.api() as api:
                for state in gone:
                    api.delete_pod(state.pod.name)
                api.delete_node(name)
        elif self.topo.spec.proxy:
            # what Kubernetes' node controller does for a dead node: its pods go away, so the
            # service stops sending traffic to them (the daemon that wrote the records is gone)
            self.etcd.delete_prefix(f"{SERVICES_PREFIX}/pods/{node.name}/")
        underlay.detach_node(self.topo, node)
        shutil.rmtree(node.state_dir, ignore_errors=True)
        self.retired.append(node.index)
        self._set_topology([n for n in self.topo.nodes if n.name != name])
        self.save()

    def _runtime_pod(self, pod: Pod) -> Pod:
        """The pod as the runtime side hands it to the node's plugins: on a flanneld node
        without the labels in CNI_ARGS (``NETWEFT_POD_LABELS=a=b,...`` is netweft's convention;
        the reference plugins' CNI_ARGS parser rejects a value holding ``=``)."""
        if self.runs_flanneld(self.topo.node(pod.node)):
            return dataclasses.replace(pod, labels={})
        return pod

    def _add_pod(self, pod: Pod) -> runtime.PodNetwork:
        """Wire ``pod`` through its node's CNI plugins; in Kubernetes mode as a kubelet does:
        the Pod object bound to the node first, its status (IP, Ready) reported after."""
        self.pods[pod.name] = PodState(pod)
        self.save()
        if self.topo.spec.kube:
            with self.api() as api:
                api.create_pod(pod)
        net = runtime.add(self.topo.node(pod.node), self._runtime_pod(pod))
        self.pods[pod.name] = PodState(pod, net.address.ip)
        if self.topo.spec.kube:
            with self.api() as api:
                api.report_pod(pod, str(net.address.ip))
        if self.topo.spec.proxy:
            self.start_pod_server(pod)
        return net

    def add_pod(self, node_name: str, index: int | None = None,
                labels: dict[str, str] | None = None) -> runtime.PodNetwork:
        node = self.topo.node(node_name)
        if index is None:
            used = {int(s.pod.name.rsplit("pod", 1)[1]) for s in self.pods.values()
                    if s.pod.node == node_name}
            index = max(used, default=0) + 1
        pod = make_pod(self.topo.spec, node, index, labels)
        net = self._add_pod(pod)
        self._set_topology()
        self.save()
        return net

    def delete_pod(self, name: str) -> None:
        state = self.pods[name]
        self.stop_pod_processes(state.pod)
        runtime.delete(self.topo.node(state.pod.node), self._runtime_pod(state.pod))
        if self.topo.spec.kube:
            with self.api() as api:
                api.delete_pod(name)
        del self.pods[name]
        self._set_topology()
        self.save()

    def pod_ip(self, name: str) -> IPv4Address:
        ip = self.pods[name].ip
        if ip is None:
            raise LabError(f"pod {name} has no address")
        return ip

    def pod(self, name: str) -> Pod:
        return self.pods[name].pod

    # ---- use ---------------------------------------------------------------------------
    def namespace_of(self, name: str) -> str:
        """Namespace of a node, pod, or one of ``etcd``/``outside``/``underlay``."""
        for node in self.topo.nodes:
            if node.name == name:
                return node.netns
        if name in self.pods:
            return self.pods[name].pod.netns
        infra = {"etcd": self.topo.etcd_ns, "outside": self.topo.outside_ns,
                 "underlay": self.topo.underlay_ns}
        if name in infra:
            return infra[name]
        known = [n.name for n in self.topo.nodes] + list(self.pods) + list(infra)
        raise LabError(f"NODE: no {name!r} in lab {self.topo.prefix!r} (one of {', '.join(known)})")

    def exec(self, name: str, cmd: Sequence[str], **kwargs: Any) -> subprocess.CompletedProcess:
        ns = self.namespace_of(name)
        node = next((n for n in self.topo.nodes if n.netns == ns), None)
        return subprocess.run(["ip", "netns", "exec", ns, *cmd],
                              env=node_env(self.topo, node), **kwargs)

    def addresses(self) -> dict[str, IPv4Address]:
        return {name: s.ip for name, s in self.pods.items() if s.ip is not None}

    def check(self, iperf_seconds: float = 3.0) -> CheckReport:
        probes = checks.plan_probes(self.topo, self.addresses())
        if self.service is not None:
            probes += checks.plan_service_probes(
                self.topo, self.addresses(), IPv4Address(self.service.cluster_ip),
                self.service.port, self.service.node_port)
        results = checks.run_probes(probes)
        throughput = None
        error = None
        pair = checks.iperf_pair(self.topo)
        if pair is not None and iperf_seconds > 0:
            client, server = pair
            try:
                bps = checks.iperf(self.pod(server).netns, self.pod_ip(server),
                                   self.pod(client).netns, seconds=iperf_seconds)
                throughput = checks.Throughput(client, server, bps)
            except (RuntimeError, ValueError, KeyError, subprocess.TimeoutExpired) as exc:
                error = str(exc)
        return CheckReport(self.topo, results, throughput, error)

    def status(self) -> dict[str, Any]:
        nodes = []
        for node in self.topo.nodes:
            record = self.daemon_record(node)
            nodes.append({
                "name": node.name, "netns": node.netns, "ip": str(node.ip),
                "daemon_pid": record.pid if record else None,
                "daemon": "flanneld" if self.runs_flanneld(node) else "netweft",
                "subnet": self.node_subnet(node),
            })
        etcd_record = procs.read_pidfile(self.pidfile("etcd"))
        etcd_up = etcd_record is not None and procs.is_running(etcd_record)
        leases: dict[str, str] = {}
        if etcd_up:
            try:
                leases = self.etcd.get_prefix(f"{self.topo.spec.etcd_prefix}/subnets/")
            except Exception as exc:  # noqa: BLE001 - status reports, never raises
                leases = {"error": str(exc)}
        result: dict[str, Any] = {
            "prefix": self.topo.prefix, "backend": self.topo.spec.backend,
            "control_plane": self.topo.spec.control_plane,
            "state_dir": self.state_dir, "etcd": self.topo.etcd_endpoint,
            "etcd_running": etcd_up, "nodes": nodes,
            "pods": [{"name": s.pod.name, "node": s.pod.node, "netns": s.pod.netns,
                      "ip": str(s.ip) if s.ip else None} for s in self.pods.values()],
            "leases": leases,
            "service": dataclasses.asdict(self.service) if self.service else None,
            "proxies": {n.name: bool(self._running(f"proxy-{n.name}")) for n in self.topo.nodes}
            if self.topo.spec.proxy and self.topo.spec.dataplane == "netweft" else {},
        }
        if self.kube is not None:
            result["kube"] = self.kube_status()
        return result

    def kube_status(self) -> dict[str, Any]:
        """Kubernetes mode: the control plane's processes and, from the API, the Nodes
        (podCIDR, Flannel's annotations, NetworkUnavailable), the pods (IP, Ready) and the
        Services with their ready endpoints. Never raises (an API error is reported)."""
        from netweft.daemon.lab import kube

        assert self.kube is not None
        out: dict[str, Any] = {
            "server": self.kube.server,
            "processes": {name: bool(self._running(name)) for name in KUBE_PROCESSES}}
        try:
            with self.api() as api:
                out["nodes"] = [kube.node_summary(n) for n in api.nodes()]
                out["pods"] = [kube.pod_summary(p) for p in api.pods()]
                slices = api.endpoint_slices()
                out["services"] = [kube.service_summary(s, slices) for s in api.services()]
        except (kube.KubeLabError, LabError) as exc:
            out["error"] = str(exc)
        return out

    def _running(self, name: str) -> procs.ProcessRecord | None:
        record = procs.read_pidfile(self.pidfile(name))
        return record if record is not None and procs.is_running(record) else None


@dataclass(frozen=True)
class CheckReport:
    topo: Topology
    results: list[checks.ProbeResult]
    throughput: checks.Throughput | None
    iperf_error: str | None

    @property
    def ok(self) -> bool:
        return bool(self.results) and all(r.ok for r in self.results) and self.iperf_error is None

    def render(self) -> str:
        lines = [checks.render_matrix(self.topo, self.results), ""]
        lines += checks.summarize(self.results)
        if self.throughput is not None:
            t = self.throughput
            lines.append(f"iperf3 {t.src} -> {t.dst} (across nodes, {self.topo.spec.backend}): "
                         f"{t.gbits:.2f} Gbit/s")
        if self.iperf_error:
            lines.append(f"FAIL iperf3: {self.iperf_error}")
        lines.append("check: " + ("all ok" if self.ok else "FAILED"))
        return "\n".join(lines)


def tail(path: str, lines: int = 3) -> str:
    try:
        with open(path, errors="replace") as f:
            return " | ".join(ln.strip() for ln in f.readlines()[-lines:])
    except OSError:
        return "(no log)"


def down(prefix: str, state_root: str = LabSpec.state_root) -> list[str]:
    """Remove every namespace, process and file of lab ``prefix``; works without (or with a
    broken) state dir. Returns what it removed, for the user."""
    LabSpec(prefix=prefix).validate()
    removed: list[str] = []
    state_dir = lab_state_dir(state_root, prefix)
    pid_dir = os.path.join(state_dir, "pids")
    if os.path.isdir(pid_dir):
        # daemons first (they may tidy up while etcd is still there), etcd last
        # (the Kubernetes control plane: apiserver, controller-manager, then its etcd)
        names = sorted(os.listdir(pid_dir), key=lambda n: (n.startswith(("etcd", "kube-")), n))
        for name in names:
            if name.endswith(".pid") and procs.stop(os.path.join(pid_dir, name), timeout=3.0):
                removed.append(f"process {name[:-4]}")
    namespaces = netns.list_names(f"{prefix}-")
    # pods before nodes before infrastructure: links disappear with their namespace
    namespaces.sort(key=lambda n: (-n.count("-"), n))
    for ns in namespaces:
        killed = procs.kill_netns_processes(ns)
        if killed:
            removed.append(f"{killed} leftover process(es) in {ns}")
        netns.delete(ns)
        removed.append(f"namespace {ns}")
    if os.path.isdir(state_dir):
        shutil.rmtree(state_dir, ignore_errors=True)
        removed.append(f"state {state_dir}")
    return removed


@contextlib.contextmanager
def running(spec: LabSpec) -> Iterator[Lab]:
    """``Lab.up(spec)`` for the duration of a ``with`` block (tests, benchmarks); the lab is
    torn down afterwards, also on failure, and no namespace of it remains."""
    try:
        yield Lab.up(spec)
    finally:
        down(spec.prefix, spec.state_root)
        left = netns.list_names(f"{spec.prefix}-")
        if left:
            raise LabError(f"lab {spec.prefix}: namespaces left after down: {', '.join(left)}")
