"""Handing freed heap memory back to the operating system in long-lived processes.

A process that runs for weeks with many threads (the main process has the status board, the
scheduler, the status writer, the reconciler) frees most of what it allocates, but glibc
keeps freed chunks in per-thread arenas and returns them to the OS only when the top of a heap
is free: resident memory creeps up by fragmentation, not by live objects (the soak's heap
snapshots, ``bench/soak.py --tracemalloc``, found no Python-level growth to account for it).
``malloc_trim(0)`` gives every arena's free pages back; it costs well under a millisecond on
these heaps, so each process calls it once a minute.  Where the C library has no
``malloc_trim`` (musl, macOS) nothing happens.

A trimmer can also run a full garbage collection before every ``collect_every`` trims (off
by default, :data:`COLLECT_EVERY`; the main process turns it on every ten minutes).
CPython collects its oldest generation only once the objects that survived the younger ones
reach a quarter of the long-lived ones: the main process (~400k long-lived objects) did so
once in a 36-minute soak, at start-up.  Until then cyclic garbage stays and the free lists
keep what they hold (up to 2,000 freed tuples of each length 1..19, lists, dicts, floats):
the soak saw CPython's small-object heap grow ~1 MiB/h with no object type growing, and a
full collection every ten minutes gave back ~0.5 MB each time and kept it flat (blocks go
back to pymalloc's pools for reuse; an arena returns to the OS only once wholly free).  A full
collection of that heap costs ~65 ms of CPU, once per ten minutes.  It did not lower that
soak's RSS slope (a new pymalloc arena still came), and in an ingest or inference process a
65 ms pause with the GIL held stalls frames, so only the main process collects.
"""

from __future__ import annotations

import ctypes
import functools
import gc
import time
from collections.abc import Callable

TRIM_INTERVAL_S = 60.0
COLLECT_EVERY = 0  # trims between full garbage collections by default (0: never)
MAIN_COLLECT_EVERY = 10  # the main process's (ten minutes)


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
        self,
        interval_s: float = TRIM_INTERVAL_S,
        clock: Callable[[], float] = time.monotonic,
        collect_every: int = COLLECT_EVERY,
        collect: Callable[[], object] = gc.collect,
    ) -> None:
        """``collect_every``: a full garbage collection (``collect``) before every that many
        trims (0: never)."""
        self.interval_s, self.clock = interval_s, clock
        self.collect_every, self._collect = collect_every, collect
        self._next = clock() + interval_s
        self.trims = 0
        self.collections = 0

    def maybe_trim(self) -> bool:
        """Trim if the interval has passed (after a full collection every ``collect_every``
        trims); True when a trim ran."""
        now = self.clock()
        if now < self._next:
            return False
        self._next = now + self.interval_s
        self.trims += 1
        if self.collect_every and self.trims % self.collect_every == 0:
            self.collections += 1
            self._collect()
        trim_heap()
        return True
