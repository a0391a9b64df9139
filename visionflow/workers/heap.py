"""Handing freed heap memory back to the operating system in long-lived processes.

A process that runs for weeks with many threads (the main process has the status board, the
scheduler, the status writer, the reconciler) frees most of what it allocates, but glibc
keeps freed chunks in per-thread arenas and returns them to the OS only when the top of a heap
is free: resident memory creeps up by fragmentation, not by live objects (the soak's heap
snapshots, ``bench/soak.py --tracemalloc``, found no Python-level growth to account for it).
``malloc_trim(0)`` gives every arena's free pages back; it costs well under a millisecond on
these heaps, so each process calls it once a minute.  Where the C library has no
``malloc_trim`` (musl, macOS) nothing happens.
"""

from __future__ import annotations

import ctypes
import functools
import time
from collections.abc import Callable

TRIM_INTERVAL_S = 60.0


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    try:
        libc = ctypes.CDLL(None)
        trim = libc.malloc_trim
    except (OSError, AttributeError):
        return None
    trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    return trim  # type: ignore[no-any-return]


def trim_heap() -> bool:
    """Return free heap pages to the OS now; False where there is no ``malloc_trim`` (or
    nothing could be given back)."""
    trim = _malloc_trim()
    return bool(trim(0)) if trim is not None else False


class HeapTrimmer:
    """Calls :func:`trim_heap` at most once per ``interval_s`` (from a loop that runs anyway)."""

    def __init__(
        self, interval_s: float = TRIM_INTERVAL_S, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.interval_s, self.clock = interval_s, clock
        self._next = clock() + interval_s
        self.trims = 0

    def maybe_trim(self) -> bool:
        """Trim if the interval has passed; True when a trim ran."""
        now = self.clock()
        if now < self._next:
            return False
        self._next = now + self.interval_s
        self.trims += 1
        trim_heap()
        return True
