"""Inference worker processes: one engine each, batches in, detections out.

A worker reads the frames of a batch straight from the ingest processes' frame pools (host
shared memory, or GPU memory mapped by CUDA IPC, copied device-to-device), runs the engine,
decodes and maps boxes back to each frame, and sends one :class:`BatchResult`.  It never
frees slots itself: the supervisor does when the result arrives, so a worker that dies
mid-batch leaves its frames intact for another worker.
"""

from __future__ import annotations

import logging
import os
import signal
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from visionflow.engines import Detections, Engine, EngineConfig, Thresholds, create_engine
from visionflow.pipeline.framepool import PoolCache
from visionflow.pipeline.frames import BatchRequest, BatchResult, FrameRef, FrameResult
from visionflow.pipeline.postprocess import to_detections
from visionflow.workers.logs import setup_child_logging
from visionflow.workers.messages import PoolClosed, WorkerFailed, WorkerReady

log = logging.getLogger("visionflow.inference")


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


def _detect(engine: Engine, spec: WorkerSpec, images: list[Any]) -> list[Detections]:
    """Host frames or frames in GPU memory (CUDA IPC slots): the engine takes either."""
    thresholds = Thresholds(spec.conf_threshold, spec.iou_threshold, spec.max_detections)
    return engine.detect(images, thresholds)


def run_batch(
    engine: Engine, pools: PoolCache, spec: WorkerSpec, request: BatchRequest
) -> BatchResult:
    """Gather a batch's frames from their pools, infer, post-process."""
    started = time.time()
    images: list[Any] = []
    frames: list[FrameRef] = []
    for frame in request.frames:
        try:
            images.append(pools.get(frame.pool).image(frame.slot))
        except FileNotFoundError:  # the stream was removed meanwhile: skip its frame
            continue
        frames.append(frame)
    t0 = time.perf_counter()
    decoded = _detect(engine, spec, images)
    results = [
        (frame, to_detections(decoded[i], frame.letterbox, spec.class_names))
        for i, frame in enumerate(frames)
    ]
    inference_ms = (time.perf_counter() - t0) * 1000
    done = time.time()
    return BatchResult(
        batch_id=request.batch_id,
        worker_id=spec.worker_id,
        results=tuple(
            FrameResult(
                frame=frame,
                detections=detections,
                queue_ms=round(max(0.0, (started - frame.capture_ts) * 1000 - frame.decode_ms), 3),
                inference_ms=round(inference_ms, 3),
                batch_size=len(frames),
                worker_id=spec.worker_id,
                done_ts=done,
            )
            for frame, detections in results
        ),
    )


def inference_main(spec: WorkerSpec, tasks: Any, outbox: Any, log_level: int) -> None:
    """Entry point of an inference worker process."""
    os.environ.update(dict(spec.env))
    setup_child_logging(log_level)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        engine = create_engine(spec.engine, spec.model_path, spec.max_batch)
    except Exception as exc:
        outbox.put(WorkerFailed(spec.worker_id, f"{type(exc).__name__}: {exc}"))
        return
    outbox.put(WorkerReady(spec.worker_id, engine.info, os.getpid()))
    pools = PoolCache(spec.input_size[1], spec.input_size[0], spec.slots)
    try:
        while True:
            request = tasks.get()
            if request is None:
                break
            if isinstance(request, PoolClosed):
                pools.forget(request.pool)
                continue
            try:
                result = run_batch(engine, pools, spec, request)
            except Exception as exc:
                log.error("worker %d: batch %d failed: %s", spec.worker_id, request.batch_id, exc)
                result = BatchResult(
                    request.batch_id, spec.worker_id, (), f"{type(exc).__name__}: {exc}"
                )
                log.debug("%s", traceback.format_exc())
            outbox.put(result)
    finally:
        pools.close()
        engine.close()
