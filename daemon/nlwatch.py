"""The netlink watcher: a thread that calls ``poke()`` when something of ours disappears from
the kernel (our device, a neighbour or FDB entry on it, a route carrying our protocol)."""

from __future__ import annotations

import logging
import select
import threading
from collections.abc import Callable

from netweft.backends.base import RTPROT_NETWEFT, Watched

log = logging.getLogger("netweft.agent")


class NetlinkWatcher:
    """``watched()`` names what to follow (read at every message: it changes when the device
    is recreated); ``poke()`` is called from the watcher's thread."""

    def __init__(self, netns: str | None, watched: Callable[[], Watched],
                 poke: Callable[[], None]) -> None:
        self.netns = netns
        self.watched = watched
        self.poke = poke
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="netlink-events", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=3)

    def _run(self) -> None:
        from pyroute2 import IPRoute
        from pyroute2.netlink.rtnl import RTMGRP_IPV4_ROUTE, RTMGRP_LINK, RTMGRP_NEIGH

        ipr = IPRoute(netns=self.netns) if self.netns else IPRoute()
        try:
            ipr.bind(groups=RTMGRP_LINK | RTMGRP_NEIGH | RTMGRP_IPV4_ROUTE)
            while not self._stop.is_set():
                ready, _, _ = select.select([ipr], [], [], 0.5)
                if not ready:
                    continue
                relevant = False
                w = self.watched()
                for msg in ipr.get():
                    event = msg.get("event")
                    if event == "RTM_DELLINK":
                        relevant |= msg.get_attr("IFLA_IFNAME") == w.device
                    elif event == "RTM_DELNEIGH":
                        relevant |= (w.neighbour_index is not None
                                     and msg.get("ifindex") == w.neighbour_index)
                    elif event == "RTM_DELROUTE":
                        relevant |= msg.get("proto") == RTPROT_NETWEFT
                if relevant:
                    self.poke()
        except Exception as exc:  # noqa: BLE001 - the periodic pass still covers us
            log.warning("netlink event listener stopped: %s", exc)
        finally:
            ipr.close()
