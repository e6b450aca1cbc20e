"""Run the real kube-proxy (built by deploy/controlplane.sh) inside a node network namespace.

Used by the side-by-side behaviour tests (tests/proxy/test_proxy_vs_kubeproxy.py) and the benchmarks
that measure netweft's proxy against kube-proxy (bench/): both import :class:`KubeProxy`.

How it is kept inside its namespace (nothing here touches the root namespace):

- The process is ``unshare --mount --propagation private nsenter --net=/run/netns/NS`` + a fresh
  read-only sysfs mounted in that private mount namespace, then ``exec kube-proxy``: its netlink,
  nftables/iptables, ``/proc/sys/net`` (per network namespace, writable) and ``/sys/class/net``
  all are the node's, and no write can reach the host's global ``/sys``. Every exec keeps the PID:
  the PID we hold is kube-proxy's, and it is stopped by that PID (SIGTERM, then SIGKILL).
- Its KubeProxyConfiguration (v1alpha1, written as JSON) leaves every global knob alone: the
  conntrack table size (``conntrack.maxPerCore: 0``, else kube-proxy writes the host-wide
  ``nf_conntrack_max`` and ``/sys/module/nf_conntrack/parameters/hashsize``) and the conntrack
  timeouts (0 = leave as is). Healthz and metrics listen on ports of our choosing inside the
  namespace.
- The apiserver of the tests listens on the host's loopback; :class:`NsRelay` (daemon/nsrelay.py)
  serves that same ``127.0.0.1:port`` inside the namespace, so the kubeconfig's URL and TLS name
  stay valid.

Errors: :class:`KubeProxyError` (one line; names the log file when kube-proxy died).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import socket
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from netweft.cni import nsenter
from netweft.daemon.controlplane import (
    ControlPlane,
    ControlPlaneBinaries,
    ControlPlaneError,
    Process,
)
from netweft.daemon.nsrelay import NsRelay

MODES = ("nftables", "iptables")
SYNC_METRIC = "kubeproxy_sync_proxy_rules_last_timestamp_seconds"

# kubeadm's identity for kube-proxy: a service account bound to the built-in node-proxier role
# (what kube-proxy reads and the events it writes).
_RBAC = json.dumps({"apiVersion": "v1", "kind": "List", "items": [
    {"apiVersion": "v1", "kind": "ServiceAccount",
     "metadata": {"name": "kube-proxy", "namespace": "kube-system"}},
    {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
     "metadata": {"name": "netweft-kube-proxy"},
     "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                 "name": "system:node-proxier"},
     "subjects": [{"kind": "ServiceAccount", "name": "kube-proxy",
                   "namespace": "kube-system"}]},
]})


class KubeProxyError(RuntimeError):
    """kube-proxy is not built, did not start, or died (message: one line)."""


@dataclass(frozen=True)
class KubeProxySettings:
    """What one kube-proxy is told. ``node_ip``: its primary node IP (``bindAddress``; our test
    Nodes carry no addresses to detect it from); ``cluster_cidr``: the pod range
    (``detectLocalMode: ClusterCIDR``, as netweft's ``--cluster-cidr``); ports: inside the
    namespace; sync periods in seconds (kube-proxy's defaults; it turns 0 into them, so "sync
    at once" is a small value such as 0.001); ``extra``: more KubeProxyConfiguration fields,
    merged over the document (e.g. ``{"nodePortAddresses": ["primary"]}``)."""

    node_name: str
    node_ip: str
    kubeconfig: Path
    mode: str = "nftables"
    cluster_cidr: str = "10.244.0.0/16"
    healthz_port: int = 10256
    metrics_port: int = 10249
    min_sync_period: float = 1.0
    sync_period: float = 30.0
    verbosity: int = 2
    extra: dict[str, object] = field(default_factory=dict)


def config_document(settings: KubeProxySettings) -> dict[str, object]:
    """The KubeProxyConfiguration (kubeproxy.config.k8s.io/v1alpha1) for ``settings``; raises
    KubeProxyError for an unknown mode."""
    if settings.mode not in MODES:
        raise KubeProxyError(f"mode: {settings.mode!r} is not one of {', '.join(MODES)}")
    periods = {"minSyncPeriod": _duration(settings.min_sync_period),
               "syncPeriod": _duration(settings.sync_period)}
    doc: dict[str, object] = {
        "apiVersion": "kubeproxy.config.k8s.io/v1alpha1", "kind": "KubeProxyConfiguration",
        "mode": settings.mode,
        "hostnameOverride": settings.node_name,
        "bindAddress": settings.node_ip,
        "clusterCIDR": settings.cluster_cidr,
        "detectLocalMode": "ClusterCIDR",
        "clientConnection": {"kubeconfig": str(settings.kubeconfig), "qps": 50, "burst": 100},
        "healthzBindAddress": f"0.0.0.0:{settings.healthz_port}",
        "metricsBindAddress": f"127.0.0.1:{settings.metrics_port}",
        # leave the host-wide conntrack size and the conntrack timeouts alone
        "conntrack": {"maxPerCore": 0, "min": 0, "tcpEstablishedTimeout": "0s",
                      "tcpCloseWaitTimeout": "0s"},
        "iptables": dict(periods), "nftables": dict(periods),
        "logging": {"verbosity": settings.verbosity},
    }
    doc.update(settings.extra)
    return doc


def _duration(seconds: float) -> str:
    """A Go duration in whole microseconds (``"1500000us"``)."""
    return f"{round(seconds * 1_000_000)}us"


def command(binary: str, netns: str, config_path: Path) -> list[str]:
    """The argv: a private mount namespace, the node's network namespace, a read-only sysfs of
    that namespace, then kube-proxy (every step execs: the PID stays kube-proxy's)."""
    return ["unshare", "--mount", "--propagation", "private",
            "nsenter", f"--net=/run/netns/{netns}", "--",
            "sh", "-c", 'mount -t sysfs -o ro sysfs /sys && exec "$@"', "kube-proxy",
            binary, f"--config={config_path}"]


def http_get_in_netns(netns: str, port: int, path: str, timeout: float = 5.0,
                      ) -> tuple[int, str]:
    """GET ``http://127.0.0.1:port/path`` from inside ``netns`` (the socket is made there);
    (status, body); (0, "") when nothing answers."""
    fd = nsenter.open_netns(os.path.join("/run/netns", netns))
    try:
        with nsenter.entered(fd):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    finally:
        os.close(fd)
    with sock:
        sock.settimeout(timeout)
        try:
            sock.connect(("127.0.0.1", port))
            sock.sendall(f"GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n".encode())
            chunks = []
            while data := sock.recv(65536):
                chunks.append(data)
        except OSError:
            return 0, ""
    head, _, body = b"".join(chunks).partition(b"\r\n\r\n")
    match = re.match(rb"HTTP/\S+ (\d+)", head)
    return (int(match.group(1)) if match else 0), body.decode(errors="replace")


def metric(text: str, name: str, **labels: str) -> float | None:
    """The value of the first Prometheus sample ``name`` in ``text`` carrying every label
    given (``metric(text, SYNC_METRIC, ip_family="IPv4")``); None if there is none."""
    wanted = [f'{key}="{value}"' for key, value in labels.items()]
    for match in re.finditer(rf"^{re.escape(name)}(?:{{([^}}]*)}})? (\S+)$", text, re.MULTILINE):
        if all(label in (match.group(1) or "") for label in wanted):
            return float(match.group(2))
    return None


def node_with_address(plane: ControlPlane, name: str, ip: str) -> None:
    """Make Node ``name`` (if missing) and report ``ip`` as its InternalIP in its status, as a
    kubelet does: kube-proxy takes its node IPs from there and waits 30 s at start for them
    (pkg/proxy/node.go), and exits when they change later. Raises ControlPlaneError."""
    plane.kubectl("apply", "-f", "-", input=json.dumps(
        {"apiVersion": "v1", "kind": "Node", "metadata": {"name": name}}))
    plane.kubectl("patch", "node", name, "--subresource=status", "--type=merge", "-p",
                  json.dumps({"status": {"addresses": [{"type": "InternalIP", "address": ip},
                                                       {"type": "Hostname", "address": name}]}}))


def proxier_kubeconfig(plane: ControlPlane, path: Path, duration: str = "24h") -> Path:
    """A kubeconfig at ``path`` for kube-proxy as kubeadm sets it up: service account
    ``kube-system/kube-proxy`` bound to ClusterRole ``system:node-proxier`` (made if missing),
    with a bound token of that account. Raises ControlPlaneError from kubectl."""
    plane.kubectl("apply", "-f", "-", input=_RBAC)
    return plane.token_kubeconfig("kube-system", "kube-proxy", path, duration=duration)


@dataclass
class KubeProxy:
    """One real kube-proxy in network namespace ``netns``.

    ``KubeProxy(netns, settings, relay_port=plane.port).start()`` then :meth:`wait_synced`;
    :meth:`stop` stops it by PID and closes the relay. ``relay_port``: a host-loopback port
    (the apiserver's) to serve at the same port inside the namespace; None: no relay.
    ``workdir``: where the config and ``kube-proxy.log`` go (a temporary directory if None)."""

    netns: str
    settings: KubeProxySettings
    relay_port: int | None = None
    workdir: Path | None = None
    binary: str | None = None
    process: Process | None = None
    relay: NsRelay | None = None

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    @property
    def log_path(self) -> Path:
        assert self.workdir is not None
        return self.workdir / "kube-proxy.log"

    def start(self) -> KubeProxy:
        """Write the config, start the relay and kube-proxy. Raises KubeProxyError (having
        stopped what it started) when kube-proxy is not built or cannot start."""
        try:
            binaries = ControlPlaneBinaries.find()
            binary = self.binary or binaries.require(binaries.kube_proxy)
        except ControlPlaneError as exc:
            raise KubeProxyError(str(exc)) from None
        if self.workdir is None:
            self.workdir = Path(tempfile.mkdtemp(prefix=f"netweft-kube-proxy-{self.netns}-"))
        config = self.workdir / "kube-proxy.json"
        config.write_text(json.dumps(config_document(self.settings), indent=1))
        try:
            if self.relay_port is not None:
                self.relay = NsRelay(self.netns, self.relay_port).start()
            self.process = Process("kube-proxy", command(binary, self.netns, config),
                                   self.log_path)
            self.process.start()
        except BaseException:
            self.stop()
            raise
        return self

    def running(self) -> bool:
        return self.process is not None and self.process.running()

    def check_alive(self) -> None:
        """Raise KubeProxyError (with the log's last lines) if kube-proxy has exited."""
        if self.process is None:
            raise KubeProxyError("kube-proxy was not started")
        try:
            self.process.check_alive()
        except ControlPlaneError as exc:
            raise KubeProxyError(str(exc)) from None

    def metrics(self) -> str:
        """Its Prometheus metrics text ("" while it does not answer)."""
        status, body = http_get_in_netns(self.netns, self.settings.metrics_port, "/metrics")
        return body if status == 200 else ""

    def last_sync(self) -> float:
        """Wall-clock time (s since the epoch) of its last successful rules sync; 0 if none."""
        return metric(self.metrics(), SYNC_METRIC, ip_family="IPv4") or 0.0

    def wait_synced(self, after: float = 0.0, timeout: float = 120.0) -> None:
        """Wait until kube-proxy has synced its rules at a wall-clock time later than ``after``
        (0: any first sync). Raises KubeProxyError if it dies or ``timeout`` s pass."""
        deadline = time.monotonic() + timeout
        while True:
            self.check_alive()
            if self.last_sync() > after:
                return
            if time.monotonic() > deadline:
                raise KubeProxyError(f"kube-proxy in {self.netns} did not sync within "
                                     f"{timeout:.0f}s; see {self.log_path}")
            time.sleep(0.2)

    def stop(self) -> None:
        """Stop kube-proxy by its PID and close the relay (its rules stay in the namespace,
        which its owner deletes)."""
        if self.process is not None:
            self.process.stop()
        if self.relay is not None:
            with contextlib.suppress(OSError):
                self.relay.stop()
            self.relay = None
