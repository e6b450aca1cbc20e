"""A tiny TCP service that answers every connection with the peer's address, and its client.

The lab runs the server on the outside host (the "internet") and in pods, to see which source
address a connection arrives with (masqueraded: the node's address; pod to pod: the pod's).

    python -m netweft.daemon.lab.whoami serve [--bind ADDR] [--port N]
    python -m netweft.daemon.lab.whoami ask HOST [--port N] [--timeout S]
"""

from __future__ import annotations

import argparse
import socket
import socketserver
import sys

DEFAULT_PORT = 8080


class _Handler(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        self.request.sendall(f"{self.client_address[0]}\n".encode())


class _Server(socketserver.ThreadingTCPServer):
    allow_reuse_address = True
    daemon_threads = True


def serve(bind: str, port: int) -> None:
    with _Server((bind, port), _Handler) as server:
        server.serve_forever()


def ask(host: str, port: int = DEFAULT_PORT, timeout: float = 3.0) -> str:
    """The address ``host``'s whoami server saw this connection come from."""
    with socket.create_connection((host, port), timeout=timeout) as sock:
        data = b""
        while not data.endswith(b"\n"):
            chunk = sock.recv(256)
            if not chunk:
                break
            data += chunk
    return data.decode().strip()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="whoami")
    sub = parser.add_subparsers(dest="cmd", required=True)
    p_serve = sub.add_parser("serve")
    p_serve.add_argument("--bind", default="0.0.0.0")
    p_serve.add_argument("--port", type=int, default=DEFAULT_PORT)
    p_ask = sub.add_parser("ask")
    p_ask.add_argument("host")
    p_ask.add_argument("--port", type=int, default=DEFAULT_PORT)
    p_ask.add_argument("--timeout", type=float, default=3.0)
    args = parser.parse_args(argv)
    if args.cmd == "serve":
        serve(args.bind, args.port)
        return 0
    try:
        print(ask(args.host, args.port, args.timeout))
    except OSError as exc:
        print(f"whoami: {args.host}:{args.port}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
