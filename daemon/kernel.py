"""The one worker thread the daemon's long netlink work runs in, and the lock every kernel call
holds.

pyroute2 0.9's synchronous ``IPRoute`` drives a private event loop per call, so it cannot run on
the daemon's loop; one thread also serialises every kernel change (reconcile passes, device
setup, teardown). Short calls (a lease event's few neighbour/FDB/route messages, well under a
millisecond) may instead run on the loop thread itself (:meth:`KernelWorker.call_short`): the
hop to the worker thread and back cost p50 0.36 ms / p99 5.4 ms on this 2-core machine at load
3.5 (a sleeping thread has to be woken twice), a large part of a vxlan join's convergence
(issue 12). One lock, held by whichever thread talks to the kernel, keeps the two paths from
ever using the shared netlink socket at the same time.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

T = TypeVar("T")


class KernelWorker:
    """``await worker.call(fn, *args)`` runs ``fn(*args)`` in the kernel thread and returns
    its result (its exceptions propagate); ``await worker.call_short(fn, *args)`` runs it on
    the calling (loop) thread when no other call holds the kernel, else like ``call``."""

    def __init__(self) -> None:
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="netlink")
        self._lock = threading.Lock()
        self.inline_calls = 0  # how many call_short calls ran on the loop thread (tests read it)

    def _locked(self, fn: Callable[..., T], *args: Any) -> T:
        with self._lock:
            return fn(*args)

    async def call(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)`` in the kernel thread (for dumps, full passes, device setup)."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._locked, fn, *args)

    async def call_short(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)`` for work known to take well under a millisecond: on this thread at once
        when the kernel is free (no hop; it blocks the event loop for that long), else queued
        behind the running call in the kernel thread. Never concurrent with another call."""
        if self._lock.acquire(blocking=False):
            try:
                self.inline_calls += 1
                return fn(*args)
            finally:
                self._lock.release()
        return await self.call(fn, *args)

    def shutdown(self) -> None:
        """Stop accepting calls (a running one finishes in the background)."""
        self._executor.shutdown(wait=False)
