"""A small Kubernetes API server for tests: real HTTP on 127.0.0.1, the real list/watch wire format.

Kept only for faults the real kube-apiserver cannot be made to produce (streams cut mid-event,
HTTP 500s, 410 as an HTTP status; see tests/proxy/test_proxy_kube_source.py); everything else is
tested against the real control plane (tests/conftest.py ``control_plane``). It speaks just enough
of the protocol for a client library to drive it unchanged:

- ``GET /api/v1/services`` and ``GET /apis/discovery.k8s.io/v1/endpointslices`` (all namespaces):
  lists ``{"kind": "...List", "metadata": {"resourceVersion"}, "items": [...]}``;
- the same paths with ``watch=true``: a chunked ``application/json`` stream of one JSON event per
  line, from ``resourceVersion`` on (absent or ``0``: synthetic ADDED events for the current state
  first), ``labelSelector`` honoured the way the API server does it (an update that makes an
  object stop matching arrives as DELETED, start matching as ADDED), ``allowWatchBookmarks``
  (BOOKMARK events on :meth:`bookmark`), ``timeoutSeconds`` (clean end of stream);
- history compaction: a watch from a resourceVersion older than the compacted one gets
  "410 Gone", as an ERROR event with a Status (what kube-apiserver sends) or, with
  ``gone_as_http``, as an HTTP 410 response; :meth:`expire_watches` sends the ERROR event to open
  watches (the watch cache dropping a slow watcher);
- faults: :meth:`drop_watches` cuts every open watch at once, mid-event (half a JSON line, then a
  reset; events not yet sent are lost with the connection),
  :meth:`fail_next` answers the next requests with HTTP 500.

One global resourceVersion counter over both kinds, as etcd gives the real server.
"""

from __future__ import annotations

import asyncio
import copy
import json
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, urlsplit

Obj = dict[str, Any]


@dataclass(frozen=True)
class Kind:
    kind: str
    api_version: str
    path: str


SERVICES = Kind("Service", "v1", "/api/v1/services")
ENDPOINT_SLICES = Kind("EndpointSlice", "discovery.k8s.io/v1",
                       "/apis/discovery.k8s.io/v1/endpointslices")
KINDS = {k.path: k for k in (SERVICES, ENDPOINT_SLICES)}
BY_KIND = {k.kind: k for k in (SERVICES, ENDPOINT_SLICES)}


@dataclass
class Change:
    kind: Kind
    type: str          # ADDED / MODIFIED / DELETED
    rv: int
    old: Obj | None
    new: Obj           # the object at this resourceVersion (for DELETED: its last state)


def parse_selector(text: str) -> list[tuple[str, str, str]]:
    """``!k``, ``k``, ``k=v``, ``k==v``, ``k!=v`` requirements, comma-separated."""
    reqs = []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        if part.startswith("!"):
            reqs.append(("!", part[1:].strip(), ""))
        elif "!=" in part:
            k, v = part.split("!=", 1)
            reqs.append(("!=", k.strip(), v.strip()))
        elif "=" in part:
            k, v = part.replace("==", "=").split("=", 1)
            reqs.append(("=", k.strip(), v.strip()))
        else:
            reqs.append(("exists", part, ""))
    return reqs


def matches(reqs: list[tuple[str, str, str]], obj: Obj | None) -> bool:
    if obj is None:
        return False
    labels = (obj.get("metadata") or {}).get("labels") or {}
    for opname, key, value in reqs:
        if opname == "!" and key in labels:
            return False
        if opname == "exists" and key not in labels:
            return False
        if opname == "=" and labels.get(key) != value:
            return False
        if opname == "!=" and labels.get(key) == value:
            return False
    return True


@dataclass(eq=False)
class WatchConn:
    kind: Kind
    selector: list[tuple[str, str, str]]
    bookmarks: bool
    writer: asyncio.StreamWriter
    pos: int
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    control: list[str] = field(default_factory=list)


def _chunk(data: bytes) -> bytes:
    return f"{len(data):x}\r\n".encode() + data + b"\r\n"


class KubeApiServer:
    def __init__(self, start_rv: int = 1000) -> None:
        self.objects: dict[str, dict[tuple[str, str], Obj]] = {k: {} for k in KINDS}
        self.rv = start_rv
        self.compacted_rv = 0
        self.history: list[Change] = []
        self.watches: set[WatchConn] = set()
        self.requests: list[tuple[str, dict[str, str]]] = []
        self.gone_as_http = False
        self.gone_sent = {"event": 0, "http": 0}
        self._fail = 0
        self._server: asyncio.AbstractServer | None = None
        self._watch_opened = asyncio.Condition()
        self._handlers: set[asyncio.Task[None]] = set()
        self.port = 0

    # --- lifecycle ----------------------------------------------------------------------------

    async def start(self) -> str:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self.url

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._handlers):
            task.cancel()
        for conn in list(self.watches):
            conn.writer.transport.abort()
        await asyncio.gather(*self._handlers, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()

    def kubeconfig(self) -> str:
        return json.dumps({
            "apiVersion": "v1", "kind": "Config", "current-context": "test",
            "clusters": [{"name": "test", "cluster": {"server": self.url}}],
            "users": [{"name": "test", "user": {"token": "test-token"}}],
            "contexts": [{"name": "test", "context": {"cluster": "test", "user": "test"}}],
        })

    # --- state changes ------------------------------------------------------------------------

    def apply(self, obj: Obj) -> Obj:
        """Create or replace an object (by kind, namespace, name); returns the stored copy."""
        kind = BY_KIND[obj["kind"]]
        meta = obj.setdefault("metadata", {})
        meta.setdefault("namespace", "default")
        key = (meta["namespace"], meta["name"])
        store = self.objects[kind.path]
        old = store.get(key)
        self.rv += 1
        new = copy.deepcopy(obj)
        new["apiVersion"] = kind.api_version
        new["metadata"]["resourceVersion"] = str(self.rv)
        store[key] = new
        self._record(Change(kind, "MODIFIED" if old else "ADDED", self.rv, old, new))
        return new

    def delete(self, kind_name: str, namespace: str, name: str) -> None:
        kind = BY_KIND[kind_name]
        old = self.objects[kind.path].pop((namespace, name))
        self.rv += 1
        last = copy.deepcopy(old)
        last["metadata"]["resourceVersion"] = str(self.rv)
        self._record(Change(kind, "DELETED", self.rv, old, last))

    def compact(self) -> None:
        """Forget all history up to now: older resourceVersions get 410 Gone."""
        self.compacted_rv = self.rv

    def _record(self, change: Change) -> None:
        self.history.append(change)
        for conn in self.watches:
            conn.wake.set()

    # --- faults and bookmarks -----------------------------------------------------------------

    def _control(self, what: str) -> int:
        for conn in self.watches:
            conn.control.append(what)
            conn.wake.set()
        return len(self.watches)

    def bookmark(self) -> int:
        return self._control("bookmark")

    def expire_watches(self) -> int:
        return self._control("expire")

    def drop_watches(self) -> int:
        """Cut every open watch now, mid-event: events not yet sent are never sent on it."""
        conns = list(self.watches)
        for conn in conns:
            half = json.dumps({"type": "MODIFIED", "object": {"kind": conn.kind.kind}})
            conn.writer.write(f"{len(half) + 40:x}\r\n{half[: len(half) // 2]}".encode())
            conn.writer.transport.abort()
            self.watches.discard(conn)
            conn.control.append("dropped")
            conn.wake.set()
        return len(conns)

    def fail_next(self, count: int) -> None:
        self._fail = count

    async def wait_watches(self, count: int, timeout: float = 10.0) -> None:
        """Until ``count`` watches are open (one per reflector, typically)."""
        async with self._watch_opened:
            await asyncio.wait_for(
                self._watch_opened.wait_for(lambda: len(self.watches) >= count), timeout)

    def watch_requests(self, kind: Kind) -> list[dict[str, str]]:
        return [q for p, q in self.requests if p == kind.path and q.get("watch") == "true"]

    def list_requests(self, kind: Kind) -> list[dict[str, str]]:
        return [q for p, q in self.requests if p == kind.path and q.get("watch") != "true"]

    # --- HTTP ---------------------------------------------------------------------------------

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        try:
            await self._serve(reader, writer)
        except asyncio.CancelledError:
            writer.transport.abort()
        finally:
            self._handlers.discard(task)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()
            return
        request_line = head.split(b"\r\n", 1)[0].decode()
        method, target, _ = request_line.split(" ", 2)
        url = urlsplit(target)
        query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        self.requests.append((url.path, query))
        try:
            if self._fail > 0:
                self._fail -= 1
                await self._status(writer, 500, "InternalError", "injected failure")
            elif method != "GET" or url.path not in KINDS:
                await self._status(writer, 404, "NotFound", f"{method} {url.path} is not served")
            elif query.get("watch") in ("true", "1"):
                await self._watch(KINDS[url.path], query, writer)
            else:
                await self._list(KINDS[url.path], query, writer)
        except ConnectionError:
            pass
        finally:
            if not writer.transport.is_closing():
                writer.close()

    @staticmethod
    def _status_obj(code: int, reason: str, message: str) -> Obj:
        return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                "message": message, "reason": reason, "code": code}

    async def _status(self, writer: asyncio.StreamWriter, code: int, reason: str,
                      message: str) -> None:
        body = json.dumps(self._status_obj(code, reason, message)).encode()
        writer.write(f"HTTP/1.1 {code} {reason}\r\nContent-Type: application/json\r\n"
                     f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode() + body)
        await writer.drain()

    async def _list(self, kind: Kind, query: dict[str, str], writer: asyncio.StreamWriter) -> None:
        reqs = parse_selector(query.get("labelSelector", ""))
        items = [copy.deepcopy(o) for _, o in sorted(self.objects[kind.path].items())
                 if matches(reqs, o)]
        for item in items:  # list items carry neither kind nor apiVersion
            item.pop("kind", None)
            item.pop("apiVersion", None)
        body = json.dumps({"kind": f"{kind.kind}List", "apiVersion": kind.api_version,
                           "metadata": {"resourceVersion": str(self.rv)},
                           "items": items}).encode()
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                     + f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode() + body)
        await writer.drain()

    def _event(self, conn: WatchConn, change: Change) -> Obj | None:
        was = matches(conn.selector, change.old) if change.type != "ADDED" else False
        now = matches(conn.selector, change.new) if change.type != "DELETED" else False
        if was and now:
            kind = "MODIFIED"
        elif now:
            kind = "ADDED"
        elif was:
            kind = "DELETED"
        else:
            return None
        obj = dict(change.new, kind=conn.kind.kind)
        return {"type": kind, "object": obj}

    async def _watch(self, kind: Kind, query: dict[str, str], writer: asyncio.StreamWriter) -> None:
        start = query.get("resourceVersion")
        since = int(start) if start and start != "0" else None
        gone = since is not None and since < self.compacted_rv
        message = f"too old resource version: {since} ({self.compacted_rv})"
        if gone and self.gone_as_http:
            self.gone_sent["http"] += 1
            await self._status(writer, 410, "Expired", message)
            return
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                     b"Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n")

        def send(event: Obj) -> None:
            writer.write(_chunk(json.dumps(event).encode() + b"\n"))

        if gone:
            self.gone_sent["event"] += 1
            send({"type": "ERROR", "object": self._status_obj(410, "Expired", message)})
            writer.write(b"0\r\n\r\n")
            await writer.drain()
            return
        conn = WatchConn(kind, parse_selector(query.get("labelSelector", "")),
                         query.get("allowWatchBookmarks") == "true", writer, len(self.history))
        if since is None:
            for _, obj in sorted(self.objects[kind.path].items()):
                if matches(conn.selector, obj):
                    send({"type": "ADDED", "object": dict(obj, kind=kind.kind)})
        else:
            conn.pos = next((i for i, c in enumerate(self.history) if c.rv > since),
                            len(self.history))
        timeout = float(query["timeoutSeconds"]) if query.get("timeoutSeconds") else None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout if timeout else None
        self.watches.add(conn)
        async with self._watch_opened:
            self._watch_opened.notify_all()
        try:
            while True:
                conn.wake.clear()
                if "dropped" in conn.control:
                    return
                while conn.pos < len(self.history):
                    change = self.history[conn.pos]
                    conn.pos += 1
                    if change.kind is kind and (event := self._event(conn, change)):
                        send(event)
                await writer.drain()
                while conn.control:
                    what = conn.control.pop(0)
                    if what == "bookmark" and conn.bookmarks:
                        send({"type": "BOOKMARK", "object": {
                            "kind": kind.kind, "apiVersion": kind.api_version,
                            "metadata": {"resourceVersion": str(self.rv)}}})
                    elif what == "expire":
                        self.gone_sent["event"] += 1
                        send({"type": "ERROR", "object": self._status_obj(
                            410, "Expired", "the watch cache dropped this watcher")})
                        writer.write(b"0\r\n\r\n")
                        await writer.drain()
                        return
                    elif what == "dropped":
                        return
                await writer.drain()
                remaining = None if deadline is None else deadline - loop.time()
                if remaining is not None and remaining <= 0:
                    writer.write(b"0\r\n\r\n")
                    await writer.drain()
                    return
                try:
                    await asyncio.wait_for(conn.wake.wait(), remaining)
                except TimeoutError:
                    continue
        finally:
            self.watches.discard(conn)


# --- object builders for tests -------------------------------------------------------------------

def service(name: str, cluster_ip: str, ports: list[Obj], namespace: str = "default",
            labels: dict[str, str] | None = None, **spec: Any) -> Obj:
    body: Obj = {"clusterIP": cluster_ip, "clusterIPs": [cluster_ip] if cluster_ip else [],
                 "ports": ports, "type": "ClusterIP"}
    body.update(spec)
    meta: Obj = {"name": name, "namespace": namespace}
    if labels:
        meta["labels"] = labels
    return {"kind": "Service", "metadata": meta, "spec": body}


def endpoint_slice(name: str, service_name: str, endpoints: list[Obj], ports: list[Obj],
                   namespace: str = "default", address_type: str = "IPv4",
                   labels: dict[str, str] | None = None) -> Obj:
    all_labels = {"kubernetes.io/service-name": service_name,
                  "endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io"}
    all_labels.update(labels or {})
    return {"kind": "EndpointSlice", "addressType": address_type,
            "metadata": {"name": name, "namespace": namespace, "labels": all_labels},
            "endpoints": endpoints, "ports": ports}


# --- as a process (for a server inside a network namespace) -----------------------------------

async def serve_stdio() -> None:
    """Serve on 127.0.0.1 (a free port); print the URL; then obey JSON commands on stdin, one per
    line, answering ``ok`` (or ``error: ...``) per line: ``{"apply": obj}``,
    ``{"delete": [kind, namespace, name]}``, ``{"compact": true}``, ``{"drop": true}``,
    ``{"expire": true}``, ``{"bookmark": true}``, ``{"gone_as_http": bool}``."""
    import sys

    server = KubeApiServer()
    print(await server.start(), flush=True)
    loop = asyncio.get_running_loop()
    while True:
        line = await loop.run_in_executor(None, sys.stdin.readline)
        if not line:
            break
        try:
            cmd = json.loads(line)
            if "apply" in cmd:
                server.apply(cmd["apply"])
            if "delete" in cmd:
                server.delete(*cmd["delete"])
            if cmd.get("compact"):
                server.compact()
            if "gone_as_http" in cmd:
                server.gone_as_http = bool(cmd["gone_as_http"])
            if cmd.get("drop"):
                server.drop_watches()
            if cmd.get("expire"):
                server.expire_watches()
            if cmd.get("bookmark"):
                server.bookmark()
            print("ok", flush=True)
        except Exception as exc:  # noqa: BLE001 - reported to the driving test
            print(f"error: {exc}", flush=True)
    await server.stop()


if __name__ == "__main__":
    asyncio.run(serve_stdio())
