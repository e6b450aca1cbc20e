"""Exponential backoff with jitter for loops that retry forever (watches, sources)."""

from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass, field


@dataclass
class Backoff:
    """Exponential backoff with jitter for retries: delays in seconds from ``initial`` growing by
    ``factor`` up to ``maximum``, each 0.5-1.0 times the nominal value."""

    initial: float = 0.5
    maximum: float = 30.0
    factor: float = 2.0
    _next: float = field(default=0.0, init=False)

    def reset(self) -> None:
        """Start over at ``initial`` (after a success)."""
        self._next = 0.0

    def delay(self) -> float:
        """The next delay (0.5-1.0 x the nominal value), growing up to ``maximum``."""
        nominal = self.initial if self._next == 0.0 else min(self._next * self.factor, self.maximum)
        self._next = nominal
        return nominal * random.uniform(0.5, 1.0)

    async def wait(self) -> None:
        """Sleep for the next :meth:`delay` (seconds)."""
        await asyncio.sleep(self.delay())
