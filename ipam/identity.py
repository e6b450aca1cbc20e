"""A node's stable identity: a random id kept in its state directory (``<state-dir>/node-id``).

The id is recorded in the node's lease (``NetweftNodeID``, see ``ipam/lease.py``), so a lease
is recognised as ours by who wrote it, not by the public IP it names (which changes, and which
another node can be misconfigured with: issue 9 items 4 and 11). Flannel has no such field; it
matches leases by PublicIP only.
"""

from __future__ import annotations

import os
import re
import uuid
from dataclasses import dataclass

from netweft.common.atomicfile import write_atomic

NODE_ID_FILE = "node-id"
_ID_RE = re.compile(r"^[0-9a-f]{32}$")


class IdentityError(Exception):
    """The identity file cannot be read or written (one line naming the file)."""


@dataclass(frozen=True)
class NodeIdentity:
    """The node id (32 lowercase hex digits), whether this start made it, and the file it lives in.
    """

    node_id: str   # 32 lowercase hex digits
    created: bool  # made by this start: first start, or a node that lost its state directory
    path: str


def load_or_create(state_dir: str) -> NodeIdentity:
    """The identity kept in ``state_dir``, created (atomically, mode 0644) when absent.

    Raises :class:`IdentityError` when the file holds something else than an id or the
    directory is not writable. Two daemons racing to create it both end up with the first
    one written (``os.link`` refuses to replace an existing file).
    """
    path = os.path.join(state_dir, NODE_ID_FILE)
    existing = _read(path)
    if existing is not None:
        return NodeIdentity(existing, False, path)
    node_id = uuid.uuid4().hex
    try:
        try:
            write_atomic(path, node_id + "\n", 0o644, replace=False)
        except FileExistsError:
            winner = _read(path)
            if winner is None:
                raise IdentityError(f"{path}: not a node identity") from None
            return NodeIdentity(winner, False, path)
    except OSError as exc:
        raise IdentityError(f"{path}: {exc.strerror or exc}") from None
    return NodeIdentity(node_id, True, path)


def _read(path: str) -> str | None:
    try:
        with open(path, encoding="ascii", errors="replace") as f:
            text = f.read().strip()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise IdentityError(f"{path}: {exc.strerror or exc}") from None
    if not _ID_RE.match(text):
        raise IdentityError(f"{path}: not a node identity (32 hex digits); remove it to make "
                            "a new one")
    return text
