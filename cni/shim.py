"""The executable's logic: standard library only, and as little of it as possible.

Start-up time is the floor of every pod start, so this imports ``_socket`` (the C module
``socket`` wraps, without ``socket.py``'s ``enum``/``selectors`` on top; its objects have the
documented ``socket.socket`` methods, and no public module offers them without the rest), reads
stdin and the ``CNI_*`` environment, hands both to the node's CNI server over its unix socket and
prints the reply. Only a conflist naming another socket than the installed one loads ``json``.
When no server answers it imports :mod:`cni.plugin` and does the work itself (same code, slower).

Wire format (one request per connection):
    request:  b"NWCNI1 <env bytes> <stdin bytes>\\n" + b"KEY=VALUE\\0"... + stdin
    reply:    b"<exit code> <stdout bytes>\\n" + stdout text
"""

import os
import sys

MAGIC = b"NWCNI1"
DEFAULT_LOG_KEY = "NETWEFT_CNI_DEFAULT_LOG"


def socket_path_of(data: bytes, default: str = "") -> str:
    """``socketPath`` from the config on stdin, or "" (malformed input is the server's job)."""
    if b'"socketPath"' not in data:
        return ""
    if default and data.count(b'"socketPath"') == 1 and (
            b'"socketPath": "%s"' % default.encode() in data
            or b'"socketPath":"%s"' % default.encode() in data):
        return default  # the installed conflist's own value: no need to load a JSON parser
    try:
        import json  # only for a conflist naming another socket: the common case never pays

        obj = json.loads(data)
    except Exception:  # noqa: BLE001 - any oddity: use the default socket
        return ""
    value = obj.get("socketPath") if isinstance(obj, dict) else None
    return value if isinstance(value, str) else ""


def encode_request(env: dict[str, str], stdin: bytes) -> bytes:
    """One request on the server's wire: ``NWCNI1 <env bytes> <stdin bytes>\n``, the environment as
    ``KEY=VALUE\0`` entries, then stdin unchanged."""
    block = b"".join(f"{k}={v}".encode() + b"\0" for k, v in env.items())
    return b"%s %d %d\n" % (MAGIC, len(block), len(stdin)) + block + stdin


def call_server(path: str, request: bytes) -> tuple[int, bytes]:
    """Send one request; raises OSError when nothing listens (then the caller falls back)."""
    import _socket

    sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    try:
        sock.connect(path)
        sock.sendall(request)
        reply = b""
        while b"\n" not in reply:
            chunk = sock.recv(65536)
            if not chunk:
                raise ConnectionError("the CNI server closed the connection without a reply")
            reply += chunk
        head, _, body = reply.partition(b"\n")
        code, _, length = head.partition(b" ")
        want = int(length)
        while len(body) < want:  # the length ends the reply: no wait for the server's close
            chunk = sock.recv(65536)
            if not chunk:
                raise ConnectionError("the CNI server closed the connection mid-reply")
            body += chunk
    finally:
        sock.close()
    return int(code), body


def main(default_socket: str, default_log: str, fallback_paths: list[str]) -> None:
    """The executable: pass stdin and the ``CNI_*`` environment to the CNI server at ``socketPath``
    (or ``default_socket``), or run the plugin in this process when no server listens (importing
    from ``fallback_paths``); writes the reply to stdout and exits with its code. Never returns;
    never prints a traceback."""
    stdin = sys.stdin.buffer.read()
    env = {k: v for k, v in os.environ.items() if k.startswith("CNI_")}
    env[DEFAULT_LOG_KEY] = default_log
    path = socket_path_of(stdin, default_socket) or default_socket
    no_server = False
    try:
        code, out = call_server(path, encode_request(env, stdin))
    except (FileNotFoundError, ConnectionRefusedError, PermissionError, NotADirectoryError):
        no_server = True
    except OSError as exc:
        code, out = 1, _error_json(stdin, f"netweft CNI server at {path}: {exc}")
    if no_server:
        code, out = _in_process(stdin, default_log, fallback_paths)
    sys.stdout.buffer.write(out)
    sys.stdout.flush()
    os._exit(code)  # nothing left to clean up: skip interpreter finalisation


def _in_process(stdin: bytes, default_log: str, fallback_paths: list[str]) -> tuple[int, bytes]:
    for p in fallback_paths:
        if p not in sys.path:
            sys.path.append(p)
    from netweft.cni.plugin import run

    outcome = run(os.environ, stdin, default_log=default_log, via="inproc")
    return outcome.code, outcome.stdout.encode()


def _error_json(stdin: bytes, msg: str) -> bytes:
    version = "1.1.0"
    try:
        import json

        v = json.loads(stdin).get("cniVersion")
        if v in ("0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"):
            version = v
    except Exception:  # noqa: BLE001
        pass
    import json

    return (json.dumps({"cniVersion": version, "code": 11, "msg": msg}) + "\n").encode()
