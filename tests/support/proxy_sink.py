"""A ChangeSink that records the model state a source drives it to (shared by the source tests)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from netweft.proxy.model import Endpoint, Service, ServiceKey


class RecordingSink:
    def __init__(self) -> None:
        self.services: dict[ServiceKey, Service] = {}
        self.endpoints: dict[ServiceKey, tuple[Endpoint, ...]] = {}
        self.synced_count = 0
        self.calls = 0

    def service_updated(self, service: Service) -> None:
        self.calls += 1
        self.services[service.key] = service

    def service_deleted(self, key: ServiceKey) -> None:
        self.calls += 1
        assert key in self.services, f"deleted {key} that was never reported"
        del self.services[key]

    def endpoints_updated(self, key: ServiceKey, endpoints: tuple[Endpoint, ...]) -> None:
        self.calls += 1
        if endpoints:
            self.endpoints[key] = endpoints
        else:
            self.endpoints.pop(key, None)

    def synced(self) -> None:
        self.synced_count += 1


async def eventually(check: Callable[[], bool], what: str, deadline: float = 60.0) -> None:
    """Wait until ``check()`` holds; fail after ``deadline`` seconds (a hang guard, not a timing
    assertion)."""
    loop = asyncio.get_running_loop()
    end = loop.time() + deadline
    while not check():
        if loop.time() > end:
            raise AssertionError(f"never reached: {what}")
        await asyncio.sleep(0.02)
