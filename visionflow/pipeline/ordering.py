"""Keeping each stream's results in ``seq`` order when several workers finish out of order."""

from __future__ import annotations

import heapq
from collections import defaultdict

from visionflow.pipeline.frames import FrameRef, FrameResult


class ReorderBuffer:
    """Holds a result until every earlier in-flight frame of its stream is resolved."""

    def __init__(self) -> None:
        self._inflight: dict[str, set[int]] = defaultdict(set)
        self._held: dict[str, list[tuple[int, int, FrameResult]]] = defaultdict(list)
        self._tiebreak = 0

    def sent(self, frames: tuple[FrameRef, ...]) -> None:
        for frame in frames:
            self._inflight[frame.stream_id].add(frame.seq)

    def resolve(
        self, frames: tuple[FrameRef, ...], results: tuple[FrameResult, ...] = ()
    ) -> list[FrameResult]:
        """Mark ``frames`` done (with ``results``, or dropped); return results now in order."""
        touched = set()
        for frame in frames:
            self._inflight[frame.stream_id].discard(frame.seq)
            touched.add(frame.stream_id)
        for result in results:
            self._tiebreak += 1
            heapq.heappush(
                self._held[result.frame.stream_id], (result.frame.seq, self._tiebreak, result)
            )
        ready: list[FrameResult] = []
        for stream_id in touched:
            pending = self._inflight[stream_id]
            floor = min(pending) if pending else None
            held = self._held[stream_id]
            while held and (floor is None or held[0][0] < floor):
                ready.append(heapq.heappop(held)[2])
        return ready

    def forget(self, stream_id: str) -> list[FrameResult]:
        self._inflight.pop(stream_id, None)
        return [r for _, _, r in sorted(self._held.pop(stream_id, []))]
