"""Bounded polling for tests and benchmarks: the one place tests wait for a condition.

These are hang guards, not timing assertions: every wait has a generous deadline in seconds and
fails with a message naming what never happened.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import Any


def poll_until(cond: Callable[[], Any], timeout: float, interval: float = 0.1) -> Any:
    """``cond()``'s first truthy value within ``timeout`` seconds (checked every ``interval``
    seconds, and once more at the deadline), else None."""
    deadline = time.monotonic() + timeout
    while True:
        value = cond()
        if value:
            return value
        if time.monotonic() >= deadline:
            return None
        time.sleep(interval)


def wait_for(cond: Callable[[], Any], timeout: float = 20.0, interval: float = 0.1,
             what: str = "condition") -> Any:
    """Like :func:`poll_until`, but raises ``TimeoutError`` naming ``what`` when ``cond()``
    stays falsy for ``timeout`` seconds."""
    value = poll_until(cond, timeout, interval)
    if not value:
        raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")
    return value


async def eventually(check: Callable[[], Awaitable[bool] | bool], what: str,
                     deadline: float = 60.0, interval: float = 0.02) -> None:
    """Await until ``check()`` (plain or async) holds, checking every ``interval`` seconds;
    raises ``AssertionError`` naming ``what`` after ``deadline`` seconds."""
    loop = asyncio.get_running_loop()
    end = loop.time() + deadline

    async def holds() -> bool:
        result = check()
        return bool(await result) if inspect.isawaitable(result) else bool(result)

    while not await holds():
        if loop.time() > end:
            raise AssertionError(f"never reached: {what}")
        await asyncio.sleep(interval)
