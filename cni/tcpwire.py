"""The loopback TCP framing of the bash launcher's fast path (``cni/launcher.sh``), and its
token file. Only the framing differs from the unix socket's: the server runs the same code.

Request (bash builtins can write it; every header line is non-empty, so the first blank line
ends the header)::

    NWTCP1 <token>\\n
    KEY=VALUE\\n ...        (the CNI_* environment and NETWEFT_CNI_DEFAULT_LOG; no newlines)
    <stdin length in bytes>\\n
    \\n
    <stdin bytes>

Reply: ``<exit code> <stdout length>\\n<stdout>`` (as on the unix socket). A request without the
right token gets no reply at all.

The token (64 hex digits, fresh at every server start) is in a root-only 0600 file, and the
listener is on a privileged port (only root can bind it), so only root can talk to the server
and only the server can receive the token. The server also checks the uid owning the peer's
socket (``cni/peeruid.py``) before reading anything, as SO_PEERCRED does on the unix socket.
"""

from __future__ import annotations

import hmac
import os

from netweft.common import defaults
from netweft.common.atomicfile import write_atomic

MAGIC = b"NWTCP1"
DEFAULT_TCP_PORT = defaults.CNI_TCP_PORT


def default_token_file(socket_path: str) -> str:
    """Next to the socket: ``/run/netweft/cni.sock`` -> ``/run/netweft/cni.token``."""
    base, ext = os.path.splitext(socket_path)
    return (base if ext == ".sock" else socket_path) + ".token"


def write_token(path: str, token: str) -> None:
    """Atomically (temp file + rename), mode 0600 from creation on."""
    write_atomic(path, token.encode() + b"\n", 0o600)


def unprivileged_port_start() -> int:
    """The lowest port a non-root process may bind in this network namespace (0 if unknown:
    then no port counts as privileged)."""
    try:
        with open("/proc/sys/net/ipv4/ip_unprivileged_port_start") as f:
            return int(f.read())
    except (OSError, ValueError):
        return 0


def token_ok(first_line: bytes, token: bytes) -> bool:
    """Whether a TCP request's first line is ``NWTCP1 <token>`` with the right token (constant-time
    comparison; an empty token never matches)."""
    return bool(token) and hmac.compare_digest(first_line, MAGIC + b" " + token)


def parse_header(lines: list[bytes]) -> tuple[dict[str, str], int]:
    """``KEY=VALUE`` lines then the stdin length; ValueError on anything else."""
    if not lines or not lines[-1].isdigit():
        raise ValueError("request header without the stdin length")
    env: dict[str, str] = {}
    for line in lines[:-1]:
        key, sep, value = line.decode("utf-8", "replace").partition("=")
        if not sep or not key:
            raise ValueError(f"bad header line {line[:40]!r}")
        env[key] = value
    return env, int(lines[-1])


def encode_request(token: str, env: dict[str, str], stdin: bytes) -> bytes:
    """What the bash launcher sends (for tests and tools)."""
    head = b"".join(f"{k}={v}\n".encode() for k, v in env.items())
    return b"%s %s\n%s%d\n\n%s" % (MAGIC, token.encode(), head, len(stdin), stdin)
