"""Inference worker processes: one engine each, batches in, detections out.

A worker reads a batch's frames straight from the ingest processes' frame pools (host
shared memory, or GPU memory mapped by CUDA IPC), submits it to its engine, and keeps up
to ``engine.capabilities.max_inflight`` batches pending: the host side of one batch
(gathering, uploads, NMS, mapping boxes back, sending results) overlaps the GPU work of the
next.  Detections go straight to the output stage; the scheduler only hears
:class:`~visionflow.workers.messages.BatchDone` (so it frees the slots).  A worker never
frees slots itself, so one that dies mid-batch leaves its frames intact for another.

Errors.  A batch that raises is reported failed (its frames count ``inference_error``) and
the worker goes on with the next.  Two kinds of error end the worker instead:

- its engine cannot load: exit :data:`ENGINE_FAILED_EXIT`, and the pipeline leaves it down
  (restarting would only fail again, in a loop);
- a *sticky* CUDA error (:func:`is_sticky_cuda_error`: an illegal address, a device-side
  assert, an unspecified launch failure, an uncorrectable ECC error...).  After one of these
  the CUDA context of the process is corrupt for good: every later CUDA call fails with the
  same error, so every later batch would fail too.  The worker reports the batch that hit it
  failed, sends what it already has out, and exits :data:`STICKY_CUDA_EXIT` without touching
  the GPU again (no engine close); the process group restarts it with a fresh context, and
  the batches it still had in flight are re-sent to the other workers like those of any
  worker that died.
"""

from __future__ import annotations

import logging
import os
import queue
import re
import signal
import sys
import time
from collections import deque
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from visionflow.engines import EngineConfig, create_engine
from visionflow.engines.base import Engine, PendingBatch, Thresholds
from visionflow.errors import DeviceLostError
from visionflow.pipeline.appearance import AppearanceHook
from visionflow.pipeline.crop import copy_content
from visionflow.pipeline.framepool import PoolCache
from visionflow.pipeline.frames import (
    BatchRequest,
    BatchResult,
    FrameImage,
    FrameRef,
    FrameResult,
)
from visionflow.pipeline.postprocess import to_detections
from visionflow.workers.channels import ShardedWriter
from visionflow.workers.heap import HeapTrimmer
from visionflow.workers.logs import setup_child_logging
from visionflow.workers.messages import (
    AppearanceStreams,
    BatchDone,
    OutputShards,
    PoolClosed,
    WorkerFailed,
    WorkerReady,
)
from visionflow.workers.procs import exit_with_parent

log = logging.getLogger("visionflow.inference")
RESULTS_FLUSH_S = 4.0  # within the pipeline's 5 s wait for workers to end
ENGINE_FAILED_EXIT = 3  # exit code: the engine cannot load (not restarted: it would loop)
STICKY_CUDA_EXIT = 4  # exit code: a sticky CUDA error poisoned the context (restarted)
# Errors after which a CUDA context cannot be used again (CUDA runtime / driver API names,
# their messages as PyTorch, ONNX Runtime and TensorRT print them, and their runtime codes).
# "out of memory" and invalid-argument errors are not sticky: the next batch may succeed.
_STICKY_CUDA = re.compile(
    r"cudaErrorIllegalAddress|CUDA_ERROR_ILLEGAL_ADDRESS|illegal memory access"
    r"|cudaErrorAssert|CUDA_ERROR_ASSERT|device-side assert"
    r"|cudaErrorLaunchFailure|CUDA_ERROR_LAUNCH_FAILED|unspecified launch failure"
    r"|cudaErrorLaunchTimeout|CUDA_ERROR_LAUNCH_TIMEOUT|the launch timed out"
    r"|cudaErrorECCUncorrectable|CUDA_ERROR_ECC_UNCORRECTABLE|uncorrectable ECC"
    r"|cudaErrorHardwareStackError|CUDA_ERROR_HARDWARE_STACK_ERROR|hardware stack error"
    r"|cudaErrorIllegalInstruction|CUDA_ERROR_ILLEGAL_INSTRUCTION|illegal instruction was"
    r"|cudaErrorMisalignedAddress|CUDA_ERROR_MISALIGNED_ADDRESS|misaligned address"
    r"|cudaErrorInvalidAddressSpace|CUDA_ERROR_INVALID_ADDRESS_SPACE"
    r"|cudaErrorInvalidPc|CUDA_ERROR_INVALID_PC|invalid program counter"
    r"|cudaErrorNvlinkUncorrectable|CUDA_ERROR_NVLINK_UNCORRECTABLE"
    r"|CUDA (?:error|failure)[ :]*(?:214|700|702|710|714|715|716|717|718|719)\b",
    re.IGNORECASE,
)
_ECC = re.compile(r"\bECC\b")  # "ECC error" in any spelling, but only as a word in capitals
_IDLE = object()


def is_sticky_cuda_error(exc: BaseException) -> bool:
    """True when ``exc`` (or an exception it was raised from) reports a sticky CUDA error:
    one after which the process's CUDA context is unusable and only a new process helps."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        text = f"{type(current).__name__}: {current}"
        if isinstance(current, DeviceLostError) or _STICKY_CUDA.search(text) or _ECC.search(text):
            return True
        current = current.__cause__ or current.__context__
    return False


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
    appearance_streams: frozenset[str] = frozenset()  # descriptors for these (AppearanceHook)
    output_shards: tuple[tuple[str, int], ...] = ()  # stream -> output process (shards.py)


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
    sticky: bool = False  # its error was a sticky CUDA error: the worker exits after it


class WorkerLoop:
    """Moves batches through one engine, several in flight."""

    def __init__(self, engine: Engine, pools: PoolCache, spec: WorkerSpec, queues: WorkerQueues):
        self.engine, self.pools, self.spec, self.queues = engine, pools, spec, queues
        self.thresholds = Thresholds(spec.conf_threshold, spec.iou_threshold, spec.max_detections)
        self.depth = max(1, engine.capabilities.max_inflight)
        self.pending: deque[_Pending] = deque()
        self._last_done = time.perf_counter()
        self._bad_pools: set[str] = set()
        self.appearance = AppearanceHook(spec.appearance_streams, spec.worker_id)

    def run(self) -> None:
        heap = HeapTrimmer()
        while True:
            heap.maybe_trim()
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
            while self.pending:  # their frames may still be views of the pool: finish first
                self._finish(self.pending.popleft())
            self.pools.forget(msg.pool)
        elif isinstance(msg, BatchRequest):
            self.pending.append(self._submit(msg))
        elif isinstance(msg, AppearanceStreams):
            self.appearance.streams = msg.stream_ids
        elif isinstance(msg, OutputShards) and isinstance(self.queues.output, ShardedWriter):
            self.queues.output.shards.update(msg.assigned)

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
            sticky = is_sticky_cuda_error(exc)
            return _Pending(request, frames, None, error, started, t0, tuple(skipped), sticky)

    def _unmappable(self, pool: str, exc: Exception) -> None:
        if pool not in self._bad_pools:
            self._bad_pools.add(pool)
            level = logging.INFO if isinstance(exc, FileNotFoundError) else logging.ERROR
            log.log(
                level, "worker %d: frame pool %s unreadable: %s", self.spec.worker_id, pool, exc
            )

    def _finish(self, item: _Pending) -> None:
        results: tuple[FrameResult, ...] = ()
        error, sticky = item.error, item.sticky
        if error is None and item.batch is not None:
            try:
                results = self._results(item, item.batch.result())
            except Exception as exc:
                error = self._error(item.request, exc)
                sticky = is_sticky_cuda_error(exc)
        now = time.perf_counter()
        busy_ms = (now - max(item.submitted, self._last_done)) * 1000
        self._last_done = now
        batch_id, wid = item.request.batch_id, self.spec.worker_id
        images = self._images(item) if results else ()
        result = BatchResult(batch_id, wid, results, error, images)
        n = len(item.request.frames)
        done = BatchDone(batch_id, wid, n, round(busy_ms, 3), error, item.skipped)
        self.queues.output.put(result)
        self.queues.done.put(done)
        if sticky:
            raise DeviceLostError(f"worker {wid}: sticky CUDA error in batch {batch_id}: {error}")

    def _images(self, item: _Pending) -> tuple[FrameImage, ...]:
        """Copies of the frames ingest marked for snapshots (at most one per stream per
        snapshot interval), taken before BatchDone lets the scheduler free their slots.  A
        copy that fails costs that snapshot, never the batch."""
        images = []
        for frame in item.frames:
            if not frame.snapshot:
                continue
            try:
                pixels = copy_content(self.pools.get(frame.pool).image(frame.slot), frame.letterbox)
            except Exception as exc:
                wid = self.spec.worker_id
                log.warning("worker %d: snapshot of %s not copied: %s", wid, frame.stream_id, exc)
                continue
            images.append(FrameImage(frame.stream_id, frame.seq, pixels))
        return tuple(images)

    def _results(self, item: _Pending, decoded: list[Any]) -> tuple[FrameResult, ...]:
        names, frames = self.spec.class_names, item.frames
        looks = self.appearance.for_batch(self.pools, frames, [d[0] for d in decoded])
        detections = [
            to_detections(decoded[i], f.letterbox, names, looks[i]) for i, f in enumerate(frames)
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
    exit_with_parent()
    # a service manager signals the whole process group at once: the pipeline, not the signal,
    # decides when a worker stops (it drains in-flight batches first)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        engine = create_engine(spec.engine, spec.model_path, spec.max_batch)
    except Exception as exc:
        queues.control.put(WorkerFailed(spec.worker_id, f"{type(exc).__name__}: {exc}"))
        queues.control.close()
        queues.control.join_thread()  # the message is out before the exit code says why
        sys.exit(ENGINE_FAILED_EXIT)
    # the pipes (one per output process), each written by a thread
    queues = replace(queues, output=ShardedWriter(queues.output, spec.output_shards))
    queues.control.put(WorkerReady(spec.worker_id, engine.info, os.getpid()))
    pools = PoolCache(spec.input_size[1], spec.input_size[0], spec.slots)
    try:
        WorkerLoop(engine, pools, spec, queues).run()
    except DeviceLostError as exc:
        log.error("%s; exiting to be restarted with a fresh CUDA context", exc)
        _exit_after_sending(queues, STICKY_CUDA_EXIT)  # never returns: no cleanup below
    finally:
        _flush_results(queues.output)
        engine.close()  # first: batches still in flight end before their frames' pools go
        pools.close()


def _flush_results(output: ShardedWriter) -> None:
    """The results already put go out before the process ends (a daemon sender thread would
    be cut off mid-send at exit, and those batches are already counted done)."""
    output.close()
    output.join_thread(timeout=RESULTS_FLUSH_S)


def _exit_after_sending(queues: WorkerQueues, code: int) -> None:
    """Exit at once with ``code`` once the messages already put are out; touches neither
    the engine nor the frame pools (after a sticky error any CUDA call can fail or hang)."""
    for q in (queues.output, queues.done, queues.control):
        q.close()
        q.join_thread()
    os._exit(code)
