"""The peer reconciler's loop (daemon/peers.py): when lease events reach the kernel.

The backend here is host-gw's pure desired-state logic with ``apply`` recording instead of
touching the kernel (a pure-logic unit test of the loop's scheduling; the kernel side is
tests/backends/test_backends_kernel.py).
"""

from __future__ import annotations

import asyncio
from ipaddress import IPv4Address, IPv4Network

from netweft.backends.base import Changes
from netweft.daemon.kernel import KernelWorker
from netweft.daemon.metrics import Metrics
from netweft.daemon.peers import PeerReconciler
from netweft.ipam.config import parse_config
from netweft.ipam.lease import Lease
from netweft.ipam.leases import LeaseEvent
from support.fake_backend import InlineKernel, RecordingHostGw


def lease(n: int) -> Lease:
    return Lease(IPv4Network(f"10.244.{n}.0/24"), IPv4Address(f"192.0.2.{10 + n}"), "host-gw",
                 etcd_lease_id=1)


async def _started(backend: RecordingHostGw, kernel: KernelWorker) -> PeerReconciler:
    """A reconciler on ``backend`` with our own lease only, after its start-up full pass (as
    the agent runs it before ``run()``)."""
    own = lease(0)
    peers = PeerReconciler(backend, kernel, Metrics(), lambda: own,
                           lambda le: f"/subnets/{le.key_name}", interval=3600,
                           config=parse_config('{"Network": "10.244.0.0/16", '
                                               '"Backend": {"Type": "host-gw"}}'))
    peers.set_leases([own])
    await peers.reconcile_once()
    return peers


async def _run_events(batches: list[list[LeaseEvent]]) -> tuple[RecordingHostGw, int]:
    backend = RecordingHostGw()
    kernel = InlineKernel()
    peers = await _started(backend, kernel)
    task = asyncio.create_task(peers.run())
    try:
        await asyncio.sleep(0)
        for events in batches:
            peers.on_events(events)
        for _ in range(20):  # loop turns, no wall-clock wait
            await asyncio.sleep(0)
        return backend, peers.programmed
    finally:
        task.cancel()
        kernel.shutdown()


def test_a_lease_event_reaches_the_kernel_without_a_coalescing_delay() -> None:
    """The event pass starts within a few turns of the loop (it used to sleep 10 ms first, a
    third of a join's convergence time)."""
    backend, programmed = asyncio.run(_run_events([[LeaseEvent("added", lease(1))]]))
    assert programmed == 1
    assert [r.dst for c in backend.applied for r in c.add_routes] == [
        IPv4Network("10.244.1.0/24")]


def test_events_delivered_together_are_applied_as_one_change() -> None:
    backend, programmed = asyncio.run(_run_events([[LeaseEvent("added", lease(1)),
                                                    LeaseEvent("added", lease(2))]]))
    assert programmed == 2
    assert len(backend.applied) == 1
    assert sorted(r.dst for r in backend.applied[0].add_routes) == [
        IPv4Network("10.244.1.0/24"), IPv4Network("10.244.2.0/24")]


def test_peers_programmed_follows_removals_and_unreachable_peers() -> None:
    off_link = Lease(IPv4Network("10.244.3.0/24"), IPv4Address("198.51.100.3"), "host-gw",
                     etcd_lease_id=1)  # host-gw cannot reach it: never counted as programmed
    _, programmed = asyncio.run(_run_events([
        [LeaseEvent("added", lease(1)), LeaseEvent("added", lease(2))],
        [LeaseEvent("removed", lease(1)), LeaseEvent("added", off_link)]]))
    assert programmed == 1


def test_the_valid_view_patched_per_event_equals_a_full_check() -> None:
    """Events usually patch the valid view (no whole-view check per event); whatever the
    events, the view equals the leases checked from scratch, and the queued changes turn the
    old view into the new one."""
    import random

    from netweft.ipam.leasecheck import check_leases

    cfg = parse_config('{"Network": "10.244.0.0/16", "Backend": {"Type": "host-gw"}}')
    own = lease(0)
    peers = PeerReconciler(RecordingHostGw(), InlineKernel(), Metrics(), lambda: own,
                           lambda le: f"/subnets/{le.key_name}", interval=3600, config=cfg)
    peers.set_leases([own])
    pool = [lease(n) for n in range(1, 12)] + [
        Lease(IPv4Network("10.245.1.0/24"), IPv4Address("192.0.2.50"), "host-gw",
              etcd_lease_id=1),  # outside the network
        Lease(IPv4Network("10.244.5.0/25"), IPv4Address("192.0.2.51"), "host-gw",
              etcd_lease_id=1),  # wrong length
        Lease(IPv4Network("10.244.6.0/24"), IPv4Address("192.0.2.99"), "host-gw",
              etcd_lease_id=2)]  # a new version of lease 6
    rng = random.Random(12)
    programmed: dict[str, Lease] = {}
    for _ in range(300):
        batch = [LeaseEvent(rng.choice(["added", "added", "removed"]), rng.choice(pool))
                 for _ in range(rng.randint(1, 3))]
        peers.on_events(batch)
        for key, (_old, new) in peers._pending.items():
            if new is None:
                programmed.pop(key, None)
            else:
                programmed[key] = new
        peers._pending.clear()
        want = {f"/subnets/{le.key_name}": le
                for le in check_leases(cfg, peers.leases.values(), own).valid}
        assert peers.valid == want
        assert programmed == {k: v for k, v in want.items() if v is not own}


def test_an_ordinary_lease_event_does_not_check_the_whole_view_again() -> None:
    cfg = parse_config('{"Network": "10.244.0.0/16", "Backend": {"Type": "host-gw"}}')
    own = lease(0)
    peers = PeerReconciler(RecordingHostGw(), InlineKernel(), Metrics(), lambda: own,
                           lambda le: f"/subnets/{le.key_name}", interval=3600, config=cfg)
    peers.set_leases([own, *(lease(n) for n in range(1, 100))])
    full_checks = []
    real = peers.filter.valid
    peers.filter.valid = lambda *a: full_checks.append(1) or real(*a)  # type: ignore[method-assign]
    peers.on_events([LeaseEvent("added", lease(100)), LeaseEvent("removed", lease(3))])
    assert not full_checks
    assert set(peers._pending) == {"/subnets/10.244.100.0-24", "/subnets/10.244.3.0-24"}


class ThreadRecordingHostGw(RecordingHostGw):
    """Records the thread each ``apply`` ran on."""

    def __init__(self) -> None:
        super().__init__()
        self.threads: list[int] = []

    def apply(self, changes: Changes) -> list[str]:
        import threading

        self.threads.append(threading.get_ident())
        return super().apply(changes)


def test_a_small_lease_event_is_applied_on_the_loop_thread_without_a_hop() -> None:
    """The thread hop to the kernel worker and back (p50 0.36 ms, p99 5 ms at load 3.5 here)
    is skipped for a lease event's few entries when the kernel is free (issue 12). The first
    event after start-up is an event pass too (it used to run a second full pass, dumping the
    kernel, because the start-up pass left the "full pass wanted" flag set)."""
    import threading

    async def main() -> tuple[ThreadRecordingHostGw, int]:
        backend = ThreadRecordingHostGw()
        kernel = KernelWorker()
        peers = await _started(backend, kernel)
        task = asyncio.create_task(peers.run())
        try:
            peers.on_events([LeaseEvent("added", lease(1))])
            for _ in range(500):
                if peers.programmed:
                    break
                await asyncio.sleep(0.01)
            assert peers.reconciles == 1  # the start-up pass only
            return backend, peers.programmed
        finally:
            task.cancel()
            kernel.shutdown()

    backend, programmed = asyncio.run(main())
    assert programmed == 1
    assert backend.threads == [threading.get_ident()], (backend.threads, backend.applied)


def test_a_short_call_waits_for_a_running_kernel_call_instead_of_overlapping_it() -> None:
    import threading

    async def main() -> list[str]:
        kernel = KernelWorker()
        order: list[str] = []
        release = threading.Event()

        def long_call() -> None:
            order.append("long start")
            release.wait(5)
            order.append("long end")

        def short_call() -> int:
            order.append("short")
            return threading.get_ident()

        try:
            running = asyncio.ensure_future(kernel.call(long_call))
            while not order:
                await asyncio.sleep(0.001)
            short = asyncio.ensure_future(kernel.call_short(short_call))
            await asyncio.sleep(0.05)
            assert not short.done()  # queued behind the long call, not run beside it
            release.set()
            await running
            assert await short != threading.get_ident()  # ran in the kernel thread
            assert kernel.inline_calls == 0
            return order
        finally:
            kernel.shutdown()

    assert asyncio.run(main()) == ["long start", "long end", "short"]
