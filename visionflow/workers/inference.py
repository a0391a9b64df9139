"""Inference worker processes: one engine each, batches in, detections out.

A worker reads a batch's frames straight from the ingest processes' frame pools (host
shared memory, or GPU memory mapped by CUDA IPC), submits it to its engine, and keeps up
to ``engine.capabilities.max_inflight`` batches pending: the host side of one batch
(gathering, uploads, NMS, mapping boxes back, sending results) overlaps the GPU work of the
next.  Detections go straight to the output stage; the scheduler only hears
:class:`~visionflow.workers.messages.BatchDone` (so it frees the slots).  A worker never
frees slots itself, so one that dies mid-batch leaves its frames intact for another.
"""

from __future__ import annotations

import logging
import os
import queue
import signal
import sys
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from visionflow.engines import EngineConfig, create_engine
from visionflow.engines.base import Engine, PendingBatch, Thresholds
from visionflow.pipeline.framepool import PoolCache
from visionflow.pipeline.frames import BatchRequest, BatchResult, FrameRef, FrameResult
from visionflow.pipeline.postprocess import to_detections
from visionflow.workers.logs import setup_child_logging
from visionflow.workers.messages import BatchDone, PoolClosed, WorkerFailed, WorkerReady

log = logging.getLogger("visionflow.inference")
ENGINE_FAILED_EXIT = 3  # exit code: the engine cannot load (not restarted: it would loop)
_IDLE = object()


@dataclass(frozen=True)
class WorkerSpec:
    """Everything an inference worker needs to start (picklable)."""

    worker_id: int
    engine: EngineConfig
    model_path: Path
    class_names: tuple[str, ...]
    input_size: tuple[int, int]
    max_batch: int
    slots: int
    conf_threshold: float
    iou_threshold: float
    max_detections: int
    env: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class WorkerQueues:
    """A worker's queues: tasks in; detections to the output stage; BatchDone to the
    scheduler; ready/failed to the status board."""

    tasks: Any
    output: Any
    done: Any
    control: Any


@dataclass
class _Pending:
    request: BatchRequest
    frames: list[FrameRef]
    batch: PendingBatch | None
    error: str | None
    started: float  # wall clock, for queue_ms
    submitted: float  # perf counter
    skipped: tuple[tuple[str, int], ...] = ()  # (pool, seq) of frames it could not read


class WorkerLoop:
    """Moves batches through one engine, several in flight."""

    def __init__(self, engine: Engine, pools: PoolCache, spec: WorkerSpec, queues: WorkerQueues):
        self.engine, self.pools, self.spec, self.queues = engine, pools, spec, queues
        self.thresholds = Thresholds(spec.conf_threshold, spec.iou_threshold, spec.max_detections)
        self.depth = max(1, engine.capabilities.max_inflight)
        self.pending: deque[_Pending] = deque()
        self._last_done = time.perf_counter()
        self._bad_pools: set[str] = set()

    def run(self) -> None:
        while True:
            if len(self.pending) < self.depth:
                msg = self._next_task()
                if msg is None:
                    break
                if msg is not _IDLE:
                    self._on_message(msg)
                    continue
            self._finish(self.pending.popleft())
        while self.pending:
            self._finish(self.pending.popleft())

    def _next_task(self) -> object:
        """A task; when batches are pending, only one already waiting (else ``_IDLE``)."""
        try:
            if not self.pending:
                return self.queues.tasks.get()
            return self.queues.tasks.get(timeout=0.0005)
        except queue.Empty:
            return _IDLE

    def _on_message(self, msg: object) -> None:
        if isinstance(msg, PoolClosed):
            self.pools.forget(msg.pool)
        elif isinstance(msg, BatchRequest):
            self.pending.append(self._submit(msg))

    def _submit(self, request: BatchRequest) -> _Pending:
        started = time.time()
        images: list[Any] = []
        frames: list[FrameRef] = []
        skipped: list[tuple[str, int]] = []
        for frame in request.frames:
            try:
                images.append(self.pools.get(frame.pool).image(frame.slot))
            except Exception as exc:  # a removed stream, an unmappable pool: the frame is lost
                self._unmappable(frame.pool, exc)
                skipped.append((frame.pool, frame.seq))
                continue
            frames.append(frame)
        t0 = time.perf_counter()
        try:
            batch = self.engine.submit(images, self.thresholds) if images else None
            return _Pending(request, frames, batch, None, started, t0, tuple(skipped))
        except Exception as exc:
            error = self._error(request, exc)
            return _Pending(request, frames, None, error, started, t0, tuple(skipped))

    def _unmappable(self, pool: str, exc: Exception) -> None:
        if pool not in self._bad_pools:
            self._bad_pools.add(pool)
            level = logging.INFO if isinstance(exc, FileNotFoundError) else logging.ERROR
            log.log(
                level, "worker %d: frame pool %s unreadable: %s", self.spec.worker_id, pool, exc
            )

    def _finish(self, item: _Pending) -> None:
        results: tuple[FrameResult, ...] = ()
        error = item.error
        if error is None and item.batch is not None:
            try:
                results = self._results(item, item.batch.result())
            except Exception as exc:
                error = self._error(item.request, exc)
        now = time.perf_counter()
        busy_ms = (now - max(item.submitted, self._last_done)) * 1000
        self._last_done = now
        batch_id, wid = item.request.batch_id, self.spec.worker_id
        self.queues.output.put(BatchResult(batch_id, wid, results, error))
        n = len(item.request.frames)
        done = BatchDone(batch_id, wid, n, round(busy_ms, 3), error, item.skipped)
        self.queues.done.put(done)

    def _results(self, item: _Pending, decoded: list[Any]) -> tuple[FrameResult, ...]:
        names = self.spec.class_names
        detections = [
            to_detections(decoded[i], f.letterbox, names) for i, f in enumerate(item.frames)
        ]
        inference_ms = round((time.perf_counter() - item.submitted) * 1000, 3)
        done = time.time()
        return tuple(
            FrameResult(
                frame=frame,
                detections=dets,
                queue_ms=round(
                    max(0.0, (item.started - frame.capture_ts) * 1000 - frame.decode_ms), 3
                ),
                inference_ms=inference_ms,
                batch_size=len(item.frames),
                worker_id=self.spec.worker_id,
                done_ts=done,
            )
            for frame, dets in zip(item.frames, detections, strict=True)
        )

    def _error(self, request: BatchRequest, exc: BaseException) -> str:
        log.error("worker %d: batch %d failed: %s", self.spec.worker_id, request.batch_id, exc)
        log.debug("batch failure", exc_info=exc)
        return f"{type(exc).__name__}: {exc}"


def inference_main(spec: WorkerSpec, queues: WorkerQueues, log_level: int) -> None:
    """Entry point of an inference worker process."""
    os.environ.update(dict(spec.env))
    setup_child_logging(log_level)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        engine = create_engine(spec.engine, spec.model_path, spec.max_batch)
    except Exception as exc:
        queues.control.put(WorkerFailed(spec.worker_id, f"{type(exc).__name__}: {exc}"))
        queues.control.close()
        queues.control.join_thread()  # the message is out before the exit code says why
        sys.exit(ENGINE_FAILED_EXIT)
    queues.control.put(WorkerReady(spec.worker_id, engine.info, os.getpid()))
    pools = PoolCache(spec.input_size[1], spec.input_size[0], spec.slots)
    try:
        WorkerLoop(engine, pools, spec, queues).run()
    finally:
        pools.close()
        engine.close()
