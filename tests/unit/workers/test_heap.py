"""Giving freed heap back to the OS: once per interval, from a loop that runs anyway."""

from __future__ import annotations

import platform

import pytest

from visionflow.workers.heap import HeapTrimmer, trim_heap


def test_trims_at_most_once_per_interval():
    now = [100.0]
    trimmer = HeapTrimmer(interval_s=60.0, clock=lambda: now[0])
    assert not trimmer.maybe_trim()  # not before the first interval
    now[0] += 59.9
    assert not trimmer.maybe_trim()
    now[0] += 0.2
    assert trimmer.maybe_trim() and trimmer.trims == 1
    assert not trimmer.maybe_trim()  # the next one waits a whole interval again
    now[0] += 60.0
    assert trimmer.maybe_trim() and trimmer.trims == 2


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="malloc_trim is glibc's")
def test_freed_memory_goes_back_to_the_os_on_glibc():
    def rss_kib() -> int:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmRSS"))

    # many small blocks (below the mmap threshold, so they live in the heap), then most freed
    blocks = [bytearray(100_000) for _ in range(600)]
    keep = blocks[-1:]  # one block at the top keeps the heap from shrinking on its own
    del blocks
    before = rss_kib()
    trim_heap()
    after = rss_kib()
    assert keep and before - after > 20_000, f"RSS {before} -> {after} KiB after malloc_trim"


def test_a_full_collection_runs_before_every_tenth_trim():
    now = [0.0]
    collected: list[float] = []
    trimmer = HeapTrimmer(
        interval_s=60.0,
        clock=lambda: now[0],
        collect_every=10,  # the main process's setting (MAIN_COLLECT_EVERY)
        collect=lambda: collected.append(now[0]),
    )
    for _ in range(25):
        now[0] += 60.0
        assert trimmer.maybe_trim()
    assert trimmer.trims == 25
    assert collected == [600.0, 1200.0] and trimmer.collections == 2  # trims 10 and 20


def test_collections_can_be_turned_off():
    now = [0.0]
    trimmer = HeapTrimmer(
        interval_s=1.0, clock=lambda: now[0], collect_every=0, collect=lambda: pytest.fail("no")
    )
    for _ in range(30):
        now[0] += 1.0
        trimmer.maybe_trim()
    assert trimmer.trims == 30 and trimmer.collections == 0


def test_the_full_collection_empties_free_lists_and_cyclic_garbage():
    """What the periodic collection is for: memory that only a full collection gives back
    (tuples parked on CPython's free lists, garbage in reference cycles)."""
    import gc
    import sys

    gc.collect()
    before = sys.getallocatedblocks()
    cycles = []
    for i in range(2000):
        node: dict[str, object] = {"i": i}
        node["self"] = node  # garbage only a collection frees
        cycles.append(node)
    tuples = [tuple(range(n % 19 + 1)) for n in range(20_000)]
    gc.disable()  # as in a process whose oldest generation is not collected for a long time
    try:
        del cycles, tuples  # the tuples go to the free lists, the cycles stay
        kept = sys.getallocatedblocks() - before
        trimmer = HeapTrimmer(interval_s=0.0, collect_every=1)
        assert trimmer.maybe_trim() and trimmer.collections == 1
        left = sys.getallocatedblocks() - before
    finally:
        gc.enable()
    assert kept > 5_000, kept
    assert left < kept / 4, (kept, left)
