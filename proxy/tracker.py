"""The change tracker: the proxy's ChangeSink. It keeps the latest Service and endpoints of every
service and marks a service dirty only when what the proxy renders from it actually changed;
the runner takes the dirty set at its own (rate-limited) pace, so bursts coalesce."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from netweft.proxy.model import Endpoint, Service, ServiceKey


def _canonical(endpoints: tuple[Endpoint, ...]) -> tuple[Endpoint, ...]:
    return tuple(sorted(endpoints, key=lambda e: (e.address, e.node or "", e.ports)))


@dataclass(frozen=True)
class Batch:
    """What changed since the last take: services to re-render (absent ones are deleted)."""
    keys: frozenset[ServiceKey]
    full: bool                      # the first batch after the initial list


class ChangeTracker:
    def __init__(self, on_change: Callable[[], None] | None = None) -> None:
        self.services: dict[ServiceKey, Service] = {}
        self.endpoints: dict[ServiceKey, tuple[Endpoint, ...]] = {}
        self.dirty: set[ServiceKey] = set()
        self.is_synced = False
        self._full_pending = True
        self._on_change = on_change or (lambda: None)

    def _mark(self, key: ServiceKey) -> None:
        self.dirty.add(key)
        self._on_change()

    # -- ChangeSink ----------------------------------------------------------------------------
    def service_updated(self, service: Service) -> None:
        if self.services.get(service.key) != service:
            self.services[service.key] = service
            self._mark(service.key)

    def service_deleted(self, key: ServiceKey) -> None:
        if self.services.pop(key, None) is not None:
            self._mark(key)

    def endpoints_updated(self, key: ServiceKey, endpoints: tuple[Endpoint, ...]) -> None:
        canon = _canonical(endpoints)
        old = self.endpoints.get(key, ())
        if canon == old:
            return
        if canon:
            self.endpoints[key] = canon
        else:
            self.endpoints.pop(key, None)
        if key in self.services:
            self._mark(key)

    def synced(self) -> None:
        if not self.is_synced:
            self.is_synced = True
            self._on_change()

    # -- runner side ---------------------------------------------------------------------------
    @property
    def pending(self) -> bool:
        return self.is_synced and (bool(self.dirty) or self._full_pending)

    def take(self) -> Batch:
        """The dirty services (all services for the first batch), clearing the marks."""
        full = self._full_pending
        keys = frozenset(self.services) | frozenset(self.dirty) if full else frozenset(self.dirty)
        self.dirty = set()
        self._full_pending = False
        return Batch(keys, full)

    def request_full(self) -> None:
        """Make the next batch a full one (after a failed transaction)."""
        self._full_pending = True
        self._on_change()
