"""A loopback TCP relay into a network namespace: ``127.0.0.1:port`` inside the namespace
forwards to ``127.0.0.1:target_port`` of the namespace this process runs in.

The lab and the tests run the control plane on the host's loopback while node daemons run in
node namespaces, which have a loopback of their own; the relay lets a daemon use the very URL
(and TLS name, 127.0.0.1) the control plane serves. Only loopback addresses are involved. The
listening socket is made inside the namespace (``setns(2)`` for the calling thread only,
``cni/nsenter.py``); connections to the target are made from the caller's namespace.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading

from netweft.cni import nsenter


class NsRelay:
    """``NsRelay(netns_name, port, target_port).start()``; :meth:`stop` closes every socket.
    Raises OSError (e.g. the port is taken inside the namespace) from :meth:`start`."""

    def __init__(self, netns_name: str, port: int, target_port: int | None = None) -> None:
        self.netns_name = netns_name
        self.port = port
        self.target_port = target_port or port
        self._listener: socket.socket | None = None
        self._socks: list[socket.socket] = []
        self._lock = threading.Lock()

    def start(self) -> NsRelay:
        fd = nsenter.open_netns(os.path.join("/run/netns", self.netns_name))
        try:
            with nsenter.entered(fd):
                listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        finally:
            os.close(fd)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self._listener = listener
        threading.Thread(target=self._accept, daemon=True,
                         name=f"relay {self.netns_name}").start()
        return self

    def _accept(self) -> None:
        assert self._listener is not None
        while True:
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return  # stopped
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target_port), timeout=5)
            except OSError:
                conn.close()
                continue
            upstream.settimeout(None)
            with self._lock:
                self._socks += [conn, upstream]
            for src, dst in ((conn, upstream), (upstream, conn)):
                threading.Thread(target=_pump, args=(src, dst), daemon=True).start()

    def stop(self) -> None:
        if self._listener is not None:
            with contextlib.suppress(OSError):
                self._listener.shutdown(socket.SHUT_RDWR)
            self._listener.close()
            self._listener = None
        with self._lock:
            socks, self._socks = self._socks, []
        for sock in socks:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()


def _pump(src: socket.socket, dst: socket.socket) -> None:
    """Copy ``src`` to ``dst`` until EOF or an error; then half-close ``dst``."""
    try:
        while data := src.recv(65536):
            dst.sendall(data)
    except OSError:
        pass
    with contextlib.suppress(OSError):
        dst.shutdown(socket.SHUT_WR)
