"""The scheduler: batcher + dispatcher + slot ledger, on an injected clock, no processes.

It is fed announced frames and finished batches, and answers with batches to send and
slots to free.  The thread that moves messages between queues and this object lives in
:mod:`visionflow.workers.scheduling`; everything here is unit-testable without processes.

Batch ids are consecutive (1, 2, 3, ...) and a batch keeps its id when it is re-sent to
another worker after its first worker died, so the output stage can release batches in id
order and ignore a duplicate.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, replace

from visionflow.pipeline.batcher import DynamicBatcher
from visionflow.pipeline.dispatch import Dispatcher
from visionflow.pipeline.frames import BatchRequest, FrameRef
from visionflow.pipeline.ledger import ABANDONED, INFERRED, SlotLedger

Clock = Callable[[], float]


@dataclass(frozen=True)
class Send:
    """A batch to put on one worker's task queue."""

    worker_id: int
    request: BatchRequest


@dataclass(frozen=True)
class WorkerLost:
    """What to do after a worker died: re-send some batches, abandon the rest."""

    resend: tuple[Send, ...]
    abandoned: tuple[BatchRequest, ...]  # the output stage must stop waiting for these
    free: tuple[FrameRef, ...]  # slots of the abandoned batches


class Scheduler:
    """Owns every announced frame until it is inferred or dropped."""

    def __init__(
        self,
        max_batch: int,
        max_delay_s: float,
        buffer_per_stream: int,
        clock: Clock = time.monotonic,
        wall: Clock = time.time,
    ) -> None:
        self.batcher = DynamicBatcher(max_batch, max_delay_s, buffer_per_stream)
        self.dispatcher = Dispatcher()
        self.ledger = SlotLedger()
        self.clock, self.wall = clock, wall
        self.streams: set[str] = set()
        self._batch_ids = 0

    # ---- membership --------------------------------------------------------------
    def add_stream(self, stream_id: str) -> None:
        self.streams.add(stream_id)

    def remove_stream(self, stream_id: str) -> list[FrameRef]:
        """Forget a stream; its waiting frames are dropped (their slots to free)."""
        self.streams.discard(stream_id)
        frames = self.batcher.remove_stream(stream_id)
        self.ledger.resolve_all(frames, "stream_removed")
        return frames

    def drop_stream_frames(self, stream_id: str, reason: str) -> list[FrameRef]:
        """Drop a stream's waiting frames but keep the stream (its ingest restarted)."""
        frames = self.batcher.remove_stream(stream_id)
        self.ledger.resolve_all(frames, reason)
        return frames

    def add_worker(self, worker_id: int, capacity: int) -> None:
        """A worker that will take batches once :meth:`worker_ready` says so."""
        if worker_id not in self.dispatcher.workers:
            self.dispatcher.add_worker(worker_id, capacity)
        self.dispatcher.workers[worker_id].alive = False

    def worker_ready(self, worker_id: int) -> None:
        self.dispatcher.revive(worker_id)

    # ---- frames in ---------------------------------------------------------------
    def on_frames(self, frames: tuple[FrameRef, ...]) -> list[FrameRef]:
        """Queue announced frames; return those whose slots must be freed now (unknown
        stream, or the oldest dropped from a full per-stream buffer)."""
        free: list[FrameRef] = []
        now = self.clock()
        for frame in frames:
            if frame.stream_id not in self.streams:
                free.append(frame)
                continue
            self.ledger.announce(frame)
            dropped = self.batcher.add(frame, now)
            if dropped is not None:
                self.ledger.resolve(dropped, "inference_behind")
                free.append(dropped)
        return free

    def time_until_due(self) -> float | None:
        """Seconds until a batch is due and a worker has room (None: nothing to wait for)."""
        due = self.batcher.time_until_due(self.clock())
        if due is None or not self.dispatcher.has_capacity():
            return None
        return due

    def take_due(self) -> list[Send]:
        """Every batch that is due now and has a worker with room."""
        sends: list[Send] = []
        while self.batcher.time_until_due(self.clock()) == 0:
            worker = self.dispatcher.pick()
            if worker is None:
                break
            frames = self.batcher.take()
            if not frames:
                break
            self._batch_ids += 1
            request = BatchRequest(self._batch_ids, frames, self.wall())
            self.dispatcher.sent(worker, request, self.clock())
            sends.append(Send(worker.worker_id, request))
        return sends

    # ---- batches back ------------------------------------------------------------
    def on_done(
        self,
        batch_id: int,
        worker_id: int,
        busy_ms_per_frame: float | None,
        error: str | None,
        skipped: tuple[tuple[str, int], ...] = (),
    ) -> list[FrameRef]:
        """A worker finished a batch: resolve its frames; return their slots to free.
        A batch re-sent after its worker was declared dead is resolved only by the worker
        that owns it now: a late answer from the dead one frees nothing."""
        request = self.dispatcher.completed(batch_id, busy_ms_per_frame, worker_id)
        if request is None:
            return []
        outcome = INFERRED if error is None else "inference_error"
        unreadable = set(skipped)
        for frame in request.frames:
            lost = (frame.pool, frame.seq) in unreadable
            self.ledger.resolve(frame, "frame_unavailable" if lost else outcome)
        return list(request.frames)

    def on_worker_lost(self, worker_id: int) -> WorkerLost:
        """Re-send a dead worker's batches (same ids) to the others, or abandon them."""
        resend: list[Send] = []
        abandoned: list[BatchRequest] = []
        free: list[FrameRef] = []
        for request in self.dispatcher.fail_worker(worker_id):
            target = self.dispatcher.pick()
            if target is None:
                # its results may have reached the output stage before the worker died:
                # the output stage, not the ledger, tells written from lost
                self.ledger.resolve_all(request.frames, ABANDONED)
                abandoned.append(request)
                free.extend(request.frames)
                continue
            request = replace(request, formed_ts=self.wall())
            self.dispatcher.sent(target, request, self.clock())  # its deadline starts anew
            resend.append(Send(target.worker_id, request))
        return WorkerLost(tuple(resend), tuple(abandoned), tuple(free))

    def drain(self, reason: str = "shutdown") -> list[FrameRef]:
        """Drop every waiting frame (shutdown); return their slots to free."""
        frames = self.batcher.drain()
        self.ledger.resolve_all(frames, reason)
        return frames

    def overdue(self, deadline_s: float) -> list[int]:
        """Workers whose oldest batch was sent more than ``deadline_s`` ago (hung), on the
        monotonic clock (a wall-clock step never kills a busy worker)."""
        now = self.clock()
        late = []
        for worker in self.dispatcher.workers.values():
            oldest = next(iter(worker.sent_at.values()), None)
            if worker.alive and oldest is not None and now - oldest > deadline_s:
                late.append(worker.worker_id)
        return late

    def abandon_all(self) -> list[FrameRef]:
        """Shutdown: every batch still at a worker is abandoned (the output stage counts it);
        returns the frames whose slots to free."""
        frames: list[FrameRef] = []
        for worker_id in list(self.dispatcher.workers):
            for request in self.dispatcher.fail_worker(worker_id):
                self.ledger.resolve_all(request.frames, ABANDONED)
                frames.extend(request.frames)
        return frames

    def all_inflight(self) -> list[BatchRequest]:
        return [b for w in self.dispatcher.workers.values() for b in w.inflight.values()]

    @property
    def inflight_batches(self) -> int:
        return sum(len(w.inflight) for w in self.dispatcher.workers.values())

    @property
    def last_batch_id(self) -> int:
        return self._batch_ids
