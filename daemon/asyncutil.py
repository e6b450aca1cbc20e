"""Cancellation-safe waiting helpers for the daemon's loops (asyncio, Python 3.11)."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from netweft.daemon.errors import AgentError


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


async def cancel_all(tasks: set[asyncio.Task[Any]], attempts: int = 10,
                     timeout: float = 1.0) -> set[asyncio.Task[Any]]:
    """Cancel ``tasks`` and wait up to ``timeout`` seconds per attempt for them to end; a task
    that swallowed one cancellation gets another (``attempts`` in all). Returns the tasks that
    still did not stop (empty: all did)."""
    pending = set(tasks)
    for _attempt in range(attempts):
        if not pending:
            break
        for task in pending:
            task.cancel()
        _done, pending = await asyncio.wait(pending, timeout=timeout)
    return pending


async def unless_stopped(coro: Any, stop: asyncio.Future[Any]) -> bool:
    """Run ``coro`` unless ``stop`` completes first (then it is cancelled and False is
    returned; also its errors are dropped). True when it finished; its exception propagates."""
    task = asyncio.ensure_future(coro)
    done, _ = await asyncio.wait([task, stop], return_when=asyncio.FIRST_COMPLETED)
    if task not in done:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task
        return False
    task.result()
    return True


async def until_one_ends(stop: asyncio.Future[Any], tasks: list[asyncio.Task[Any]]) -> None:
    """Wait until ``stop`` completes (return) or one of the never-ending ``tasks`` ends: its
    exception propagates, else AgentError names the loop (``internal error: the <task name>
    loop stopped``)."""
    done, _ = await asyncio.wait([stop, *tasks], return_when=asyncio.FIRST_COMPLETED)
    for task in done - {stop}:
        if not task.cancelled() and task.exception() is not None:
            raise task.exception()  # type: ignore[misc]
        raise AgentError(f"internal error: the {task.get_name()} loop stopped")
