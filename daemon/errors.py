"""The daemon's one user-facing error type."""

from __future__ import annotations


class AgentError(Exception):
    """The agent cannot start or keep running; the message is one line a person can act on
    (``netweft daemon`` prints it and exits 1)."""
