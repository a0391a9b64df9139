"""``GET /counts``: per label counts per time bucket, from the minute buckets in Redis.

Layout (:mod:`visionflow.schema`): one hash per minute for every stream,
``<prefix>:counts:<minute_start>``, field ``<stream>|<label>|<metric>`` -> count.  A window
is read in one pipelined round trip: one HGETALL per minute (or HMGET of the exact fields
when streams and labels are both given), then minutes are summed into ``bucket_s`` buckets.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

import redis

from visionflow.schema import COUNT_BUCKET_S, count_field, counts_key

MAX_MINUTES = 7 * 24 * 60  # the longest window: a week of minute hashes


@dataclass(frozen=True)
class CountsQuery:
    window_s: int
    bucket_s: int
    metric: str = "boxes"
    streams: tuple[str, ...] = ()  # empty: every stream
    labels: tuple[str, ...] = ()  # empty: every label
    per_stream: bool = False

    def bucket_starts(self, now: float) -> list[int]:
        """Bucket starts, aligned to multiples of ``bucket_s``, the last holding ``now``."""
        last = int(now // self.bucket_s) * self.bucket_s
        n = max(1, math.ceil(self.window_s / self.bucket_s))
        return [last - (n - 1 - i) * self.bucket_s for i in range(n)]


def check(query: CountsQuery) -> str | None:
    """Why the query is refused (None: fine)."""
    if query.bucket_s < COUNT_BUCKET_S or query.bucket_s % COUNT_BUCKET_S:
        return f"bucket must be a multiple of {COUNT_BUCKET_S} s (got {query.bucket_s})"
    if query.window_s < query.bucket_s:
        return f"window ({query.window_s} s) must be at least one bucket ({query.bucket_s} s)"
    if query.window_s > MAX_MINUTES * COUNT_BUCKET_S:
        return f"window must be at most {MAX_MINUTES * COUNT_BUCKET_S} s (a week)"
    return None


def read_counts(client: redis.Redis, prefix: str, query: CountsQuery, now: float) -> dict[str, Any]:
    starts = query.bucket_starts(now)
    minutes = range(starts[0], starts[-1] + query.bucket_s, COUNT_BUCKET_S)
    fields = [count_field(s, label, query.metric) for s in query.streams for label in query.labels]
    pipe = client.pipeline(transaction=False)
    for minute in minutes:
        key = counts_key(prefix, minute)
        pipe.hmget(key, fields) if fields else pipe.hgetall(key)
    replies = pipe.execute()
    wanted_streams, wanted_labels = set(query.streams), set(query.labels)
    series: dict[tuple[str, str | None], list[int]] = defaultdict(lambda: [0] * len(starts))
    for minute, reply in zip(minutes, replies, strict=True):
        pairs = zip(fields, reply, strict=True) if fields else reply.items()
        index = (minute - starts[0]) // query.bucket_s
        for raw_field, raw_value in pairs:
            if raw_value is None:
                continue
            stream, label, metric = _text(raw_field).split("|", 2)
            if metric != query.metric or (wanted_streams and stream not in wanted_streams):
                continue
            if wanted_labels and label not in wanted_labels:
                continue
            series[(label, stream if query.per_stream else None)][index] += int(_text(raw_value))
    rows: list[dict[str, Any]] = []
    totals: dict[str, int] = defaultdict(int)
    for (label, sid), counts in sorted(series.items(), key=_series_order):
        rows.append({"label": label, "stream": sid, "counts": counts, "total": sum(counts)})
        totals[label] += sum(counts)
    return {
        "metric": query.metric,
        "window_s": query.window_s,
        "bucket_s": query.bucket_s,
        "buckets": starts,
        "series": rows,
        "totals": dict(totals),
    }


def _series_order(item: tuple[tuple[str, str | None], list[int]]) -> tuple[str, str]:
    (label, stream), _ = item
    return label, stream or ""


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
