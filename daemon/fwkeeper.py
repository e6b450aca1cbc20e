"""Keeps the daemon's masquerade/forward rules installed (``daemon/firewall.py`` renders and
loads them): once the lease is known, at once when nftables reports a change to one of our
tables (``daemon/nftwatch.py``), and every check interval (Flannel checks every 5 s; the interval
is what covers legacy iptables, which sends no notices)."""

from __future__ import annotations

import asyncio
import logging
from ipaddress import IPv4Network

from netweft.daemon.asyncutil import wait_event
from netweft.daemon.firewall import Firewall, FirewallError, FirewallSpec
from netweft.daemon.metrics import Metrics

log = logging.getLogger("netweft.agent")

COALESCE_SECONDS = 0.02  # a reload's own notices and a burst of changes: one check


class FirewallKeeper:
    """``spec`` is None until the lease is known (nothing is installed before)."""

    def __init__(self, firewall: Firewall | None, metrics: Metrics) -> None:
        self.firewall = firewall
        self.metrics = metrics
        self.spec: FirewallSpec | None = None
        self._wake = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None

    async def follow_lease(self, network: IPv4Network | None, subnet: IPv4Network | None,
                           masquerade: bool) -> None:
        """Rules for the pod ``network`` and this node's ``subnet`` (kept as they were when
        either is None), made true at once."""
        if network is not None and subnet is not None:
            self.spec = FirewallSpec(network, subnet, masquerade=masquerade)
        await self.ensure()

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

    def poke(self) -> None:
        """Check now (from any thread: the nftables watcher's)."""
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._wake.set)

    async def run(self, interval: float) -> None:
        """Check when poked and every ``interval`` seconds (never returns)."""
        self._loop = asyncio.get_running_loop()
        while True:
            await wait_event(self._wake, interval)
            await asyncio.sleep(COALESCE_SECONDS)
            self._wake.clear()
            await self.ensure()

    async def teardown(self) -> None:
        """Remove our rules (``--cleanup-on-exit``); failures are logged."""
        if self.firewall is None:
            return
        try:
            await asyncio.to_thread(self.firewall.teardown)
        except FirewallError as exc:
            log.warning("removing the firewall rules failed: %s", exc)
