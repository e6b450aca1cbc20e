"""Read a lab node's kernel state (routes, neighbours, FDB, links) as JSON from iproute2."""

from __future__ import annotations

import json
import subprocess
from typing import Any


def _json(cmd: list[str]) -> list[dict[str, Any]]:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=10)
    if proc.returncode != 0:
        return []
    out = proc.stdout.strip()
    return json.loads(out) if out else []


def routes(ns: str) -> list[dict[str, Any]]:
    return _json(["ip", "-n", ns, "-j", "route", "show"])


def route_to(ns: str, dst: str) -> dict[str, Any] | None:
    """The route whose destination is exactly ``dst`` (a network, e.g. "10.244.3.0/24")."""
    for r in routes(ns):
        if r.get("dst") == dst:
            return r
    return None


def neighbours(ns: str, dev: str) -> list[dict[str, Any]]:
    return _json(["ip", "-n", ns, "-j", "neigh", "show", "dev", dev])


def fdb(ns: str, dev: str) -> list[dict[str, Any]]:
    return _json(["bridge", "-n", ns, "-j", "fdb", "show", "dev", dev])


def link(ns: str, dev: str) -> dict[str, Any] | None:
    found = _json(["ip", "-n", ns, "-j", "-d", "link", "show", "dev", dev])
    return found[0] if found else None


def has_peer(ns: str, dev: str | None, subnet: str, vtep_mac: str | None) -> dict[str, bool]:
    """Which of route / neighbour / FDB entry for one peer are present on a node."""
    gw = subnet.split("/")[0]
    state = {"route": route_to(ns, subnet) is not None}
    if dev is not None:
        state["neigh"] = any(n.get("dst") == gw for n in neighbours(ns, dev))
        state["fdb"] = any(f.get("mac") == vtep_mac for f in fdb(ns, dev)) if vtep_mac else False
    return state
