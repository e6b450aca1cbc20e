"""The CNI server: a long-lived process (or a thread of the node daemon) that runs CNI requests
handed over by the executable on a unix socket, with the node's state kept warm.

Embedding (the node daemon)::

    server = CniServer("/run/netweft/cni.sock", hooks=CniHooks(on_add=..., on_del=...))
    server.start()          # binds (0600, root only) and serves in a background thread
    ...
    server.stats()          # {"ADD": CommandStats(count, errors, seconds_total, seconds_max)...}
    server.stop()           # stops serving and removes the socket

or ``server.serve_forever()`` to block (``netweft cni-server``). Hooks run in the request's
worker thread *after* the reply was sent, so they never add to pod start-up latency; an
exception in a hook is logged and ignored. The server must run in the node's network namespace
(the host side of every pod it wires is created there).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import socket
import struct
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, replace

from netweft.cni import callerns, tcpwire
from netweft.cni.config import DEFAULT_LOG_FILE, DEFAULT_SOCKET_PATH
from netweft.cni.peeruid import tcp_peer
from netweft.cni.plugin import PluginResult, PodInfo, WiringState, _log, run
from netweft.cni.shim import DEFAULT_LOG_KEY, MAGIC
from netweft.cni.spec import ERR_INVALID_ENV, CniError, dumps

MAX_REQUEST = 4 * 1024 * 1024
MAX_TCP_HEADER = 64 * 1024
TCP_READ_TIMEOUT = 2.0  # an authentic request arrives at once; anything slower is dropped
DEFAULT_TCP_PORT = tcpwire.DEFAULT_TCP_PORT
default_token_file = tcpwire.default_token_file


@dataclass
class CniHooks:
    """Callbacks the daemon gives the server, called after a successful ADD or DEL with the pod (in
    a server thread; an exception is logged, never fails the request)."""

    on_add: Callable[[PodInfo], None] | None = None
    on_del: Callable[[PodInfo], None] | None = None


@dataclass
class CommandStats:
    """Per-command totals since start: requests, those that failed, and their durations in seconds
    (sum and maximum)."""

    count: int = 0
    errors: int = 0
    seconds_total: float = 0.0
    seconds_max: float = 0.0


def _handle(owner: CniServer, sock: socket.socket) -> None:
    """One request on the unix socket: the peer must be an allowed uid (SO_PEERCRED)."""
    started = time.monotonic()
    try:
        pid, uid, _gid = struct.unpack("3i", sock.getsockopt(
            socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i")))
        if uid not in owner.allowed_uids:
            err = CniError(ERR_INVALID_ENV, f"uid {uid} may not use the netweft CNI server")
            body = dumps(err.to_dict("1.1.0")).encode()
            sock.sendall(b"1 %d\n" % len(body) + body)
            return
        env, stdin = _read_request(sock)
    except (OSError, ValueError) as exc:
        _log(owner.default_log, f"cni-server: bad request: {exc}")
        return
    env.pop(callerns.CALLER_PID_KEY, None)  # the kernel's word (SO_PEERCRED) is the one used
    _serve(owner, sock, env, stdin, started, "server", pid or None)


def _handle_tcp(owner: CniServer, sock: socket.socket) -> None:
    """One request on the loopback TCP listener (the bash launcher's fast path): the peer's
    socket must belong to an allowed uid (the kernel's socket table: SO_PEERCRED's TCP
    equivalent) and the request must start with the token; anything else is dropped without a
    reply. The caller's pid (for ``CNI_NETNS``, :mod:`cni.callerns`) is the one the launcher
    sends, if that process holds the peer socket."""
    started = time.monotonic()
    try:
        peer = tcp_peer(sock)
        uid = None if peer is None else peer[0]
        if peer is None or uid not in owner.allowed_uids:
            raise ValueError(f"peer uid {uid} may not use the netweft CNI server")
        sock.settimeout(TCP_READ_TIMEOUT)
        env, stdin = read_tcp_request(sock, owner.token)
        sock.settimeout(None)
    except (OSError, ValueError) as exc:
        _log(owner.default_log, f"cni-server: tcp request dropped: {exc}")
        return
    pid = callerns.parse_pid(env.pop(callerns.CALLER_PID_KEY, None))
    if pid is not None and not callerns.pid_holds_socket(pid, peer[1]):
        _log(owner.default_log, f"cni-server: caller pid {pid} does not hold the peer socket "
                                "(another pid namespace?): CNI_NETNS is opened as given")
        pid = None
    _serve(owner, sock, env, stdin, started, "tcp", pid)


def _serve(owner: CniServer, sock: socket.socket, env: dict[str, str], stdin: bytes,
           started: float, via: str, caller_pid: int | None) -> None:
    """Run the request and send the reply: the same for both listeners (``via`` is logged;
    ``caller_pid``: the verified pid of the launcher, whose mount namespace CNI_NETNS is
    resolved in)."""
    default_log = env.pop(DEFAULT_LOG_KEY, owner.default_log)
    outcome = run(env, stdin, owner.state, default_log=default_log, via=via,
                  caller_pid=caller_pid)
    with contextlib.suppress(OSError):
        body = outcome.stdout.encode()
        sock.sendall(b"%d %d\n" % (outcome.code, len(body)) + body)
        sock.shutdown(socket.SHUT_RDWR)
    owner._account(outcome, time.monotonic() - started)
    owner._notify(outcome, default_log)


def _read_request(sock: socket.socket) -> tuple[dict[str, str], bytes]:
    data = b""
    while b"\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise ValueError("connection closed before the request header")
        data += chunk
        if len(data) > MAX_REQUEST:
            raise ValueError("request header too long")
    head, _, rest = data.partition(b"\n")
    parts = head.split(b" ")
    if len(parts) != 3 or parts[0] != MAGIC:
        raise ValueError(f"unknown request header {head[:40]!r}")
    env_len, stdin_len = int(parts[1]), int(parts[2])
    if env_len + stdin_len > MAX_REQUEST:
        raise ValueError("request too large")
    while len(rest) < env_len + stdin_len:
        chunk = sock.recv(65536)
        if not chunk:
            raise ValueError("connection closed in the middle of the request")
        rest += chunk
    env: dict[str, str] = {}
    for item in rest[:env_len].split(b"\0"):
        if item:
            key, _, value = item.decode("utf-8", "replace").partition("=")
            env[key] = value
    return env, rest[env_len:env_len + stdin_len]


def read_tcp_request(sock: socket.socket, token: bytes) -> tuple[dict[str, str], bytes]:
    """Parse one TCP request (see :mod:`cni.tcpwire`); ValueError when it is not authentic."""
    buf = b""
    while True:
        end = buf.find(b"\n\n")
        if end >= 0:
            break
        if len(buf) > MAX_TCP_HEADER:
            raise ValueError("request header too long")
        chunk = sock.recv(65536)
        if not chunk:
            raise ValueError("connection closed before the request header")
        buf += chunk
        if b"\n" in buf and not tcpwire.token_ok(buf.partition(b"\n")[0], token):
            raise ValueError("bad token")
    head, rest = buf[:end], buf[end + 2:]
    lines = head.split(b"\n")
    if not tcpwire.token_ok(lines[0], token):
        raise ValueError("bad token")
    env, length = tcpwire.parse_header(lines[1:])
    if length > MAX_REQUEST:
        raise ValueError("request too large")
    while len(rest) < length:
        chunk = sock.recv(65536)
        if not chunk:
            raise ValueError("connection closed in the middle of the request")
        rest += chunk
    return env, rest[:length]


class CniServer:
    """The CNI request server in the daemon: runs :func:`netweft.cni.plugin.run` for the launcher's
    requests over a unix socket (peer credentials checked against ``allowed_uids``) and, when
    ``tcp_port`` is not 0, a loopback TCP port with a token (``tcpwire``), in ``workers`` threads.
    Results are byte-identical to the in-process path."""

    def __init__(self, socket_path: str = DEFAULT_SOCKET_PATH, hooks: CniHooks | None = None,
                 default_log: str = DEFAULT_LOG_FILE,
                 allowed_uids: tuple[int, ...] | None = None, workers: int = 16,
                 tcp_port: int = DEFAULT_TCP_PORT, token_file: str | None = None) -> None:
        self.socket_path = socket_path
        self.tcp_port = tcp_port
        self.token_file = token_file or default_token_file(socket_path)
        self.token = b""
        self.tcp_error = ""  # why the TCP listener is not up (the launcher then uses the socket)
        self._tcp_listener: socket.socket | None = None
        self.hooks = hooks or CniHooks()
        self.default_log = default_log
        self.allowed_uids = allowed_uids or tuple({0, os.getuid()})
        self.state = WiringState()
        self._stats: dict[str, CommandStats] = {}
        self._stats_lock = threading.Lock()
        self.workers = workers
        self._listener: socket.socket | None = None
        self._threads: list[threading.Thread] = []
        self._stopping = threading.Event()

    # -- lifecycle ------------------------------------------------------------------------
    def bind(self) -> None:
        """Create the listening socket (mode 0600); a stale socket file is replaced, a live
        server on the same path is an error. (pyroute2 is not loaded here: ADD and DEL never
        use it, only CHECK does, and it cost the daemon ~10 MiB of RSS; issue 12.)"""
        directory = os.path.dirname(self.socket_path) or "."
        os.makedirs(directory, mode=0o755, exist_ok=True)
        if os.path.exists(self.socket_path):
            probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                probe.connect(self.socket_path)
            except OSError:
                os.unlink(self.socket_path)
            else:
                raise OSError(f"another CNI server is listening on {self.socket_path}")
            finally:
                probe.close()
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        old = os.umask(0o177)
        try:
            listener.bind(self.socket_path)
        finally:
            os.umask(old)
        os.chmod(self.socket_path, 0o600)
        listener.listen(256)
        self._listener = listener
        if self.tcp_port:
            self.bind_tcp()

    def bind_tcp(self) -> None:
        """Listen on 127.0.0.1:<tcp_port> (a privileged port: only root can bind it) and write
        a fresh token (0600) the launcher must present. Failure is not fatal: the launcher
        then falls back to the unix socket; the reason is kept in ``tcp_error`` and logged."""
        if not 0 < self.tcp_port < 1024:
            raise ValueError(f"tcp_port {self.tcp_port}: must be a privileged port (1-1023)")
        if self.tcp_port >= tcpwire.unprivileged_port_start():
            self.tcp_error = (f"127.0.0.1:{self.tcp_port}: not a privileged port here "
                              "(net.ipv4.ip_unprivileged_port_start)")
            _log(self.default_log, f"cni-server: TCP fast path disabled: {self.tcp_error}")
            return
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        try:
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            listener.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            listener.bind(("127.0.0.1", self.tcp_port))
            listener.listen(256)
            token = secrets.token_hex(32)
            tcpwire.write_token(self.token_file, token)
        except OSError as exc:
            listener.close()
            self.tcp_error = f"127.0.0.1:{self.tcp_port}: {exc.strerror or exc}"
            _log(self.default_log, f"cni-server: TCP fast path disabled: {self.tcp_error}")
            return
        self.token = token.encode()
        self._tcp_listener = listener

    def serve_forever(self) -> None:
        """Serve until :meth:`stop` (from another thread or a signal handler)."""
        if not self._threads:
            if self._listener is None:
                self.bind()
            self.start_bound()
        self._stopping.wait()

    def start(self) -> CniServer:
        """Bind and serve in daemon threads; returns once requests are accepted."""
        self.bind()
        return self.start_bound()

    def start_bound(self) -> CniServer:
        """Serve an already bound socket: a pool of threads blocked in ``accept()``, so a
        request wakes exactly one thread (no accept-then-dispatch hop: on a busy node every
        extra wake-up is a scheduling delay added to the pod's start)."""
        self._stopping.clear()
        for i in range(self.workers):
            t = threading.Thread(target=self._worker, name=f"netweft-cni-{i}", daemon=True,
                                 args=(self._listener, _handle))
            t.start()
            self._threads.append(t)
        if self._tcp_listener is not None:  # its own pool: unauthenticated peers can't starve
            for i in range(self.workers):   # the unix socket's workers
                t = threading.Thread(target=self._worker, name=f"netweft-cni-tcp-{i}",
                                     daemon=True, args=(self._tcp_listener, _handle_tcp))
                t.start()
                self._threads.append(t)
        return self

    def _worker(self, listener: socket.socket | None,
                handle: Callable[[CniServer, socket.socket], None]) -> None:
        while listener is not None and not self._stopping.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:
                if self._stopping.is_set():
                    return
                time.sleep(0.01)
                continue
            try:
                handle(self, conn)
            except Exception:  # noqa: BLE001 - one bad request must not kill a worker
                _log(self.default_log, f"cni-server: request failed:\n{traceback.format_exc()}")
            finally:
                conn.close()

    def stop(self) -> None:
        """Stop accepting, close the listeners and join the threads (at most 10 s each)."""
        self._stopping.set()
        for listener in (self._listener, self._tcp_listener):
            if listener is not None:
                with contextlib.suppress(OSError):
                    listener.shutdown(socket.SHUT_RDWR)  # wakes the threads blocked in accept()
                listener.close()
        self._listener = self._tcp_listener = None
        for t in self._threads:
            t.join(timeout=10)
        self._threads = []
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.socket_path)
        if self.token:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.token_file)
            self.token = b""

    # -- numbers for the daemon's metrics -----------------------------------------------
    def stats(self) -> dict[str, CommandStats]:
        """A copy of the per-command :class:`CommandStats` (command -> stats)."""
        with self._stats_lock:
            return {k: replace(v) for k, v in self._stats.items()}

    def _account(self, outcome: PluginResult, seconds: float) -> None:
        with self._stats_lock:
            s = self._stats.setdefault(outcome.command or "?", CommandStats())
            s.count += 1
            s.errors += 1 if outcome.code else 0
            s.seconds_total += seconds
            s.seconds_max = max(s.seconds_max, seconds)

    def _notify(self, outcome: PluginResult, log_file: str) -> None:
        if outcome.code or outcome.pod is None:
            return
        hook = self.hooks.on_add if outcome.pod.command == "ADD" else self.hooks.on_del
        if hook is None:
            return
        try:
            hook(outcome.pod)
        except Exception:  # noqa: BLE001 - a hook must never break the CNI server
            _log(log_file, f"cni-server: {outcome.pod.command} hook failed:\n"
                           f"{traceback.format_exc()}")


def main(argv: list[str] | None = None) -> None:
    """``python -m netweft.cni.server --socket-path P [--log-file F]`` (what ``netweft cni-server``
    runs): serve until SIGTERM/SIGINT."""
    import argparse
    import signal

    parser = argparse.ArgumentParser(prog="netweft cni-server")
    parser.add_argument("--socket-path", default=DEFAULT_SOCKET_PATH)
    parser.add_argument("--log-file", default=DEFAULT_LOG_FILE)
    parser.add_argument("--tcp-port", type=int, default=DEFAULT_TCP_PORT,
                        help="loopback port of the bash launcher's fast path (<1024; 0: off)")
    parser.add_argument("--token-file", default=None,
                        help="where the TCP token is written (default: next to the socket)")
    opts = parser.parse_args(argv)
    if not 0 <= opts.tcp_port < 1024:
        parser.error(f"--tcp-port {opts.tcp_port}: must be 0 (off) or a privileged port < 1024")
    # a dedicated process: hand the GIL over quickly so concurrent requests interleave finely
    import sys

    sys.setswitchinterval(0.0005)
    server = CniServer(opts.socket_path, default_log=opts.log_file, tcp_port=opts.tcp_port,
                       token_file=opts.token_file)
    try:
        server.bind()
    except OSError as exc:
        raise SystemExit(f"netweft cni-server: {exc.strerror or exc}") from None
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    server.start_bound()
    print(f"netweft cni-server listening on {opts.socket_path}", flush=True)
    if server.tcp_port and server.token:
        print(f"netweft cni-server listening on 127.0.0.1:{server.tcp_port} "
              f"(token {server.token_file})", flush=True)
    elif server.tcp_port:
        print(f"netweft cni-server: TCP fast path disabled: {server.tcp_error}", flush=True)
    while not stop.wait(1):
        pass
    server.stop()


if __name__ == "__main__":
    main()
