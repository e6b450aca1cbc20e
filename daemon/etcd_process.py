"""Start and stop a real etcd server (Debian's ``etcd-server``) for the lab and the tests."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import time
from dataclasses import dataclass, field

ETCD_BINARY = "etcd"


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now (on ``host``, IPv4 or IPv6)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def url(host: str, port: int, scheme: str = "http") -> str:
    """``http://host:port``, an IPv6 literal in brackets."""
    return f"{scheme}://[{host}]:{port}" if ":" in host else f"{scheme}://{host}:{port}"


@dataclass(frozen=True)
class ServerTls:
    """PEM files of a TLS etcd: its certificate and key, and (``client_ca``) the CA its clients'
    certificates must be signed by (etcd's --client-cert-auth); None: no client certificates.
    ``probe``: (cert, key, ca) a health probe presents."""

    cert: str
    key: str
    client_ca: str | None
    probe: tuple[str | None, str | None, str]


@dataclass
class EtcdProcess:
    """One etcd member, optionally inside a network namespace; stopped by its PID."""

    host: str = "127.0.0.1"
    client_port: int = 0
    peer_port: int = 0
    netns: str | None = None
    data_dir: str | None = None
    log_path: str | None = None
    name: str = "netweft-etcd"
    cluster: str | None = None  # --initial-cluster of a multi-member cluster (None: just this)
    peer_host: str | None = None  # where peers reach it (default: ``host``)
    tls: ServerTls | None = None  # serve clients over TLS
    binary: str = ETCD_BINARY  # a path, or a name looked up on PATH (Debian's 3.4 by default)
    # Stopped (SIGTERM) when the process that started it dies, so a killed test run leaves no
    # etcd behind (setpriv --pdeathsig, as wireguard-go under the daemon). Only the lab, whose
    # etcd outlives `netweft lab up`, turns it off.
    stop_with_parent: bool = True
    pid: int | None = None
    _own_data_dir: bool = field(default=False, repr=False)
    _proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def endpoint(self) -> str:
        return url(self.host, self.client_port, "https" if self.tls else "http")

    @property
    def peer_url(self) -> str:
        return url(self.peer_host or self.host, self.peer_port)

    def start(self, timeout: float = 15.0, wait: bool = True) -> EtcdProcess:
        """Start etcd; with ``wait``, until it is healthy (a member of a new multi-member
        cluster only becomes healthy once a quorum runs: start them all, then wait)."""
        if shutil.which(self.binary) is None:
            raise RuntimeError(f"etcd is not installed: {self.binary} not found"
                               " (apt-get install etcd-server, or deploy/controlplane.sh)")
        if not self.client_port:
            self.client_port = free_port(self.host) if self.netns is None else 2379
        if not self.peer_port:
            self.peer_port = free_port(self.peer_host or self.host) if self.netns is None \
                else 2380
        if self.data_dir is None:
            self.data_dir = tempfile.mkdtemp(prefix="netweft-etcd-")
            self._own_data_dir = True
        if self.log_path is None:
            self.log_path = os.path.join(self.data_dir, "etcd.log")
        client = self.endpoint
        peer = self.peer_url
        cmd = [
            self.binary,
            "--name", self.name,
            "--data-dir", os.path.join(self.data_dir, "member-data"),
            "--listen-client-urls", client,
            "--advertise-client-urls", client,
            "--listen-peer-urls", peer,
            "--initial-advertise-peer-urls", peer,
            "--initial-cluster", self.cluster or f"{self.name}={peer}",
            "--log-level", "warn",
        ]
        if self.tls is not None:
            cmd += ["--cert-file", self.tls.cert, "--key-file", self.tls.key]
            if self.tls.client_ca is not None:
                cmd += ["--client-cert-auth", "--trusted-ca-file", self.tls.client_ca]
        if self.netns:
            cmd = ["ip", "netns", "exec", self.netns, *cmd]
        if self.stop_with_parent:
            cmd = ["setpriv", "--pdeathsig", "TERM", "--", *cmd]
        log = open(self.log_path, "ab")  # noqa: SIM115 - handed to the child
        self._proc = subprocess.Popen(
            cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        log.close()
        self.pid = self._proc.pid
        if wait:
            self.wait_ready(timeout)
        return self

    def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc is not None and self._proc.poll() is not None:
                raise RuntimeError(f"etcd exited early; see {self.log_path}")
            if self.healthy():
                return
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"etcd did not become healthy in {timeout:.0f}s; see {self.log_path}")

    def healthy(self) -> bool:
        """True once etcd answers ``/health`` with ``"health":"true"`` (it has a leader and
        serves requests; an open port alone is not enough)."""
        request = f"GET /health HTTP/1.0\r\nHost: {self.host}\r\n\r\n"
        if self.netns:
            script = (f"exec 3<>/dev/tcp/{self.host}/{self.client_port} || exit 1; "
                      f"printf '{request}' >&3; timeout 2 cat <&3")
            proc = subprocess.run(["ip", "netns", "exec", self.netns, "bash", "-c", script],
                                  capture_output=True, text=True, timeout=10)
            reply = proc.stdout
        else:
            try:
                with socket.create_connection((self.host, self.client_port), timeout=1) as raw:
                    sock = raw
                    if self.tls is not None:
                        cert, key, ca = self.tls.probe
                        ctx = ssl.create_default_context(cafile=ca)
                        if cert is not None:
                            ctx.load_cert_chain(cert, key)
                        sock = ctx.wrap_socket(raw, server_hostname=self.host)
                    sock.sendall(request.encode())
                    sock.settimeout(2)
                    chunks = []
                    while chunk := sock.recv(4096):
                        chunks.append(chunk)
                reply = b"".join(chunks).decode(errors="replace")
            except OSError:  # ssl.SSLError is one
                return False
        return '"health":"true"' in reply.replace(" ", "")

    def kill(self) -> None:
        """SIGKILL by PID, as a crash (no graceful leave); the data dir stays."""
        if self._proc is not None and self._proc.poll() is None:
            os.kill(self._proc.pid, signal.SIGKILL)
            self._proc.wait()
        self._proc = None

    def stop(self) -> None:
        """SIGTERM then SIGKILL, by PID; the data dir stays (see :meth:`remove`)."""
        if self._proc is None:
            return
        if self._proc.poll() is None:
            os.kill(self._proc.pid, signal.SIGTERM)
            try:
                self._proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                os.kill(self._proc.pid, signal.SIGKILL)
                self._proc.wait()
        self._proc = None

    def restart(self, timeout: float = 15.0) -> None:
        self.stop()
        self.start(timeout)

    def remove(self) -> None:
        self.stop()
        if self._own_data_dir and self.data_dir:
            shutil.rmtree(self.data_dir, ignore_errors=True)


@dataclass
class EtcdCluster:
    """A real multi-member etcd cluster on this host: member ``i`` serves clients on
    ``hosts[i]`` (a loopback address, IPv4 or IPv6) and talks to its peers over 127.0.0.1."""

    members: list[EtcdProcess]

    @classmethod
    def start(cls, hosts: list[str], timeout: float = 30.0) -> EtcdCluster:
        members = [EtcdProcess(host=h, name=f"m{i}", peer_host="127.0.0.1",
                               peer_port=free_port("127.0.0.1"), client_port=free_port(h))
                   for i, h in enumerate(hosts)]
        spec = ",".join(f"{m.name}={m.peer_url}" for m in members)
        cluster = cls(members)
        try:
            for m in members:
                m.cluster = spec
                m.start(wait=False)
            for m in members:
                m.wait_ready(timeout)
        except BaseException:
            cluster.remove()
            raise
        return cluster

    def leader(self) -> EtcdProcess:
        """The member that is leader now (asked with Debian's ``etcdctl endpoint status``)."""
        alive = [m for m in self.members if m.pid is not None and m._proc is not None]
        out = subprocess.run(
            ["etcdctl", "--endpoints", ",".join(m.endpoint for m in alive), "endpoint",
             "status", "-w", "json"], capture_output=True, text=True, timeout=30,
            env={**os.environ, "ETCDCTL_API": "3"}, check=True).stdout
        for entry in json.loads(out):
            status = entry["Status"]
            if status["header"]["member_id"] == status["leader"]:
                return next(m for m in alive if m.endpoint == entry["Endpoint"])
        raise RuntimeError("no member says it is the leader")

    def remove(self) -> None:
        for m in self.members:
            m.remove()
