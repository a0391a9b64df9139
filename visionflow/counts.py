"""Writing the per-minute counts hashes (layout: the end of :mod:`visionflow.schema`).

Every writer of counts (the output stage's ``boxes``, tracking's ``tracks``, ``zone:…`` and
``line:…``) goes through :func:`add_counts`, so they share one convention: ``HINCRBY`` into
``<prefix>:counts:<bucket_start>`` and an ``EXPIRE`` of the retention on every bucket touched.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from visionflow.schema import COUNT_BUCKET_S, count_field, counts_key

#: How long a bucket is kept (seconds) unless the writer is given another retention.
COUNTS_RETENTION_S = 7 * 24 * 3600

#: (bucket start, stream id, label, metric)
CountKey = tuple[int, str, str, str]


def bucket_start(ts: float) -> int:
    """Start (Unix seconds) of the bucket holding time ``ts``."""
    return int(ts // COUNT_BUCKET_S) * COUNT_BUCKET_S


def add_counts(
    pipe: Any, prefix: str, counts: Mapping[CountKey, int], retention_s: int = COUNTS_RETENTION_S
) -> None:
    """Queue ``HINCRBY`` for every count and one ``EXPIRE`` per bucket on a Redis pipeline."""
    buckets: set[int] = set()
    for (bucket, stream_id, label, metric), n in counts.items():
        if n:
            pipe.hincrby(counts_key(prefix, bucket), count_field(stream_id, label, metric), n)
            buckets.add(bucket)
    for bucket in sorted(buckets):
        pipe.expire(counts_key(prefix, bucket), retention_s)
