"""The one echo service of netweft's labs and tests: a server that answers every TCP connection,
UDP datagram or SCTP association with the peer's address, and its client.

The lab runs the server on the outside host (the "internet") and in pods, to see which source
address a connection arrives with (masqueraded: the node's address; pod to pod: the pod's). The
proxy's tests run it in their pods with ``--name <pod ip>``, so each answer also says which
endpoint the service sent the connection to.

    python -m netweft.daemon.lab.whoami serve [--bind ADDR] [--port N]
                                              [--listen PROTO:PORT ...] [--name TEXT]
    python -m netweft.daemon.lab.whoami ask HOST [--port N] [--timeout S]

Answer: ``"<peer ip>\\n"``, or ``"<name> <peer ip>\\n"`` with ``--name``. ``serve`` prints
``ready`` on stdout once every listener is bound; a listener that cannot be bound is exit 1
(a protocol the kernel lacks is only reported).
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import socket
import sys
import threading
from collections.abc import Callable, Sequence

DEFAULT_PORT = 8080
PROTOCOLS = ("tcp", "udp", "sctp")


def answer(peer: str, name: str | None = None) -> bytes:
    """The reply to a client at ``peer``: ``"<peer>\\n"`` or ``"<name> <peer>\\n"``."""
    return (f"{name} {peer}\n" if name else f"{peer}\n").encode()


def _stream_listener(bind: str, port: int, proto: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((bind, port))
    sock.listen(512)
    return sock


def _serve_stream(sock: socket.socket, name: str | None) -> None:
    while True:
        conn, peer = sock.accept()
        with contextlib.suppress(OSError):  # the client may be gone already
            conn.sendall(answer(peer[0], name))
        conn.close()


def _serve_datagrams(sock: socket.socket, name: str | None) -> None:
    while True:
        _, peer = sock.recvfrom(2048)
        sock.sendto(answer(peer[0], name), peer)


def listen(spec: str, bind: str = "0.0.0.0") -> Callable[[str | None], None]:
    """Bind the listener ``spec`` (``"tcp:8080"``, ``"udp:53"``, ``"sctp:9"``) now; returns the
    loop serving it. Raises ``ValueError`` for a malformed spec, ``OSError`` when binding fails."""
    proto, _, port_text = spec.partition(":")
    if proto not in PROTOCOLS or not port_text.isdigit():
        raise ValueError(f"--listen: {spec!r} is not PROTO:PORT with PROTO one of "
                         f"{', '.join(PROTOCOLS)}")
    port = int(port_text)
    if proto == "udp":
        udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        udp.bind((bind, port))
        return lambda name: _serve_datagrams(udp, name)
    stream = _stream_listener(bind, port, socket.IPPROTO_SCTP if proto == "sctp" else 0)
    return lambda name: _serve_stream(stream, name)


def serve(bind: str, specs: Sequence[str], name: str | None = None) -> None:
    """Serve every listener of ``specs`` until killed; prints ``ready`` once all are bound. A
    protocol this kernel lacks (SCTP here: EPROTONOSUPPORT) is said on stderr and left out, so
    a client sees the kernel's own answer; any other bind error is raised."""
    loops = []
    for spec in specs:
        try:
            loops.append(listen(spec, bind))
        except OSError as exc:
            if exc.errno not in (errno.EPROTONOSUPPORT, errno.ESOCKTNOSUPPORT):
                raise
            print(f"whoami: {spec}: {exc.strerror}; not served", file=sys.stderr, flush=True)
    for loop in loops:
        threading.Thread(target=loop, args=(name,), daemon=True).start()
    print("ready", flush=True)
    threading.Event().wait()


def ask(host: str, port: int = DEFAULT_PORT, timeout: float = 3.0) -> str:
    """The address ``host``'s whoami server saw this TCP connection come from (the last word of
    its answer). Raises ``OSError`` when the connection fails or times out (seconds)."""
    with socket.create_connection((host, port), timeout=timeout) as sock:
        data = b""
        while not data.endswith(b"\n"):
            chunk = sock.recv(256)
            if not chunk:
                break
            data += chunk
    words = data.decode().split()
    return words[-1] if words else ""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="whoami")
    sub = parser.add_subparsers(dest="cmd", required=True)
    p_serve = sub.add_parser("serve")
    p_serve.add_argument("--bind", default="0.0.0.0")
    p_serve.add_argument("--port", type=int, default=DEFAULT_PORT,
                         help="TCP port, when no --listen is given")
    p_serve.add_argument("--listen", action="append", default=[], metavar="PROTO:PORT",
                         help="tcp:N, udp:N or sctp:N (repeatable)")
    p_serve.add_argument("--name", default=None, help="said before the peer's address")
    p_ask = sub.add_parser("ask")
    p_ask.add_argument("host")
    p_ask.add_argument("--port", type=int, default=DEFAULT_PORT)
    p_ask.add_argument("--timeout", type=float, default=3.0)
    args = parser.parse_args(argv)
    if args.cmd == "serve":
        try:
            serve(args.bind, args.listen or [f"tcp:{args.port}"], args.name)
        except (ValueError, OSError) as exc:
            print(f"whoami: {exc}", file=sys.stderr)
            return 1
        return 0
    try:
        print(ask(args.host, args.port, args.timeout))
    except OSError as exc:
        print(f"whoami: {args.host}:{args.port}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
