"""Cancellation-safe waiting helpers for the daemon's loops (asyncio, Python 3.11)."""

from __future__ import annotations

import asyncio
from typing import Any


async def wait_event(event: asyncio.Event, timeout: float) -> bool:
    """``event.wait()`` for at most ``timeout`` seconds; True when the event is set.

    Unlike ``asyncio.wait_for`` on Python 3.11, a cancellation that races with the event can
    never be swallowed (which would leave the task running after shutdown cancelled it)."""
    if event.is_set():
        return True
    waiter = asyncio.ensure_future(event.wait())
    try:
        done, _ = await asyncio.wait([waiter], timeout=timeout)
    finally:
        waiter.cancel()
    return bool(done)


async def with_timeout(coro: Any, timeout: float) -> Any:
    """Await ``coro`` for at most ``timeout`` seconds (``TimeoutError``), cancellation-safe."""
    task = asyncio.ensure_future(coro)
    try:
        done, _ = await asyncio.wait([task], timeout=timeout)
    finally:
        if not task.done():
            task.cancel()
    if not done:
        raise TimeoutError
    return task.result()
