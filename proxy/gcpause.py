"""Pause Python's cyclic garbage collector over a burst of allocations.

A full list from the API or a full sync allocates hundreds of thousands of small containers,
none of them cyclic; with the collector on, each few hundred allocations trigger a collection
that walks the whole (growing) heap, which makes the burst superlinear (measured: decoding two
3,000-object lists took 0.6 s of the proxy's CPU with collections, ~0.03 s without). Nested and
overlapping pauses (the Services and EndpointSlices reflectors list at the same time, across
awaits) are counted: the collector is turned back on when the last one ends, and only if it was
on when the first began. Only for the event-loop thread."""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator

_depth = 0
_resume = False


@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
    """Within the block the cyclic collector does not run (reference counting still frees)."""
    global _depth, _resume
    if _depth == 0:
        _resume = gc.isenabled()
        gc.disable()
    _depth += 1
    try:
        yield
    finally:
        _depth -= 1
        if _depth == 0 and _resume:
            gc.enable()
