"""HTTP endpoints: the proxy's own ``/healthz`` + ``/metrics`` (port 10256), and one health-check
node port per externalTrafficPolicy Local service (200 when the node has a ready local endpoint,
503 when not, with kube-proxy's JSON body), so load balancers only send traffic to nodes that
can serve it."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from netweft.proxy.model import ServiceKey
from netweft.proxy.plan import ServicePlan

Handler = Callable[[str], tuple[int, str, str]]   # path -> (status, content type, body)
REASONS = {200: "OK", 404: "Not Found", 503: "Service Unavailable"}


def service_health(key: ServiceKey, local_endpoints: int) -> tuple[int, str, str]:
    body = json.dumps({
        "service": {"namespace": key.namespace, "name": key.name},
        "localEndpoints": local_endpoints,
        "serviceProxyHealthy": True,
    })
    return (200 if local_endpoints > 0 else 503), "application/json", body


async def _serve_http(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                      handler: Handler) -> None:
    try:
        request = await asyncio.wait_for(reader.readline(), 10)
        while (await asyncio.wait_for(reader.readline(), 10)) not in (b"\r\n", b"\n", b""):
            pass
        parts = request.decode(errors="replace").split()
        path = parts[1] if len(parts) >= 2 else "/"
        status, ctype, body = handler(path.split("?", 1)[0])
        data = body.encode()
        writer.write(
            f"HTTP/1.1 {status} {REASONS.get(status, '')}\r\nContent-Type: {ctype}\r\n"
            f"Content-Length: {len(data)}\r\nConnection: close\r\n\r\n".encode() + data)
        await writer.drain()
    except (TimeoutError, ConnectionError):
        pass
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


async def start_http(host: str, port: int, handler: Handler) -> asyncio.Server:
    return await asyncio.start_server(
        lambda r, w: _serve_http(r, w, handler), host, port, reuse_address=True)


@dataclass
class _Port:
    key: ServiceKey
    local: int
    server: asyncio.Server | None = None


class HealthCheckPorts:
    """Reconciles the set of listening health-check node ports with the plans."""

    def __init__(self, host: str = "0.0.0.0") -> None:
        self.host = host
        self.ports: dict[int, _Port] = {}
        self.errors: dict[int, str] = {}

    async def update(self, plans: Mapping[ServiceKey, ServicePlan]) -> None:
        wanted: dict[int, tuple[ServiceKey, int]] = {}
        for plan in sorted(plans.values(), key=lambda p: p.service):
            if plan.health_check_node_port and plan.health_check_node_port not in wanted:
                wanted[plan.health_check_node_port] = (plan.service, plan.local_endpoints)
        for port in [p for p in self.ports if p not in wanted]:
            entry = self.ports.pop(port)
            if entry.server:
                entry.server.close()
        for port, (key, local) in wanted.items():
            entry = self.ports.get(port)
            if entry is None:
                entry = self.ports[port] = _Port(key, local)

                def handler(path: str, port: int = port) -> tuple[int, str, str]:
                    e = self.ports[port]
                    return service_health(e.key, e.local)
                try:
                    entry.server = await start_http(self.host, port, handler)
                    self.errors.pop(port, None)
                except OSError as exc:
                    self.errors[port] = str(exc)
            entry.key, entry.local = key, local

    async def close(self) -> None:
        for entry in self.ports.values():
            if entry.server:
                entry.server.close()
        self.ports.clear()


class StatusHandler:
    """``/healthz``: 200 once a sync succeeded and no change waited longer than ``max_lag``;
    ``/metrics``: the Prometheus text."""

    def __init__(self, metrics_text: Callable[[], str], max_lag: float = 60.0) -> None:
        self.metrics_text = metrics_text
        self.max_lag = max_lag
        self.last_ok: float | None = None
        self.pending_since: float | None = None

    def __call__(self, path: str) -> tuple[int, str, str]:
        if path == "/metrics":
            return 200, "text/plain; version=0.0.4", self.metrics_text()
        if path == "/healthz":
            now = time.time()
            healthy = self.last_ok is not None and (
                self.pending_since is None or now - self.pending_since < self.max_lag)
            body = json.dumps({"lastUpdated": self.last_ok, "currentTime": now,
                               "healthy": healthy})
            return (200 if healthy else 503), "application/json", body
        return 404, "text/plain", "not found\n"
