"""Keeps the daemon's masquerade/forward rules installed (``daemon/firewall.py`` renders and
loads them): once the lease is known, and again every check interval."""

from __future__ import annotations

import asyncio
import logging

from netweft.daemon.firewall import Firewall, FirewallError, FirewallSpec
from netweft.daemon.metrics import Metrics

log = logging.getLogger("netweft.agent")


class FirewallKeeper:
    """``spec`` is None until the lease is known (nothing is installed before)."""

    def __init__(self, firewall: Firewall | None, metrics: Metrics) -> None:
        self.firewall = firewall
        self.metrics = metrics
        self.spec: FirewallSpec | None = None

    async def ensure(self) -> None:
        """Make the kernel's rules match ``spec`` (errors are logged and counted)."""
        if self.firewall is None or self.spec is None:
            return
        try:
            if await asyncio.to_thread(self.firewall.ensure, self.spec):
                self.metrics.inc("netweft_firewall_reloads_total")
        except FirewallError as exc:
            log.error("firewall: %s", exc)
            self.metrics.inc("netweft_reconcile_errors_total")

    async def run(self, interval: float) -> None:
        """Check every ``interval`` seconds (never returns)."""
        while True:
            await asyncio.sleep(interval)
            await self.ensure()

    async def teardown(self) -> None:
        """Remove our rules (``--cleanup-on-exit``); failures are logged."""
        if self.firewall is None:
            return
        try:
            await asyncio.to_thread(self.firewall.teardown)
        except FirewallError as exc:
            log.warning("removing the firewall rules failed: %s", exc)
