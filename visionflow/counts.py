"""Writing the per-minute counts hashes (layout: the end of :mod:`visionflow.schema`).

Every writer of counts (the output stage's ``boxes`` in :mod:`visionflow.workers.counts`,
tracking's ``tracks``, ``zone:…`` and ``line:…`` in :mod:`visionflow.tracking.sink`) keeps
its increments as :data:`CountKey` s, buckets them with :func:`bucket_start` and turns them
into Redis writes with :func:`count_writes`, so they share one convention: ``HINCRBY`` into
``<prefix>:counts:<bucket_start>`` and an ``EXPIRE`` of the retention on every bucket touched.
:func:`add_counts` queues those writes on a pipeline; the events sink sends the same list
inside its one Lua script per round.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from visionflow.schema import COUNT_BUCKET_S, count_field, counts_key

#: How long a bucket is kept (seconds) unless the writer is given another retention.
COUNTS_RETENTION_S = 7 * 24 * 3600

#: (bucket start, stream id, label, metric)
CountKey = tuple[int, str, str, str]


def bucket_start(ts: float, bucket_s: int = COUNT_BUCKET_S) -> int:
    """Start (Unix seconds) of the bucket holding time ``ts``."""
    return int(ts // bucket_s) * bucket_s


def count_writes(
    prefix: str, counts: Mapping[CountKey, int]
) -> tuple[list[tuple[str, str, int]], list[str]]:
    """The ``HINCRBY`` s ``(key, field, n)`` of ``counts`` and the bucket keys to ``EXPIRE``."""
    incrs: list[tuple[str, str, int]] = []
    buckets: set[int] = set()
    for (bucket, stream_id, label, metric), n in counts.items():
        if n:
            incrs.append((counts_key(prefix, bucket), count_field(stream_id, label, metric), n))
            buckets.add(bucket)
    return incrs, [counts_key(prefix, b) for b in sorted(buckets)]


def add_counts(
    pipe: Any, prefix: str, counts: Mapping[CountKey, int], retention_s: int = COUNTS_RETENTION_S
) -> None:
    """Queue ``HINCRBY`` for every count and one ``EXPIRE`` per bucket on a Redis pipeline."""
    incrs, keys = count_writes(prefix, counts)
    for key, field, n in incrs:
        pipe.hincrby(key, field, n)
    for key in keys:
        pipe.expire(key, retention_s)
