"""Start and stop a real etcd server (Debian's ``etcd-server``) for the lab and the tests."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field

ETCD_BINARY = "etcd"


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now (on ``host``)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


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
    binary: str = ETCD_BINARY  # a path, or a name looked up on PATH (Debian's 3.4 by default)
    pid: int | None = None
    _own_data_dir: bool = field(default=False, repr=False)
    _proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def endpoint(self) -> str:
        return f"http://{self.host}:{self.client_port}"

    def start(self, timeout: float = 15.0) -> EtcdProcess:
        if shutil.which(self.binary) is None:
            raise RuntimeError(f"etcd is not installed: {self.binary} not found"
                               " (apt-get install etcd-server, or deploy/controlplane.sh)")
        if not self.client_port:
            self.client_port = free_port() if self.netns is None else 2379
        if not self.peer_port:
            self.peer_port = free_port() if self.netns is None else 2380
        if self.data_dir is None:
            self.data_dir = tempfile.mkdtemp(prefix="netweft-etcd-")
            self._own_data_dir = True
        if self.log_path is None:
            self.log_path = os.path.join(self.data_dir, "etcd.log")
        client = f"http://{self.host}:{self.client_port}"
        peer = f"http://{self.host}:{self.peer_port}"
        cmd = [
            self.binary,
            "--name", self.name,
            "--data-dir", os.path.join(self.data_dir, "member-data"),
            "--listen-client-urls", client,
            "--advertise-client-urls", client,
            "--listen-peer-urls", peer,
            "--initial-advertise-peer-urls", peer,
            "--initial-cluster", f"{self.name}={peer}",
            "--log-level", "warn",
        ]
        if self.netns:
            cmd = ["ip", "netns", "exec", self.netns, *cmd]
        log = open(self.log_path, "ab")  # noqa: SIM115 - handed to the child
        self._proc = subprocess.Popen(
            cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        log.close()
        self.pid = self._proc.pid
        self._wait_ready(timeout)
        return self

    def _wait_ready(self, timeout: float) -> None:
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
                with socket.create_connection((self.host, self.client_port), timeout=1) as sock:
                    sock.sendall(request.encode())
                    sock.settimeout(2)
                    chunks = []
                    while chunk := sock.recv(4096):
                        chunks.append(chunk)
                reply = b"".join(chunks).decode(errors="replace")
            except OSError:
                return False
        return '"health":"true"' in reply.replace(" ", "")

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
