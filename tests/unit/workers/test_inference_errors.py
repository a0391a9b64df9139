"""Sticky CUDA errors end an inference worker (to be restarted); other errors fail a batch."""

from __future__ import annotations

import multiprocessing
import queue
from typing import Any

import numpy as np
import pytest

from visionflow.engines.base import EngineCapabilities, EngineInfo, Thresholds
from visionflow.errors import DeviceLostError, EngineError
from visionflow.pipeline.frames import BatchRequest, FrameRef, Letterbox
from visionflow.workers import inference
from visionflow.workers.inference import (
    ENGINE_FAILED_EXIT,
    STICKY_CUDA_EXIT,
    WorkerLoop,
    WorkerQueues,
    WorkerSpec,
    is_sticky_cuda_error,
)
from visionflow.workers.messages import BatchDone

STICKY = [
    "CUDA error: an illegal memory access was encountered",
    "CUDA error: device-side assert triggered",
    "cudaErrorIllegalAddress",
    "CUDA_ERROR_ILLEGAL_ADDRESS: an illegal memory access was encountered",
    "CUDA error: unspecified launch failure",
    "[TRT] [E] 1: [defaultAllocator.cpp::deallocate::42] Error Code 1: Cuda Runtime "
    "(an illegal memory access was encountered)",
    "CUDA failure 700: an illegal memory access was encountered ; GPU=0",
    "CUDA error: uncorrectable ECC error encountered",
    "cudaErrorECCUncorrectable",
    "ECC error detected on GPU 0",
    "CUDA error: misaligned address",
    "CUDA error: an illegal instruction was encountered",
    "CUDA_ERROR_LAUNCH_FAILED",
]
NOT_STICKY = [
    "CUDA out of memory. Tried to allocate 20.00 MiB",
    "CUDA error: invalid argument",
    "batch of 9 frames exceeds max_batch 8",
    "Success",
    "access denied to the model file",
    "CUDA failure 2: out of memory",
    "CUDA error 7001 happened",  # not code 700
]


@pytest.mark.parametrize("message", STICKY)
def test_sticky_cuda_errors_are_recognised(message):
    assert is_sticky_cuda_error(RuntimeError(message))


@pytest.mark.parametrize("message", NOT_STICKY)
def test_other_errors_are_not_sticky(message):
    assert not is_sticky_cuda_error(RuntimeError(message))


def test_a_sticky_cause_behind_a_wrapper_counts_and_chains_end():
    try:
        try:
            raise RuntimeError("CUDA error: an illegal memory access was encountered")
        except RuntimeError as inner:
            raise EngineError("batch failed") from inner
    except EngineError as outer:
        assert is_sticky_cuda_error(outer)
    assert is_sticky_cuda_error(DeviceLostError("gone"))
    a, b = ValueError("a"), ValueError("b")
    a.__context__, b.__context__ = b, a  # a cycle must not loop forever
    assert not is_sticky_cuda_error(a)


def test_exit_codes_are_distinct():
    assert STICKY_CUDA_EXIT != ENGINE_FAILED_EXIT and STICKY_CUDA_EXIT not in (0, 1)


class _Pending:
    def __init__(self, n: int, error: str | None) -> None:
        self.n, self.error = n, error

    def result(self) -> list[Any]:
        if self.error:
            raise RuntimeError(self.error)
        empty = (np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros(0, np.intp))
        return [empty for _ in range(self.n)]

    def done(self) -> bool:
        return True


class FakeEngine:
    """Fails the batches whose id is in ``errors`` (at submit or at result)."""

    capabilities = EngineCapabilities(max_inflight=2)
    info = EngineInfo("fake", "cpu", 32, 32, "uint8", 4, 1)

    def __init__(self, errors: dict[int, str], at_submit: bool = False) -> None:
        self.errors, self.at_submit = errors, at_submit
        self.batches = 0
        self.closed = False

    def submit(self, frames: list[Any], thresholds: Thresholds) -> _Pending:
        self.batches += 1
        error = self.errors.get(self.batches)
        if error and self.at_submit:
            raise RuntimeError(error)
        return _Pending(len(frames), error)

    def close(self) -> None:
        self.closed = True


class FakePools:
    def get(self, name: str) -> Any:
        return self

    def image(self, slot: int) -> Any:
        return np.zeros((32, 32, 3), np.uint8)

    def close(self) -> None:
        pass


def _spec() -> WorkerSpec:
    from pathlib import Path

    from visionflow.engines.ort import OnnxRuntimeConfig

    return WorkerSpec(
        worker_id=1,
        engine=OnnxRuntimeConfig(),
        model_path=Path("none.onnx"),
        class_names=("a",),
        input_size=(32, 32),
        max_batch=4,
        slots=4,
        conf_threshold=0.25,
        iou_threshold=0.45,
        max_detections=10,
    )


def _request(batch_id: int) -> BatchRequest:
    lb = Letterbox(32, 32, 32, 32, 1.0, 0, 0, 32, 32)
    frame = FrameRef("s", batch_id, None, 0.0, 1.0, "pool", 0, lb)
    return BatchRequest(batch_id, (frame, frame), 0.0)


def _queues(*requests: object) -> WorkerQueues:
    tasks: queue.Queue[object] = queue.Queue()
    for r in (*requests, None):
        tasks.put(r)
    return WorkerQueues(tasks, queue.Queue(), queue.Queue(), queue.Queue())


def _drain(q: Any) -> list[Any]:
    out = []
    while not q.empty():
        out.append(q.get_nowait())
    return out


@pytest.mark.parametrize("at_submit", [False, True])
def test_a_sticky_error_reports_its_batch_failed_then_ends_the_loop(at_submit):
    engine = FakeEngine({2: "CUDA error: an illegal memory access was encountered"}, at_submit)
    queues = _queues(_request(1), _request(2), _request(3), _request(4))
    with pytest.raises(DeviceLostError, match="batch 2"):
        WorkerLoop(engine, FakePools(), _spec(), queues).run()  # type: ignore[arg-type]
    done = [d for d in _drain(queues.done) if isinstance(d, BatchDone)]
    assert [d.batch_id for d in done] == [1, 2]  # batch 3 (in flight) is left for re-sending
    assert done[0].error is None and "illegal memory access" in (done[1].error or "")
    results = _drain(queues.output)
    assert [r.batch_id for r in results] == [1, 2] and results[1].error


def test_an_ordinary_error_fails_one_batch_and_the_worker_goes_on():
    engine = FakeEngine({2: "CUDA out of memory. Tried to allocate 2 GiB"})
    queues = _queues(_request(1), _request(2), _request(3))
    WorkerLoop(engine, FakePools(), _spec(), queues).run()  # type: ignore[arg-type]
    done = _drain(queues.done)
    assert [d.batch_id for d in done] == [1, 2, 3]
    assert [d.error is not None for d in done] == [False, True, False]


def _sticky_worker(spec: WorkerSpec, queues: WorkerQueues) -> None:
    # forked: the patches below live only in this child
    inference.create_engine = lambda *a: FakeEngine(  # type: ignore[assignment]
        {1: "CUDA error: device-side assert triggered"}
    )
    inference.PoolCache = lambda *a: FakePools()  # type: ignore[assignment,misc]
    inference.inference_main(spec, queues, 40)


def test_the_worker_process_exits_with_the_restartable_code_after_reporting():
    ctx = multiprocessing.get_context("fork")
    results, results_end = ctx.Pipe(duplex=False)  # the worker's results channel
    queues = WorkerQueues(ctx.Queue(), (results_end,), ctx.Queue(), ctx.Queue())
    queues.tasks.put(_request(7))
    proc = ctx.Process(target=_sticky_worker, args=(_spec(), queues))
    proc.start()
    results_end.close()
    proc.join(timeout=30)
    assert proc.exitcode == STICKY_CUDA_EXIT
    done = queues.done.get(timeout=5)
    assert done.batch_id == 7 and "device-side assert" in done.error
    # the failed batch's result went out through the channel before the exit
    assert results.poll(5) and results.recv().error
