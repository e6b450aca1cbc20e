"""The CNI server: a long-lived process (or a thread of the node daemon) that runs CNI requests
handed over by the executable on a unix socket, with pyroute2 and the node's state kept warm.

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
import socket
import struct
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, replace

from cni.config import DEFAULT_LOG_FILE, DEFAULT_SOCKET_PATH
from cni.plugin import Outcome, PodInfo, WiringState, _log, run
from cni.shim import DEFAULT_LOG_KEY, MAGIC
from cni.spec import ERR_INVALID_ENV, CniError, dumps

MAX_REQUEST = 4 * 1024 * 1024


@dataclass
class CniHooks:
    on_add: Callable[[PodInfo], None] | None = None
    on_del: Callable[[PodInfo], None] | None = None


@dataclass
class CommandStats:
    count: int = 0
    errors: int = 0
    seconds_total: float = 0.0
    seconds_max: float = 0.0


def _handle(owner: CniServer, sock: socket.socket) -> None:
    started = time.monotonic()
    try:
        uid = struct.unpack("3i", sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED,
                                                  struct.calcsize("3i")))[1]
        if uid not in owner.allowed_uids:
            err = CniError(ERR_INVALID_ENV, f"uid {uid} may not use the netweft CNI server")
            body = dumps(err.to_dict("1.1.0")).encode()
            sock.sendall(b"1 %d\n" % len(body) + body)
            return
        env, stdin = _read_request(sock)
    except (OSError, ValueError) as exc:
        _log(owner.default_log, f"cni-server: bad request: {exc}")
        return
    default_log = env.pop(DEFAULT_LOG_KEY, owner.default_log)
    outcome = run(env, stdin, owner.state, default_log=default_log, via="server")
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


class CniServer:
    def __init__(self, socket_path: str = DEFAULT_SOCKET_PATH, hooks: CniHooks | None = None,
                 default_log: str = DEFAULT_LOG_FILE,
                 allowed_uids: tuple[int, ...] | None = None, workers: int = 16) -> None:
        self.socket_path = socket_path
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
        server on the same path is an error."""
        import pyroute2  # noqa: F401 - load it now, not during the first ADD

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
            t = threading.Thread(target=self._worker, name=f"netweft-cni-{i}", daemon=True)
            t.start()
            self._threads.append(t)
        return self

    def _worker(self) -> None:
        listener = self._listener
        while listener is not None and not self._stopping.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:
                if self._stopping.is_set():
                    return
                time.sleep(0.01)
                continue
            try:
                _handle(self, conn)
            except Exception:  # noqa: BLE001 - one bad request must not kill a worker
                _log(self.default_log, f"cni-server: request failed:\n{traceback.format_exc()}")
            finally:
                conn.close()

    def stop(self) -> None:
        self._stopping.set()
        listener, self._listener = self._listener, None
        if listener is not None:
            with contextlib.suppress(OSError):
                listener.shutdown(socket.SHUT_RDWR)  # wakes the threads blocked in accept()
            listener.close()
        for t in self._threads:
            t.join(timeout=10)
        self._threads = []
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.socket_path)

    # -- numbers for the daemon's metrics -----------------------------------------------
    def stats(self) -> dict[str, CommandStats]:
        with self._stats_lock:
            return {k: replace(v) for k, v in self._stats.items()}

    def _account(self, outcome: Outcome, seconds: float) -> None:
        with self._stats_lock:
            s = self._stats.setdefault(outcome.command or "?", CommandStats())
            s.count += 1
            s.errors += 1 if outcome.code else 0
            s.seconds_total += seconds
            s.seconds_max = max(s.seconds_max, seconds)

    def _notify(self, outcome: Outcome, log_file: str) -> None:
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
    """``python -m cni.server --socket-path P [--log-file F]`` (what ``netweft cni-server``
    runs): serve until SIGTERM/SIGINT."""
    import argparse
    import signal

    parser = argparse.ArgumentParser(prog="netweft cni-server")
    parser.add_argument("--socket-path", default=DEFAULT_SOCKET_PATH)
    parser.add_argument("--log-file", default=DEFAULT_LOG_FILE)
    opts = parser.parse_args(argv)
    # a dedicated process: hand the GIL over quickly so concurrent requests interleave finely
    import sys

    sys.setswitchinterval(0.0005)
    server = CniServer(opts.socket_path, default_log=opts.log_file)
    try:
        server.bind()
    except OSError as exc:
        raise SystemExit(f"netweft cni-server: {exc.strerror or exc}") from None
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    server.start_bound()
    print(f"netweft cni-server listening on {opts.socket_path}", flush=True)
    while not stop.wait(1):
        pass
    server.stop()


if __name__ == "__main__":
    main()
