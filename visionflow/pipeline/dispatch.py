"""Sending batches to the least-loaded inference worker."""

from __future__ import annotations

from dataclasses import dataclass, field

from visionflow.pipeline.frames import BatchRequest


@dataclass
class WorkerLoad:
    """What the dispatcher knows of one worker."""

    worker_id: int
    capacity: int
    alive: bool = True
    inflight: dict[int, BatchRequest] = field(default_factory=dict)
    sent_at: dict[int, float] = field(default_factory=dict)  # batch id -> monotonic send time
    batches: int = 0
    frames: int = 0
    sent: int = 0
    busy_ms_ewma: float = 0.0

    @property
    def pending_frames(self) -> int:
        return sum(len(b.frames) for b in self.inflight.values())


class Dispatcher:
    """Tracks in-flight batches per worker and picks where the next batch goes.

    Load is the number of frames in flight, weighted by the worker's measured time per
    frame, so a slower worker (older GPU, shared card) gets less.  Workers whose expected
    finish times are within :attr:`TIE` of the best count as equal and take turns (fewest
    batches sent first): alike GPUs get alike shares instead of the one measured a hair
    faster taking everything.
    """

    TIE = 0.15

    def __init__(self) -> None:
        self.workers: dict[int, WorkerLoad] = {}
        self._owner: dict[int, int] = {}

    def add_worker(self, worker_id: int, capacity: int) -> None:
        self.workers[worker_id] = WorkerLoad(worker_id, capacity)

    def pick(self) -> WorkerLoad | None:
        """The least-loaded live worker with room, or None."""
        candidates = [w for w in self.workers.values() if w.alive and len(w.inflight) < w.capacity]
        if not candidates:
            return None
        finish = {
            w.worker_id: (w.pending_frames + 1) * max(w.busy_ms_ewma, 1e-3) for w in candidates
        }
        best = min(finish.values())
        close = [w for w in candidates if finish[w.worker_id] <= best * (1 + self.TIE)]
        return min(close, key=lambda w: (w.sent, len(w.inflight), w.worker_id))

    def sent(self, worker: WorkerLoad, batch: BatchRequest, at: float = 0.0) -> None:
        worker.sent += 1
        worker.inflight[batch.batch_id] = batch
        worker.sent_at[batch.batch_id] = at
        self._owner[batch.batch_id] = worker.worker_id

    def completed(
        self, batch_id: int, busy_ms_per_frame: float | None, worker_id: int | None = None
    ) -> BatchRequest | None:
        """Record a finished batch; return its request (None if unknown, or if ``worker_id``
        is not its owner: a dead worker's late answer for a batch re-sent elsewhere)."""
        owner = self._owner.get(batch_id)
        if owner is None or (worker_id is not None and worker_id != owner):
            return None
        worker_id = self._owner.pop(batch_id)
        worker = self.workers[worker_id]
        request = worker.inflight.pop(batch_id, None)
        worker.sent_at.pop(batch_id, None)
        if request is not None:
            worker.batches += 1
            worker.frames += len(request.frames)
        if busy_ms_per_frame is not None:
            alpha = 0.2
            worker.busy_ms_ewma = (
                busy_ms_per_frame
                if worker.busy_ms_ewma == 0
                else (1 - alpha) * worker.busy_ms_ewma + alpha * busy_ms_per_frame
            )
        return request

    def fail_worker(self, worker_id: int) -> list[BatchRequest]:
        """Mark a worker dead; return its in-flight batches (to re-send or free)."""
        worker = self.workers[worker_id]
        worker.alive = False
        lost = list(worker.inflight.values())
        for batch in lost:
            self._owner.pop(batch.batch_id, None)
        worker.inflight.clear()
        worker.sent_at.clear()
        return lost

    def revive(self, worker_id: int) -> None:
        self.workers[worker_id].alive = True

    def has_capacity(self) -> bool:
        return self.pick() is not None
