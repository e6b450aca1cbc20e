"""Choosing the public side at start (:func:`select_side`) and following it while running: the
interface chosen at start, its address, its MTU and connected networks are looked at before
every full pass (in the kernel thread) and the side is selected again when they changed, because
an address or MTU changed by hand, or a new default-route interface, must not leave the node
with a stale VXLAN source, MTU or lease PublicIP (issue: node state read once at start).

On a change the backend is rebound to the new side (the pass's ``setup`` then recreates or
adjusts the device); the agent republishes the lease when the public IP changed and rewrites
subnet.env when the MTU changed.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import replace

from netweft.backends.base import Backend
from netweft.backends.netlink import Netlink
from netweft.daemon import iface
from netweft.daemon.errors import AgentError
from netweft.daemon.health import Health
from netweft.daemon.kernel import KernelWorker
from netweft.daemon.subnetmgr import SubnetManager, Unavailable

log = logging.getLogger("netweft.agent")


async def select_side(nl: Netlink, kernel: KernelWorker, opts: iface.IfaceOptions,
                      manager: SubnetManager, health: Health, retry: float) -> iface.PublicSide:
    """The public side at start: the subnet manager's public-ip-overwrite (Flannel: the Node
    annotation beats the interface; read again every ``retry`` seconds while the store is
    unavailable, ``/readyz`` says why), then ``iface.select`` in the kernel thread. Raises
    AgentError (one line) when no interface fits the options."""
    while True:
        try:
            overwrite = await manager.public_ip_overwrite()
            break
        except Unavailable as exc:
            health.reason = f"reading the public-ip-overwrite: {exc}; retrying"
            log.warning("%s", health.reason)
            await asyncio.sleep(retry)
    if overwrite is not None:
        log.info("public IP %s from the node annotation public-ip-overwrite", overwrite)
        opts = replace(opts, public_ip=overwrite)
    try:
        side: iface.PublicSide = await kernel.call(iface.select, nl, opts)
    except iface.IfaceError as exc:
        raise AgentError(str(exc)) from None
    log.info("public interface %s, address %s, public IP %s, mtu %d", side.underlay.iface,
             side.underlay.ip, side.public_ip, side.underlay.mtu)
    return side


class PublicSideFollower:
    """Holds the current ``side``; ``error`` is why the last re-selection failed (None: ok)."""

    def __init__(self, nl: Netlink, opts: iface.IfaceOptions, side: iface.PublicSide,
                 backend: Backend) -> None:
        self.nl = nl
        self.opts = opts
        self.side = side
        self.backend = backend
        self.error: str | None = None

    def status(self) -> dict[str, object]:
        """The public side for ``status.json``: interface, public IP, address, MTU (bytes) and
        why the last re-selection failed (None: it did not)."""
        u = self.side.underlay
        return {"iface": u.iface, "publicIP": str(self.side.public_ip), "address": str(u.ip),
                "underlayMTU": u.mtu, "ifaceError": self.error}

    def unchanged(self) -> bool:
        """Cheap: the chosen interface still exists under the same index with the same MTU and
        addresses (one link lookup and one address dump of that link, not a dump of every link:
        a node with many pods has many veths)."""
        u = self.side.underlay
        link = self.nl.link(u.iface)
        if link is None or link.index != u.index or link.mtu != u.mtu:
            return False
        addrs = [a for _, a in self.nl.addresses(u.index)]
        networks = tuple(sorted({a.network for a in addrs if a.network.prefixlen < 32}))
        return any(a.ip == u.ip for a in addrs) and networks == u.networks

    def check(self) -> None:
        """Re-select the public side (kernel thread) when the chosen interface changed; rebind
        the backend when the selection differs. A failing selection keeps the old side (logged
        once per distinct error)."""
        if self.error is None and self.unchanged():
            return
        try:
            side = iface.select(self.nl, self.opts)
        except iface.IfaceError as exc:
            if str(exc) != self.error:
                log.error("public interface: %s; keeping %s (%s)", exc,
                          self.side.underlay.iface, self.side.underlay.ip)
            self.error = str(exc)
            return
        self.error = None
        if side == self.side:
            return
        old = self.side.underlay
        log.warning("public side changed: %s %s mtu %d -> %s %s mtu %d (public IP %s)",
                    old.iface, old.ip, old.mtu, side.underlay.iface, side.underlay.ip,
                    side.underlay.mtu, side.public_ip)
        self.backend.rebind(side.underlay)
        self.side = side
