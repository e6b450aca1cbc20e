"""The daemon's health: the readiness reason behind ``/readyz``, the HTTP endpoint serving
``/healthz``, ``/readyz`` and ``/metrics``, and the store reachability probe (``netweft_etcd_up``).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from netweft.daemon.asyncutil import with_timeout
from netweft.daemon.errors import AgentError
from netweft.daemon.metrics import HttpEndpoint, Metrics
from netweft.daemon.subnetmgr import Unavailable

log = logging.getLogger("netweft.agent")

READY = "ready"


class Health:
    """Readiness (``reason`` is ``"ready"`` or why not, one line) and its HTTP endpoint."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics
        self.reason = "starting"
        self.address: tuple[str, int] | None = None
        self._http: HttpEndpoint | None = None

    def ready(self) -> tuple[bool, str]:
        return self.reason == READY, self.reason

    def store_error(self, what: str = "") -> None:
        """Count a failed store operation (``netweft_etcd_errors_total``); ``what`` (one line)
        becomes the readiness reason when given."""
        self.metrics.inc("netweft_etcd_errors_total")
        if what:
            self.reason = what

    async def serve(self, addr: str | None) -> None:
        """Listen on ``host:port`` (``None``: don't); AgentError naming --metrics-addr."""
        if not addr:
            return
        self._http = HttpEndpoint(self.metrics, self.ready)
        try:
            self.address = await self._http.start(addr)
        except (OSError, ValueError) as exc:
            self._http = None
            raise AgentError(f"--metrics-addr {addr}: "
                             f"{getattr(exc, 'strerror', None) or exc}") from None

    async def stop(self) -> None:
        if self._http is not None:
            await self._http.stop()
            self._http = None

    async def probe_loop(self, ping: Callable[[], Awaitable[None]], interval: float) -> None:
        """Every ``interval`` seconds: is the store reachable? (``netweft_etcd_up``; the
        watch and renewals retry on their own)."""
        up = True
        while True:
            await asyncio.sleep(interval)
            try:
                await with_timeout(ping(), interval)
                ok = True
            except (Unavailable, TimeoutError):
                ok = False
                self.metrics.inc("netweft_etcd_errors_total")
            self.metrics.set("netweft_etcd_up", 1 if ok else 0)
            if ok != up:
                log.log(logging.INFO if ok else logging.WARNING, "etcd is %s",
                        "reachable again" if ok else "unreachable; the dataplane stays as it is")
                up = ok
