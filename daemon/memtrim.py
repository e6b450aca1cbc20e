"""Hand freed heap memory back to the kernel after a full pass: glibc's ``malloc_trim(0)``.

A full pass with thousands of peers builds large sets, lists and receive buffers in the kernel
thread's malloc arena; freed, they stay in the process's RSS until the arena is trimmed
(glibc trims only its top, and only past a threshold that grows with use). Measured with
5,000 leases (issue 12, ``bench/daemon_scale.py``): ~1.5-2 MiB of RSS returned per pass, for a
call that takes 0.1-0.25 ms in a process of that size. The function is glibc's public API
(``malloc_trim(3)``), reached through ctypes; where the C library has none (musl), nothing
happens.
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable

_trim: Callable[[int], int] | None = None
_loaded = False


def _load() -> Callable[[int], int] | None:
    try:
        fn = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_size_t]
    fn.restype = ctypes.c_int
    return fn  # type: ignore[no-any-return]


def release_free_memory() -> bool:
    """``malloc_trim(0)``: return free heap pages of every arena to the kernel. True when the C
    library has the call and released something."""
    global _trim, _loaded
    if not _loaded:
        _trim, _loaded = _load(), True
    return bool(_trim is not None and _trim(0))
