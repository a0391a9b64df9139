"""Per-stream, per-stage latency: fixed-bucket histograms plus a bounded recent window.

The output process observes every written detections entry's ``latency_ms`` (the stages of
:func:`visionflow.schema.encode_entry`: decode, queue, inference, publish, total) once Redis
holds it.  Each stage of each stream keeps

- cumulative counts in fixed buckets (:data:`BUCKETS_MS`, upper bounds in ms, "less than or
  equal", Prometheus style; the implicit ``+Inf`` bucket is ``count``), with ``count`` and
  ``sum``, since the output process started (a restarted output process starts from zero);
- the last :data:`WINDOW` values, from which ``p50`` and ``p99`` are computed exactly (linear
  interpolation between the two nearest ranks, numpy's default), at most every
  :data:`REFRESH_S` per stream, sorting outside the lock the writer thread takes.  A window
  and not the buckets: the buckets cover the whole run, so their quantiles would hide a change that
  happened a minute ago, and bucket interpolation is off by up to a bucket's width (2.5x).

Snapshots (:class:`StageLatency`) are frozen and picklable: they travel to the status board
inside :class:`~visionflow.workers.messages.OutputStats`.  In the Redis status hash they are
the field ``latency_ms`` (:func:`latency_json`)::

    {stage: {"p50": ms, "p99": ms, "count": n, "sum": ms, "buckets": [[le_ms, cumulative], ...]}}

The same book keeps each inference worker's batch sizes and inference time per batch
(:data:`WORKER_HISTOGRAMS`), fed by the scheduler thread with every finished batch; in the
worker's status hash they are the fields ``batch_size_hist`` and ``inference_ms`` (one
:meth:`StageLatency.to_json` each; for batch sizes the values are frames, not ms).
"""

from __future__ import annotations

import bisect
import json
import math
import threading
import time
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

STAGES = ("decode", "queue", "inference", "publish", "total")
BUCKETS_MS: tuple[float, ...] = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000)
WINDOW = 512  # recent values per stream and stage that p50/p99 are computed from
REFRESH_S = 1.0  # a stream's percentiles are recomputed at most this often

StreamLatency = tuple[tuple[str, "StageLatency"], ...]  # (stage, snapshot) pairs, picklable

# Per inference worker (the scheduler's book, keyed by worker id): frames per batch, and the
# worker's busy time per batch in ms (pre-processing, inference, post-processing)
BATCH_SIZE_BUCKETS: tuple[float, ...] = (1, 2, 4, 8, 16, 32, 64, 128)
WORKER_HISTOGRAMS: dict[str, tuple[float, ...]] = {
    "batch_size": BATCH_SIZE_BUCKETS,
    "inference_ms": BUCKETS_MS,
}


@dataclass(frozen=True)
class StageLatency:
    """One stage of one stream: recent p50/p99, and cumulative histogram counts."""

    p50: float
    p99: float
    count: int
    sum: float
    buckets: tuple[tuple[float, int], ...]  # (le_ms, values <= le_ms), finite bounds only

    def to_json(self) -> dict[str, Any]:
        return {
            "p50": round(self.p50, 2),
            "p99": round(self.p99, 2),
            "count": self.count,
            "sum": round(self.sum, 2),
            "buckets": [[_number(le), n] for le, n in self.buckets],
        }

    @staticmethod
    def from_json(data: Mapping[str, Any]) -> StageLatency:
        return StageLatency(
            p50=float(data["p50"]),
            p99=float(data["p99"]),
            count=int(data["count"]),
            sum=float(data["sum"]),
            buckets=tuple((float(le), int(n)) for le, n in data["buckets"]),
        )


def _number(value: float) -> int | float:
    return int(value) if float(value).is_integer() else value


def percentile(ordered: Sequence[float], q: float) -> float:
    """The ``q`` quantile (0..1) of ascending ``ordered`` values, interpolated linearly
    between the nearest ranks (numpy's default method); 0.0 for no values."""
    if not ordered:
        return 0.0
    if not 0.0 <= q <= 1.0:
        raise ValueError(f"quantile must be within [0, 1], got {q}")
    pos = q * (len(ordered) - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


class StageHistogram:
    """Mutable accumulator of one stage of one stream (not thread-safe alone)."""

    def __init__(self, bounds: Sequence[float] = BUCKETS_MS, window: int = WINDOW) -> None:
        if list(bounds) != sorted(set(bounds)):
            raise ValueError(f"bucket bounds must be strictly increasing, got {list(bounds)}")
        self.bounds = tuple(float(b) for b in bounds)
        self.counts = [0] * (len(self.bounds) + 1)  # per bucket (not cumulative); last: +Inf
        self.count = 0
        self.sum = 0.0
        self.recent: deque[float] = deque(maxlen=window)

    def observe(self, ms: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, ms)] += 1  # first bound >= ms: "le"
        self.count += 1
        self.sum += ms
        self.recent.append(ms)

    def freeze(self) -> _Frozen:
        """A cheap copy of the state (taken under the book's lock; summarised outside)."""
        return _Frozen(self.bounds, list(self.counts), self.count, self.sum, list(self.recent))

    def snapshot(self) -> StageLatency:
        return self.freeze().summary()


@dataclass(frozen=True)
class _Frozen:
    bounds: tuple[float, ...]
    counts: list[int]
    count: int
    sum: float
    recent: list[float]

    def summary(self) -> StageLatency:
        ordered = sorted(self.recent)
        cumulative, running = [], 0
        for bound, n in zip(self.bounds, self.counts, strict=False):
            running += n
            cumulative.append((bound, running))
        return StageLatency(
            p50=percentile(ordered, 0.5),
            p99=percentile(ordered, 0.99),
            count=self.count,
            sum=self.sum,
            buckets=tuple(cumulative),
        )


class LatencyBook:
    """Every stream's stages, fed by a sink's writer thread and read by the stats loop
    (thread-safe).  Snapshots are recomputed only for streams observed since the last.

    ``stages`` names the histograms kept per key and their bucket bounds (default: every
    stage of :data:`STAGES` with ``bounds``); the scheduler keeps one book per inference
    worker this way (:data:`WORKER_HISTOGRAMS`)."""

    def __init__(
        self,
        bounds: Sequence[float] = BUCKETS_MS,
        window: int = WINDOW,
        refresh_s: float = REFRESH_S,
        stages: Mapping[str, Sequence[float]] | None = None,
    ) -> None:
        self.bounds, self.window, self.refresh_s = tuple(bounds), window, refresh_s
        self.stages = dict(stages) if stages is not None else dict.fromkeys(STAGES, self.bounds)
        self._stages: dict[str, dict[str, StageHistogram]] = {}
        self._dirty: set[str] = set()
        self._cache: dict[str, StreamLatency] = {}
        self._made: dict[str, float] = {}  # when each stream's cached snapshot was made
        self._lock = threading.Lock()

    def observe(self, stream_id: str, latency_ms: Mapping[str, float]) -> None:
        """One entry's ``latency_ms``; stages other than the book's are ignored."""
        with self._lock:
            stages = self._stages.get(stream_id)
            if stages is None:
                stages = self._stages[stream_id] = {
                    s: StageHistogram(b, self.window) for s, b in self.stages.items()
                }
            for stage, histogram in stages.items():
                value = latency_ms.get(stage)
                if value is not None:
                    histogram.observe(float(value))
            self._dirty.add(stream_id)

    def snapshot(self) -> tuple[tuple[str, StreamLatency], ...]:
        """Every stream's stages; one observed since its last snapshot is recomputed once
        that is ``refresh_s`` old (the writer thread waits only for the copies)."""
        now = time.monotonic()
        with self._lock:
            due = [sid for sid in self._dirty if now - self._made.get(sid, -1e9) >= self.refresh_s]
            frozen = {
                sid: [(s, h.freeze()) for s, h in self._stages[sid].items() if h.count]
                for sid in due
            }
            self._dirty.difference_update(due)
        made = {sid: tuple((s, f.summary()) for s, f in stages) for sid, stages in frozen.items()}
        with self._lock:  # several threads take snapshots (status writer, API, table)
            for sid, summary in made.items():
                self._cache[sid] = summary
                self._made[sid] = now
            return tuple(self._cache.items())


def latency_json(latency: Mapping[str, StageLatency]) -> str:
    """The status hash field ``latency_ms``."""
    return json.dumps({s: v.to_json() for s, v in latency.items()}, separators=(",", ":"))


def stage_json(hist: StageLatency | None) -> str:
    """One histogram as a hash field ('' for none)."""
    return "" if hist is None else json.dumps(hist.to_json(), separators=(",", ":"))


def parse_stage_json(text: str | bytes | None) -> StageLatency | None:
    """Read :func:`stage_json` back; None for '' or a field it cannot read (a hash written
    by another version)."""
    raw = text.decode() if isinstance(text, bytes) else text
    try:
        return StageLatency.from_json(json.loads(raw)) if raw else None
    except (ValueError, TypeError, KeyError, AttributeError):
        return None


def parse_latency_json(text: str | bytes) -> dict[str, StageLatency]:
    """Read the status hash field ``latency_ms`` back ('' or '{}': no stage yet)."""
    raw = text.decode() if isinstance(text, bytes) else text
    data = json.loads(raw) if raw else {}
    return {str(stage): StageLatency.from_json(v) for stage, v in data.items()}
