"""A ChangeSink that records the model state a source drives it to (shared by the source tests)."""

from __future__ import annotations

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

