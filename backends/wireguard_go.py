"""wireguard-go, the userspace WireGuard, run and supervised as a child of the daemon.

Where the kernel has no WireGuard (``ip link add ... type wireguard``: "Unknown device type"),
Debian's ``wireguard-go`` makes the same device on a TUN and serves the same configuration
interface on a unix socket (``/run/wireguard/<dev>.sock``, compiled in). The daemon starts it:

- in the node's network namespace (``nsenter --net`` when the daemon programs another one);
- in a private mount namespace where ``<state dir>/wireguard`` is bind-mounted on
  ``/run/wireguard``, so its socket lies under the daemon's state dir (``wireguard_wg`` runs
  ``wg`` the same way);
- in the foreground (``-f``), logging to ``<state dir>/wireguard/<dev>.log``, with the parent
  death signal set (``setpriv --pdeathsig TERM``) so it never outlives a killed daemon.

The device lives as long as the process: when it dies the kernel removes the TUN, the daemon's
netlink listener sees the link go, and the next reconcile starts a new one (``restarts`` counts
them). The private key is on disk, so the new device has the same public key and no peer changes.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import subprocess
import time

from netweft.backends.base import BackendError
from netweft.backends.wireguard_wg import socket_dir_prefix

log = logging.getLogger("netweft.wireguard")


def socket_path(socket_dir: str, dev: str) -> str:
    """wireguard-go's UAPI socket for ``dev`` in ``socket_dir`` (``<dev>.sock``; both programs see
    ``socket_dir`` as ``/run/wireguard`` through ``wireguard_wg.socket_dir_prefix``)."""
    return os.path.join(socket_dir, f"{dev}.sock")


def socket_answers(path: str) -> bool:
    """True when a UAPI server accepts connections on ``path``. A path longer than AF_UNIX
    allows (108 bytes: deep state dirs) is reached through ``/proc/self/fd/<dir fd>/<name>``."""
    try:
        dirfd = os.open(os.path.dirname(path) or ".", os.O_PATH)
    except OSError:
        return False
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(1.0)
    try:
        s.connect(f"/proc/self/fd/{dirfd}/{os.path.basename(path)}")
        return True
    except OSError:
        return False
    finally:
        s.close()
        os.close(dirfd)


class WireGuardGo:
    """One wireguard-go process for device ``dev``; ``start()``, ``alive()``, ``stop()``."""

    def __init__(self, dev: str, socket_dir: str, netns: str | None = None,
                 binary: str = "wireguard-go") -> None:
        self.dev = dev
        self.socket_dir = socket_dir
        self.netns = netns
        self.binary = binary
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    @property
    def socket(self) -> str:
        """The UAPI socket path of our device."""
        return socket_path(self.socket_dir, self.dev)

    @property
    def log_path(self) -> str:
        """Where wireguard-go's output goes (``<socket_dir>/<dev>.log``)."""
        return os.path.join(self.socket_dir, f"{self.dev}.log")

    @property
    def pid(self) -> int | None:
        """The running process's pid, or None before start."""
        return self.proc.pid if self.proc is not None else None

    @property
    def restarts(self) -> int:
        """How many times it was started again after the first start."""
        return max(0, self.starts - 1)

    def command(self) -> list[str]:
        """The argv: wireguard-go in the foreground for ``dev``, killed with its parent (``setpriv
        --pdeathsig``), in ``netns`` when set, with ``socket_dir`` as its ``/run/wireguard`` (a
        private mount namespace)."""
        cmd = ["setpriv", "--pdeathsig", "TERM", "--"]
        if self.netns:
            cmd += ["nsenter", f"--net=/run/netns/{self.netns}"]
        return [*cmd, *socket_dir_prefix(self.socket_dir), self.binary, "-f", self.dev]

    def alive(self) -> bool:
        """Whether the process we started is still running."""
        return self.proc is not None and self.proc.poll() is None

    def start(self, timeout: float = 10.0) -> int:
        """Start wireguard-go and wait (at most ``timeout`` seconds) until its socket answers;
        returns its pid. Raises
        BackendError (with the last line of its log) when it exits or does not answer."""
        if self.alive():
            assert self.proc is not None
            return self.proc.pid
        os.makedirs(self.socket_dir, mode=0o700, exist_ok=True)
        if os.path.exists(self.socket) and not socket_answers(self.socket):
            os.unlink(self.socket)  # left by a process that died
        with open(self.log_path, "ab") as logf:
            try:
                self.proc = subprocess.Popen(self.command(), stdin=subprocess.DEVNULL,
                                             stdout=logf, stderr=subprocess.STDOUT,
                                             env={**os.environ, "LOG_LEVEL": "error"})
            except FileNotFoundError as exc:
                raise BackendError(f"wireguard: {exc.filename} is missing (deploy/setup.sh "
                                   "installs wireguard-go)") from None
        self.starts += 1
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise BackendError(f"wireguard: wireguard-go exited with {self.proc.returncode}: "
                                   f"{self._last_log_line()}")
            if socket_answers(self.socket):
                return self.proc.pid
            time.sleep(0.02)
        self.stop()
        raise BackendError(f"wireguard: wireguard-go did not open {self.socket} within "
                           f"{timeout:.0f}s: {self._last_log_line()}")

    def stop(self, timeout: float = 5.0) -> None:
        """Stop our process (by its pid: SIGTERM, then SIGKILL after ``timeout`` seconds); its
        device goes with it."""
        proc, self.proc = self.proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout)
        with contextlib.suppress(FileNotFoundError):
            if not socket_answers(self.socket):
                os.unlink(self.socket)

    def _last_log_line(self) -> str:
        try:
            with open(self.log_path, encoding="utf-8", errors="replace") as f:
                lines = [line.strip() for line in f if line.strip() and "│" not in line
                         and "─" not in line]
        except OSError:
            return "no log"
        return lines[-1][:200] if lines else "no log output"
