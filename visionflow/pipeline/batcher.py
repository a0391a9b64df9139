"""Dynamic batching across streams.

Frames wait in a bounded FIFO per stream.  A batch leaves when ``max_batch`` frames wait in
all, or when the oldest waiting frame has waited ``max_delay``, whichever comes first.  It is
filled round-robin over the streams (one frame from each in turn, the starting stream
rotating between batches), so a 30 fps camera cannot starve a 2 fps one.  A full buffer drops
its oldest frame; the caller gets the dropped frame back to free its slot and count it.
Lossless frames (files read faster than real time) are never dropped: their producer waits
for a free shared-memory slot instead, which bounds them.
"""

from __future__ import annotations

from collections import deque
from dataclasses import replace

from visionflow.pipeline.frames import FrameRef


class DynamicBatcher:
    """Per-stream bounded buffers plus the batch-forming policy."""

    def __init__(self, max_batch: int, max_delay_s: float, buffer_per_stream: int) -> None:
        self.max_batch = max_batch
        self.max_delay_s = max_delay_s
        self.buffer_per_stream = buffer_per_stream
        self._queues: dict[str, deque[FrameRef]] = {}
        self._order: list[str] = []
        self._start = 0
        self._waiting = 0

    def add(self, frame: FrameRef, now: float) -> FrameRef | None:
        """Queue ``frame``; return the frame dropped to make room, if any."""
        queue = self._queues.get(frame.stream_id)
        if queue is None:
            queue = self._queues[frame.stream_id] = deque()
            self._order.append(frame.stream_id)
        dropped = None
        if len(queue) >= self.buffer_per_stream and not frame.lossless:
            dropped = queue.popleft()
            self._waiting -= 1
        queue.append(replace(frame, arrived=now))
        self._waiting += 1
        return dropped

    @property
    def waiting(self) -> int:
        """Frames waiting in all buffers."""
        return self._waiting

    def oldest_arrival(self) -> float | None:
        """Arrival time of the oldest waiting frame."""
        heads = [q[0].arrived for q in self._queues.values() if q]
        return min(heads) if heads else None

    def time_until_due(self, now: float) -> float | None:
        """Seconds until a batch is due (0: due now); None when nothing waits."""
        if self._waiting >= self.max_batch:
            return 0.0
        oldest = self.oldest_arrival()
        if oldest is None:
            return None
        return max(0.0, oldest + self.max_delay_s - now)

    def take(self) -> tuple[FrameRef, ...]:
        """Form one batch round-robin (call when due)."""
        batch: list[FrameRef] = []
        streams = self._order
        if not streams:
            return ()
        start = self._start % len(streams)
        rotation = streams[start:] + streams[:start]
        while len(batch) < self.max_batch and self._waiting:
            for stream_id in rotation:
                queue = self._queues[stream_id]
                if queue and len(batch) < self.max_batch:
                    batch.append(queue.popleft())
                    self._waiting -= 1
        self._start = start + 1
        return tuple(batch)

    def remove_stream(self, stream_id: str) -> list[FrameRef]:
        """Forget a stream; return its waiting frames so their slots can be freed."""
        queue = self._queues.pop(stream_id, deque())
        if stream_id in self._order:
            self._order.remove(stream_id)
        self._waiting -= len(queue)
        return list(queue)

    def drain(self) -> list[FrameRef]:
        """Take every waiting frame (shutdown)."""
        frames = [f for q in self._queues.values() for f in q]
        for queue in self._queues.values():
            queue.clear()
        self._waiting = 0
        return frames
