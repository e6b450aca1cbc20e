"""proxy/gcpause.py: overlapping pauses of the cyclic collector (the two reflectors' lists
across awaits, a sync inside) turn it back on only when the last ends, and only if it was on."""

from __future__ import annotations

import asyncio
import gc

from netweft.proxy.gcpause import gc_paused


def test_overlapping_pauses_resume_the_collector_after_the_last() -> None:
    assert gc.isenabled()
    seen: list[bool] = []

    async def lister(delay: float) -> None:
        with gc_paused():
            await asyncio.sleep(delay)
            seen.append(gc.isenabled())

    async def main() -> None:
        await asyncio.gather(lister(0.01), lister(0.05))

    asyncio.run(main())
    assert seen == [False, False]
    assert gc.isenabled()


def test_a_collector_that_was_off_stays_off() -> None:
    gc.disable()
    try:
        with gc_paused(), gc_paused():
            pass
        assert not gc.isenabled()
    finally:
        gc.enable()
