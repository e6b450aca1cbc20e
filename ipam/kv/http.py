"""JSON POSTs over HTTP/1.1 for the etcd client: ``h11`` (the sans-IO HTTP/1.1 state machine
httpx's transport is built on) over asyncio streams, with keep-alive connections per origin.

Why not httpx2 itself (which lightkube already brings): in the daemon, whose RSS is measured
beside flanneld's (issue 12), httpx2 cost 6.3 MiB of imports (httpcore2, anyio, h2, truststore,
email, csv, zipfile...) and 3.6 MiB more at its first connection; h11 costs 0.5 MiB. What etcd's
gateway needs is small: a POST with a JSON body, its answer read whole or as a stream, TLS (the
standard library's ``ssl``), timeouts. Errors keep their cause, so a TLS alert the server sent
(``TLSV13_ALERT_CERTIFICATE_REQUIRED``) reaches the one-line explanation in
:mod:`netweft.kv.tls`.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import h11

# (level, option, value) for socket.setsockopt on every connection.
SocketOption = tuple[int, int, int]
_READ = 65536
# Idle keep-alive connections kept per origin (more were only needed by a burst of calls).
MAX_IDLE = 4


class HttpError(Exception):
    """A call did not get an answer: connection refused or reset, a TLS failure, the server
    closing without answering (``closed``), or no answer within the timeout (``timeout``).
    The underlying ``OSError``/``ssl.SSLError`` is the ``__cause__``."""

    def __init__(self, detail: str, timeout: bool = False, closed: bool = False,
                 first_exchange: bool = False) -> None:
        super().__init__(detail)
        self.timeout, self.closed = timeout, closed
        # The failure was the first request on a newly opened connection (after a TLS
        # handshake that had succeeded, for TLS origins).
        self.first_exchange = first_exchange


@dataclass(frozen=True)
class Origin:
    """Where a request goes: host (a name or an IP literal without brackets), port, TLS."""

    host: str
    port: int
    tls: bool


@dataclass
class _Conn:
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    h11: h11.Connection = field(default_factory=lambda: h11.Connection(h11.CLIENT))
    used: bool = False  # has carried a request before (a stale keep-alive may fail at once)

    async def next_event(self) -> object:
        while True:
            event = self.h11.next_event()
            if event is not h11.NEED_DATA:
                return event
            self.h11.receive_data(await self.reader.read(_READ))

    def close(self) -> None:
        self.writer.close()

    async def close_broken(self) -> None:
        """Close a connection that failed (reset, TLS alert) and collect its close error:
        asyncio keeps that error in the stream's closed future, and one nobody awaited is
        printed as "Future exception was never retrieved" when it is collected (the CLI then
        showed a traceback under its one-line error)."""
        self.writer.close()
        with contextlib.suppress(OSError, ssl.SSLError):
            await self.writer.wait_closed()


@dataclass
class Answer:
    """An HTTP answer: ``status`` code and, for unary calls, the whole ``body``."""

    status: int
    body: bytes = b""


class HttpPool:
    """Keep-alive HTTP/1.1 connections per :class:`Origin`. ``ssl_context`` for TLS origins;
    ``socket_options`` set on every new socket."""

    def __init__(self, ssl_context: ssl.SSLContext | None,
                 socket_options: Iterable[SocketOption] = ()) -> None:
        self.ssl_context = ssl_context
        self.socket_options = tuple(socket_options)
        self._idle: dict[Origin, list[_Conn]] = {}

    async def _connect(self, origin: Origin) -> _Conn:
        ctx = self.ssl_context if origin.tls else None
        if origin.tls and ctx is None:
            ctx = ssl.create_default_context()
        try:
            reader, writer = await asyncio.open_connection(
                origin.host, origin.port, ssl=ctx,
                server_hostname=origin.host if ctx is not None else None)
        except (OSError, ssl.SSLError) as exc:
            raise HttpError(str(exc) or type(exc).__name__) from exc
        sock = writer.get_extra_info("socket")
        for option in self.socket_options:
            sock.setsockopt(*option)
        return _Conn(reader, writer)

    def _take(self, origin: Origin) -> _Conn | None:
        idle = self._idle.get(origin, [])
        while idle:
            conn = idle.pop()
            if not conn.reader.at_eof() and not conn.writer.is_closing():
                return conn
            conn.close()
        return None

    async def _send(self, conn: _Conn, origin: Origin, path: str, body: bytes) -> int:
        """Send the request and read the answer's head; its status code."""
        host = f"[{origin.host}]" if ":" in origin.host else origin.host
        head = h11.Request(method="POST", target=path, headers=[
            ("Host", f"{host}:{origin.port}"), ("Content-Type", "application/json"),
            ("Content-Length", str(len(body)))])
        conn.writer.write(conn.h11.send(head) + conn.h11.send(h11.Data(data=body))
                          + conn.h11.send(h11.EndOfMessage()))
        await conn.writer.drain()
        event = await conn.next_event()
        if not isinstance(event, h11.Response):
            raise h11.RemoteProtocolError("connection closed without an answer")
        return int(event.status_code)

    async def _open(self, origin: Origin, path: str, body: bytes) -> tuple[_Conn, int]:
        """A connection with the request sent and the answer's status read. A reused
        keep-alive connection the server closed meanwhile is replaced once, transparently."""
        conn = self._take(origin)
        while True:
            fresh = conn is None
            if conn is None:
                conn = await self._connect(origin)
            try:
                return conn, await self._send(conn, origin, path, body)
            except (OSError, ssl.SSLError, h11.ProtocolError) as exc:
                await conn.close_broken()
                if not fresh and isinstance(exc, (ConnectionError, h11.ProtocolError)):
                    conn = None
                    continue
                closed = isinstance(exc, h11.ProtocolError)
                detail = ("the server closed the connection without answering" if closed
                          else str(exc) or type(exc).__name__)
                raise HttpError(detail, closed=closed, first_exchange=fresh) from exc
            except BaseException:  # cancelled or timed out mid-request: the connection is spent
                conn.close()
                raise

    async def post(self, origin: Origin, path: str, body: bytes, timeout: float) -> Answer:
        """POST ``body`` (JSON) and read the whole answer within ``timeout`` seconds.
        :class:`HttpError` when there is none."""
        try:
            async with asyncio.timeout(timeout):
                conn, status = await self._open(origin, path, body)
                try:
                    chunks = []
                    while True:
                        event = await conn.next_event()
                        if isinstance(event, h11.Data):
                            chunks.append(bytes(event.data))
                        elif isinstance(event, h11.EndOfMessage | h11.ConnectionClosed):
                            break
                except (OSError, ssl.SSLError, h11.ProtocolError):
                    await conn.close_broken()
                    raise
                except BaseException:  # cancelled or timed out: the connection is spent
                    conn.close()
                    raise
        except TimeoutError:
            raise HttpError(f"no answer within {timeout:g}s", timeout=True) from None
        except (OSError, ssl.SSLError, h11.ProtocolError) as exc:
            raise HttpError(str(exc) or type(exc).__name__) from exc
        idle = self._idle.setdefault(origin, [])
        if (conn.h11.our_state is h11.DONE and conn.h11.their_state is h11.DONE
                and len(idle) < MAX_IDLE):
            conn.h11.start_next_cycle()
            idle.append(conn)
        else:
            conn.close()
        return Answer(status, b"".join(chunks))

    @asynccontextmanager
    async def stream(self, origin: Origin, path: str, body: bytes,
                     timeout: float) -> AsyncIterator[tuple[int, AsyncIterator[bytes]]]:
        """POST ``body`` and yield ``(status, chunks)``: the answer's body as it arrives, for
        as long as the server sends it (no timeout once the head is in: a watch). The
        connection is closed afterwards. :class:`HttpError` when the stream breaks."""
        try:
            async with asyncio.timeout(timeout):
                conn, status = await self._open(origin, path, body)
        except TimeoutError:
            raise HttpError(f"no answer within {timeout:g}s", timeout=True) from None

        async def chunks() -> AsyncIterator[bytes]:
            try:
                while True:
                    event = await conn.next_event()
                    if isinstance(event, h11.Data):
                        yield bytes(event.data)
                    elif isinstance(event, h11.EndOfMessage | h11.ConnectionClosed):
                        return
            except (OSError, ssl.SSLError, h11.ProtocolError) as exc:
                await conn.close_broken()
                raise HttpError(str(exc) or type(exc).__name__) from exc

        try:
            yield status, chunks()
        finally:
            conn.close()

    async def close(self) -> None:
        """Close every idle connection."""
        idle, self._idle = self._idle, {}
        for conns in idle.values():
            for conn in conns:
                conn.close()
