"""Rates between samples of cumulative counters (batches/s of ``GET /workers``)."""

from __future__ import annotations

import threading
from collections import deque


class RateMeter:
    """Per key, the rate of a cumulative counter over the samples of the last ``span_s``
    seconds (None until two samples at least ``min_gap_s`` apart exist); a counter that
    went down (a restarted process) starts again."""

    def __init__(self, span_s: float = 10.0, min_gap_s: float = 0.5) -> None:
        self.span_s, self.min_gap_s = span_s, min_gap_s
        self._samples: dict[str, deque[tuple[float, float]]] = {}
        self._lock = threading.Lock()

    def observe(self, key: str, ts: float, value: float) -> float | None:
        with self._lock:
            samples = self._samples.setdefault(key, deque())
            if samples and value < samples[-1][1]:
                samples.clear()
            if not samples or ts > samples[-1][0]:
                samples.append((ts, value))
            while len(samples) > 2 and ts - samples[1][0] >= self.span_s:
                samples.popleft()
            t0, v0 = samples[0]
            t1, v1 = samples[-1]
            if t1 - t0 < self.min_gap_s:
                return None
            return (v1 - v0) / (t1 - t0)
