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
