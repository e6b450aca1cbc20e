"""The contract between a source and the proxy's change tracker."""

from __future__ import annotations

from typing import Protocol

from netweft.proxy.model import Endpoint, Service, ServiceKey


class ChangeSink(Protocol):
    """What a source reports to. Calls are cheap: the tracker only marks services dirty."""

    def service_updated(self, service: Service) -> None: ...

    def service_deleted(self, key: ServiceKey) -> None: ...

    def endpoints_updated(self, key: ServiceKey, endpoints: tuple[Endpoint, ...]) -> None:
        """The complete endpoint set of a service (all its EndpointSlices merged); () for none."""

    def synced(self) -> None:
        """The initial list (or a re-list after a resync) is complete."""


class Source(Protocol):
    async def run(self, sink: ChangeSink) -> None:
        """List, report everything, then watch and report changes, forever (retrying on errors)."""
