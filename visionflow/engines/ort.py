"""ONNX Runtime backend (CPU by default): host frames, NMS on the CPU.

With ``inflight`` 1 a batch runs to the end inside ``submit`` (:class:`SyncEngine`).  With 2
(the default), ``submit`` writes the frames, as the network's input (``[N, 3, H, W]`` scaled to
0..1), into one of two staging buffers on the caller's thread and queues the batch on a thread
of the engine's own, where batches run one after another and that thread does nothing but run
the model (ONNX Runtime lets go of the GIL while it does); the caller decodes the outputs (NMS)
when it collects the result.  So the inference worker's own share of a batch (the input, the
decode, appearance descriptors, detections, the hand-off to the output stage) is done while the
next batch's model runs, instead of leaving ONNX Runtime's threads idle in between: profiled on
a 16-core host, the engine's thread was busy the whole time and the worker's own 10-18 %, and a
fifth of the engine thread's time was the input and the decode (bench/README.md, issue 11).
Each slot's staging buffer holds a whole batch of network input (``[max_batch, 3, H, W]`` in
the model's float type: four times the uint8 frames, 9.8 MB for 8 frames of 320 x 320 in
float32), written by ``submit`` and read by the model until the result is collected, when the
slot is free again; a batch's ``done()`` says its model has run (collecting it then does not
wait, but still decodes).  The worker keeps ``2 x inflight`` batches queued
(:meth:`~visionflow.config.BatchingConfig.worker_capacity`), so the next batch is already there
when one finishes; under overload a frame may wait behind three batches instead of one.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from concurrent.futures import CancelledError, Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
from pydantic import Field

from visionflow.engines.base import (
    CompletedBatch,
    Detections,
    EngineCapabilities,
    EngineConfigBase,
    EngineInfo,
    PendingBatch,
    SyncEngine,
    Thresholds,
)
from visionflow.engines.inflight import InflightRing, SlotBatch
from visionflow.engines.registry import Backend
from visionflow.errors import EngineError, EngineUnavailableError, ModelError
from visionflow.pipeline.layouts import OutputLayout, detect_layout

_DTYPES = {"tensor(float)": "float32", "tensor(float16)": "float16"}
WARM_UP_MAX_BATCH = 64  # frames run once at load (see OnnxRuntimeEngine._warm_up)


class OnnxRuntimeConfig(EngineConfigBase):
    """ONNX Runtime on the CPU (or any execution provider it was built with)."""

    backend: Literal["onnxruntime"] = Field(
        default="onnxruntime", description="Inference backend: ONNX Runtime."
    )
    intra_op_threads: int = Field(
        default=0,
        ge=0,
        le=256,
        description="Threads inside one operator; 0: ONNX Runtime's choice.",
    )
    spin: bool = Field(
        default=False,
        description="Let the intra-op threads busy-wait for work between operators (ONNX "
        "Runtime's own default).  Off: they sleep, and leave the cores to the pipeline's "
        "ingest and output processes, whose every time slice otherwise stalls a spinning "
        "operator; on for a host that runs nothing but inference (bench/README.md, issue 11).",
    )
    inflight: int = Field(
        default=2,
        ge=1,
        le=2,
        description="Batches the engine holds at once. 2: their models run one after another "
        "on a thread of the engine's own, which does nothing else, while the inference "
        "worker makes the next batch's input and finishes the one before (its decode, "
        "descriptors, detections and hand-off to the output stage overlap the model; more "
        "would only queue behind the one thread); the worker then keeps 4 batches queued, "
        "not 2, so under overload a frame may wait behind more of them; each of the 2 "
        "holds a staging buffer of max_batch network inputs in the model's float type (4 "
        "bytes a pixel channel in float32: 9.8 MB for 8 inputs of 320 x 320). 1: each batch "
        "runs to the end before the worker goes on.",
    )
    providers: list[str] = Field(
        default_factory=lambda: ["CPUExecutionProvider"],
        min_length=1,
        description="Execution providers in order of preference.",
    )

    def batches_at_once(self) -> int:
        return self.inflight


class OnnxRuntimeEngine(SyncEngine):
    """Runs a YOLOv8-layout ONNX detector with ONNX Runtime, any batch size; ``inflight``
    batches at once on one thread of its own (see the module doc), or each to the end in
    ``submit`` with ``inflight`` 1."""

    _ring: InflightRing[npt.NDArray[np.floating]] | None = None
    _thread: ThreadPoolExecutor | None = None

    def __init__(self, config: OnnxRuntimeConfig, model_path: Path, max_batch: int) -> None:
        try:
            import onnxruntime as ort
        except ImportError as exc:  # pragma: no cover - a hard dependency
            raise EngineUnavailableError("onnxruntime is not installed") from exc
        if not model_path.is_file():
            raise ModelError(f"model file not found: {model_path}")
        options = ort.SessionOptions()
        options.intra_op_num_threads = config.intra_op_threads
        options.inter_op_num_threads = 1
        options.add_session_config_entry(
            "session.intra_op.allow_spinning", "1" if config.spin else "0"
        )
        try:
            self._session = ort.InferenceSession(
                str(model_path), sess_options=options, providers=config.providers
            )
        except Exception as exc:  # onnxruntime raises its own untyped errors
            raise ModelError(f"{model_path}: ONNX Runtime cannot load it: {exc}") from exc
        inputs, outputs = self._session.get_inputs(), self._session.get_outputs()
        if len(inputs) != 1 or not outputs:
            raise ModelError(f"{model_path}: expected one input, got {len(inputs)}")
        shape = inputs[0].shape
        if len(shape) != 4 or shape[1] != 3:
            raise ModelError(f"{model_path}: input must be [N, 3, H, W], got {shape}")
        if isinstance(shape[0], int) and shape[0] < max_batch:
            raise ModelError(
                f"{model_path}: the model takes batches of exactly {shape[0]} but "
                f"batching.max_batch is {max_batch}: set batching.max_batch to {shape[0]} or "
                "export the model with a dynamic batch dimension"
            )
        self._input_name = inputs[0].name
        self._dtype = np.dtype(_DTYPES.get(inputs[0].type, "float32"))
        height = shape[2] if isinstance(shape[2], int) else 640
        width = shape[3] if isinstance(shape[3], int) else 640
        out_shape = outputs[0].shape
        symbolic = any(not isinstance(d, int) for d in out_shape[1:])
        if len(out_shape) == 3 and symbolic:  # symbolic dims: run it once
            out_shape = self.infer(np.zeros((1, 3, height, width), self._dtype)).shape
        try:
            self.layout = detect_layout(tuple(out_shape))
        except ModelError as exc:
            raise ModelError(f"{model_path}: {exc}") from None
        self.info = EngineInfo(
            backend="onnxruntime",
            device=",".join(self._session.get_providers()),
            input_width=width,
            input_height=height,
            input_dtype=str(self._dtype),
            max_batch=max_batch,
            num_classes=out_shape[1] - 4 if self.layout is OutputLayout.ANCHORS else 0,
        )
        self._warm_up(model_path, min(max_batch, WARM_UP_MAX_BATCH), height, width)
        if config.inflight > 1:
            self.capabilities = EngineCapabilities(max_inflight=config.inflight)
            shape = (max_batch, 3, height, width)
            self._ring = InflightRing(
                [np.empty(shape, self._dtype) for _ in range(config.inflight)]
            )
            self._thread = ThreadPoolExecutor(1, thread_name_prefix="onnxruntime")

    def _warm_up(self, model_path: Path, batch: int, height: int, width: int) -> None:
        """ONNX Runtime's CPU arena grows to the largest batch it has run and never shrinks:
        run a full batch now, so a long-running worker's memory does not step up (hours
        later, the first time an overload fills a batch) and the first full batch is not
        slower than the rest.  Capped at :data:`WARM_UP_MAX_BATCH` frames (the time and
        memory of a larger one at every worker start are not worth it)."""
        try:
            self.infer(np.zeros((batch, 3, height, width), self._dtype))
        except Exception as exc:  # onnxruntime raises its own untyped errors
            raise ModelError(f"{model_path}: a batch of {batch} does not run: {exc}") from exc

    def infer(self, batch: npt.NDArray[np.floating]) -> npt.NDArray[np.float32]:
        feed = {self._input_name: np.ascontiguousarray(batch, dtype=self._dtype)}
        (output, *_) = self._session.run(None, feed)
        return np.asarray(output, dtype=np.float32)

    def submit(self, frames: Sequence[Any], thresholds: Thresholds) -> PendingBatch:
        """The frames written into a slot's staging buffer as the network's input here, the
        model queued on the engine's thread, the decode done by ``result()`` (see the module
        doc)."""
        if self._ring is None:
            return super().submit(frames, thresholds)
        if self._thread is None:
            raise EngineError("onnxruntime: the engine is closed")
        self.check_frames(frames)
        if not frames:
            return CompletedBatch(())
        index, staging = self._ring.acquire()
        try:
            batch = stage_network_input(staging, frames)
            future = self._thread.submit(self.infer, batch)
        except BaseException:
            self._ring.abandon(index)
            raise
        collect = functools.partial(self._decoded, future, thresholds)
        return SlotBatch(self._ring, index, collect, future.done)

    def _decoded(
        self, future: Future[npt.NDArray[np.float32]], thresholds: Thresholds
    ) -> list[Detections]:
        """A queued batch's detections: its outputs decoded on the collecting thread;
        :class:`EngineError` for one the engine's close cancelled."""
        try:
            output = future.result()
        except CancelledError:
            raise EngineError("onnxruntime: the engine was closed before this batch ran") from None
        return self.decode(output, thresholds)

    def close(self) -> None:
        """Waits for the batch running; batches still queued fail (:class:`EngineError`)."""
        thread, self._thread = self._thread, None
        if thread is not None:
            thread.shutdown(wait=True, cancel_futures=True)


def stage_network_input(
    staging: npt.NDArray[np.floating], frames: Sequence[Any]
) -> npt.NDArray[np.floating]:
    """The frames (``[H, W, 3]`` uint8 RGB each) written into the first rows of ``staging``
    (``[max_batch, 3, H, W]``) by :func:`~visionflow.pipeline.letterbox.to_network_input`,
    one frame at a time (no stacked copy, no temporary): those rows, which the engine reads
    instead of the caller's frames."""
    from visionflow.pipeline.letterbox import to_network_input

    batch = staging[: len(frames)]
    for i, frame in enumerate(frames):
        to_network_input(np.asarray(frame)[None], str(staging.dtype), out=batch[i : i + 1])
    return batch


BACKEND = Backend("onnxruntime", OnnxRuntimeConfig, OnnxRuntimeEngine)
