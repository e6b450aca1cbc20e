"""Session-affinity state across a full nftables reload (issue 9, item 2).

A full load replaces the ``ip netweft-proxy`` table in one transaction (``add table; delete
table; table {...}``), which would also empty the dynamic ``aff-<h>-<b>`` sets that remember
which endpoint each client of a sessionAffinity ClientIP service sticks to. Kubernetes promises
a client stays on its endpoint for ``timeoutSeconds`` (kube-proxy's ``recent`` lists and
nftables affinity sets survive its syncs), so before a full load the proxy reads the affinity
sets the kernel holds and the same transaction puts every client back with the time it had left.

Set names are a hash of (service, port, frontend kind, timeout) and of the endpoint
(``nftables.affinity_objects``), so a set of the new table with the name of an old one means the
same service, endpoint and timeout: only those are carried. A client that connects in the few
milliseconds between the read and the load is not carried (its next connection picks afresh).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from netweft.backends.nft.tx import Element
from netweft.proxy.nftables import AFFINITY_PREFIX


@dataclass(frozen=True)
class AffinityEntry:
    """One remembered client: its IPv4 address and the seconds left before it is forgotten."""
    client: str
    expires: int


def parse_affinity_sets(listing: Mapping[str, Any] | str) -> dict[str, tuple[AffinityEntry, ...]]:
    """The affinity sets in ``nft -j list sets table ip netweft-proxy`` output (the JSON text or
    its parsed object, libnftables JSON schema 1): ``{set name: entries}``, only sets named
    ``aff-...``, only elements with time left. Raises ValueError on text that is not that JSON.
    """
    doc = json.loads(listing) if isinstance(listing, str) else listing
    try:
        items = doc["nftables"]
    except (KeyError, TypeError) as exc:
        raise ValueError("not an nft JSON listing (no 'nftables' list)") from exc
    out: dict[str, tuple[AffinityEntry, ...]] = {}
    for item in items:
        s = item.get("set") if isinstance(item, dict) else None
        if not s or not str(s.get("name", "")).startswith(AFFINITY_PREFIX):
            continue
        entries = []
        for e in s.get("elem", ()):
            elem = e.get("elem") if isinstance(e, dict) else None
            if not isinstance(elem, dict):
                continue                      # an element without timeout: not ours
            expires = int(elem.get("expires", 0))
            if expires > 0 and isinstance(elem.get("val"), str):
                entries.append(AffinityEntry(elem["val"], expires))
        out[s["name"]] = tuple(entries)
    return out


def carry_elements(timeouts: Mapping[str, int],
                   current: Mapping[str, Iterable[AffinityEntry]]) -> dict[str, list[Element]]:
    """The elements putting ``current`` clients back into the sets of the new table:
    {set name: elements}. ``timeouts``: {affinity set of the new table: its timeout in seconds};
    sets the new table does not have are dropped (their service or endpoint is gone); a client
    keeps its remaining time (never more than the set's timeout)."""
    out: dict[str, list[Element]] = {}
    for name in sorted(current):
        timeout = timeouts.get(name)
        if timeout is None:
            continue
        items = [Element(e.client, timeout=timeout, expires=min(e.expires, timeout))
                 for e in current[name]]
        if items:
            out[name] = items
    return out
