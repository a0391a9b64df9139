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

from visionflow.pipeline.frames import FrameRef


class DynamicBatcher:
    """Per-stream bounded buffers plus the batch-forming policy.

    Each buffer holds ``(arrival time, frame)``; the arrival of the oldest waiting frame is
    found among the heads of the non-empty buffers only (a stream with nothing waiting costs
    nothing), so an idle camera of thousands adds no work per batch.
    """

    def __init__(self, max_batch: int, max_delay_s: float, buffer_per_stream: int) -> None:
        self.max_batch = max_batch
        self.max_delay_s = max_delay_s
        self.buffer_per_stream = buffer_per_stream
        self._queues: dict[str, deque[tuple[float, FrameRef]]] = {}
        self._busy: set[str] = set()  # streams with frames waiting
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
            dropped = queue.popleft()[1]
            self._waiting -= 1
        queue.append((now, frame))
        self._busy.add(frame.stream_id)
        self._waiting += 1
        return dropped

    @property
    def waiting(self) -> int:
        """Frames waiting in all buffers."""
        return self._waiting

    def oldest_arrival(self) -> float | None:
        """Arrival time of the oldest waiting frame."""
        queues = self._queues
        return min((queues[sid][0][0] for sid in self._busy), default=None)

    def time_until_due(self, now: float) -> float | None:
        """Seconds until a batch is due (0: due now); None when nothing waits."""
        if self._waiting >= self.max_batch:
            return 0.0
        oldest = self.oldest_arrival()
        if oldest is None:
            return None
        return max(0.0, oldest + self.max_delay_s - now)

    def take(self) -> tuple[FrameRef, ...]:
        """Form one batch round-robin (call when due).

        The next batch starts with the stream after the last one this batch served, so a
        backlog larger than one batch is served in turn: when more streams wait than a batch
        holds, each waits at most ``ceil(streams / max_batch)`` batches, and a hiccup's
        backlog is spread over every stream instead of piling up on the streams a rotation
        advancing by one stream per batch keeps reaching last (bench/README.md, issue 12).
        """
        batch: list[FrameRef] = []
        streams = self._order
        if not streams or not self._waiting:
            return ()
        start = self._start % len(streams)
        order = streams[start:] + streams[:start]
        rotation = [(offset, sid) for offset, sid in enumerate(order) if sid in self._busy]
        last = 0
        while len(batch) < self.max_batch and rotation:
            still = []
            for offset, stream_id in rotation:
                if len(batch) >= self.max_batch:
                    break
                queue = self._queues[stream_id]
                batch.append(queue.popleft()[1])
                last = offset
                if queue:
                    still.append((offset, stream_id))
                else:
                    self._busy.discard(stream_id)
            rotation = still
        self._waiting -= len(batch)
        self._start = (start + last + 1) % len(streams)
        return tuple(batch)

    def remove_stream(self, stream_id: str) -> list[FrameRef]:
        """Forget a stream; return its waiting frames so their slots can be freed."""
        queue = self._queues.pop(stream_id, deque())
        if stream_id in self._order:
            index = self._order.index(stream_id)
            if index < self._start:
                self._start -= 1  # the streams after it move up: the rotation stays on its next
            self._order.remove(stream_id)
        self._busy.discard(stream_id)
        self._waiting -= len(queue)
        return [f for _, f in queue]

    def drain(self) -> list[FrameRef]:
        """Take every waiting frame (shutdown)."""
        frames = [f for q in self._queues.values() for _, f in q]
        for queue in self._queues.values():
            queue.clear()
        self._busy.clear()
        self._waiting = 0
        return frames
