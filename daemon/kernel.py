"""The one worker thread every netlink call of the daemon runs in.

pyroute2 0.9's synchronous ``IPRoute`` drives a private event loop per call, so it cannot run on
the daemon's loop; one thread also serialises every kernel change (reconcile passes, device
setup, teardown) without locks. Calls take well under a millisecond each.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

T = TypeVar("T")


class KernelWorker:
    """``await worker.call(fn, *args)`` runs ``fn(*args)`` in the kernel thread and returns
    its result (its exceptions propagate)."""

    def __init__(self) -> None:
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="netlink")

    async def call(self, fn: Callable[..., T], *args: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, fn, *args)

    def shutdown(self) -> None:
        """Stop accepting calls (a running one finishes in the background)."""
        self._executor.shutdown(wait=False)
