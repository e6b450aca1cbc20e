"""A fake kernel for the daemon's pure-logic tests of the peer reconciler (daemon/peers.py):
host-gw's real desired-state logic with ``apply`` recording the changes instead of touching the
kernel, and a kernel worker that runs its calls on the loop itself. The kernel side is tested
for real in tests/backends/test_backends_kernel.py."""

from __future__ import annotations

from collections.abc import Callable
from ipaddress import IPv4Address, IPv4Network
from typing import Any, TypeVar

from netweft.backends.base import ActualState, Changes, DeviceInfo, Underlay
from netweft.backends.hostgw import HostGwBackend
from netweft.daemon.kernel import KernelWorker
from netweft.ipam.lease import Lease

T = TypeVar("T")

UNDERLAY = Underlay("eth0", 2, IPv4Address("192.0.2.10"), 1500,
                    (IPv4Network("192.0.2.0/24"),))


class RecordingHostGw(HostGwBackend):
    """host-gw's desired state; ``apply`` records the changes (fake kernel)."""

    def __init__(self) -> None:
        super().__init__(None, UNDERLAY)  # type: ignore[arg-type]
        self.applied: list[Changes] = []

    def apply(self, changes: Changes) -> list[str]:
        self.applied.append(changes)
        return []

    def setup(self, lease: Lease) -> DeviceInfo:
        return DeviceInfo("eth0", 2, 1500)

    def device_present(self) -> bool:
        return True

    def actual(self) -> ActualState:
        return ActualState()


class InlineKernel(KernelWorker):
    """Runs kernel calls on the loop itself (no thread), so loop turns can be counted."""

    async def call(self, fn: Callable[..., T], *args: Any) -> T:
        return fn(*args)
