"""The scheduler thread: moves data-plane messages between the queues and the scheduler.

Its queue carries only frame announcements (:class:`FrameBatch`, several frames each),
:class:`BatchDone` (one small message per batch) and :class:`PoolClosed`; heartbeats and
state changes go to the status board's queue.  Each wake-up drains what is waiting, then
sends every batch that is due.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from typing import Any

from visionflow.pipeline.framepool import PoolCache
from visionflow.pipeline.frames import FrameRef
from visionflow.pipeline.scheduler import Scheduler, Send
from visionflow.workers.latency import WORKER_HISTOGRAMS, LatencyBook
from visionflow.workers.messages import BatchDone, FrameBatch, PoolClosed

log = logging.getLogger("visionflow.scheduling")
MAX_WAIT_S = 0.05
DRAIN_MAX = 512


class SchedulerLoop:
    """The thread around :class:`Scheduler` (its lock guards the scheduler for readers)."""

    def __init__(
        self,
        scheduler: Scheduler,
        inbox: Any,
        pools: PoolCache,
        send: Callable[[Send], None],
        broadcast: Callable[[object], None],
        on_tick: Callable[[], None] | None = None,
        tick_s: float = 0.25,
    ) -> None:
        self.scheduler, self.inbox, self.pools = scheduler, inbox, pools
        self.send, self.broadcast, self.on_tick, self.tick_s = send, broadcast, on_tick, tick_s
        self.lock = threading.RLock()
        self.pool_owner: dict[str, int] = {}  # pool name -> ingest process index
        self.messages = 0
        self.errors = 0
        # per worker id (str): batch sizes and busy ms of the batches done without error
        self.batch_book = LatencyBook(stages=WORKER_HISTOGRAMS)
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="scheduler", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self._stop.set()
        self.thread.join(timeout=5)

    def _run(self) -> None:
        next_tick = 0.0
        clock = self.scheduler.clock
        while not self._stop.is_set():
            try:  # nothing may end this thread but stop(): the whole pipeline hangs on it
                self._step()
                if self.on_tick is not None and clock() >= next_tick:
                    next_tick = clock() + self.tick_s
                    self.on_tick()
            except Exception:
                self.errors += 1
                log.exception("scheduler: step failed (the loop goes on)")

    def _step(self) -> None:
        with self.lock:
            due = self.scheduler.time_until_due()
        wait = MAX_WAIT_S if due is None else min(due, MAX_WAIT_S)
        try:
            self._handle(self.inbox.get(timeout=max(wait, 0.0005)))
            for _ in range(DRAIN_MAX):
                self._handle(self.inbox.get_nowait())
        except queue.Empty:
            pass
        self.dispatch_due()

    def drain_inbox(self) -> None:
        """Handle every message still queued (shutdown, after the thread stopped)."""
        while True:
            try:
                self._handle(self.inbox.get(timeout=0.05))
            except queue.Empty:
                return

    def dispatch_due(self) -> None:
        with self.lock:
            for send in self.scheduler.take_due():
                self.send(send)

    def _handle(self, msg: object) -> None:
        self.messages += 1
        with self.lock:
            if isinstance(msg, FrameBatch):
                for frame in msg.frames:
                    if frame.pool not in self.pool_owner:
                        self.pool_owner[frame.pool] = msg.process
                self.free(self.scheduler.on_frames(msg.frames))
            elif isinstance(msg, BatchDone):
                per_frame = msg.busy_ms / msg.frames if msg.frames else None
                if msg.frames and msg.error is None:
                    self.batch_book.observe(
                        str(msg.worker_id), {"batch_size": msg.frames, "inference_ms": msg.busy_ms}
                    )
                done = self.scheduler.on_done(
                    msg.batch_id, msg.worker_id, per_frame, msg.error, msg.skipped
                )
                self.free(done)
            elif isinstance(msg, PoolClosed):
                self.pools.forget(msg.pool)
                self.pool_owner.pop(msg.pool, None)
                self.broadcast(msg)

    def free(self, frames: list[FrameRef] | tuple[FrameRef, ...]) -> None:
        for frame in frames:
            self.pools.release(frame.pool, frame.slot)
