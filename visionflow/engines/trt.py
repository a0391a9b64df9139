"""NVIDIA TensorRT backend: serialized engines run with cuda-python streams and memory.

Building (ONNX -> engine, engine repository, precision, calibration, in-engine NMS) lives in
:mod:`visionflow.engines.trt_build`; this module runs the engine:

- **Contexts.** ``contexts`` execution contexts, each on its own CUDA stream with device
  buffers pre-allocated for ``max_batch`` (input, raw output, uint8 staging, frame-pointer
  table, NMS thresholds) and an output allocator for the data-dependent NMS outputs.
- **Input on the GPU.** Frames reach the engine as ``[H, W, 3]`` uint8: either device arrays
  that never left the GPU (CUDA IPC slots of GPU-decoding ingest processes) or host images
  uploaded as uint8 (4x less than float32).  :class:`~visionflow.gpu.kernels.InputKernel`
  normalises them to fp32/fp16 NCHW straight into the engine's input binding.
- **Several batches in flight.** ``submit`` takes the next context (round-robin,
  :mod:`visionflow.engines.inflight`) and queues uploads (from the context's pinned staging),
  the input kernel, ``execute_async_v3`` and the result copies (into pinned memory) on its
  stream, then records an event; ``result()`` waits on that event (then, with in-engine NMS,
  copies the kept rows, whose count is known only then).  Up to ``contexts`` batches run at
  once, so the host side of one overlaps the GPU work of the next.
- **NMS in the engine.** With ``nms_in_engine`` only the kept detections (``[K, 3]`` indices,
  ``[K, 4]`` boxes, ``[K]`` scores) are copied to the host; otherwise the raw ``[N, 4+C, A]``
  output is copied and decoded on the CPU like every other backend.

TensorRT cannot be installed on the machines this project is developed on: every piece of logic
that does not need the library is unit-tested, the input kernel runs in the GPU tests, and the
module is type-checked against ``tensorrt-stubs`` (10.13) in the gate.  No figure in this
repository comes from this backend.
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import numpy.typing as npt
from pydantic import Field

from visionflow.engines.base import (
    CompletedBatch,
    Detections,
    Engine,
    EngineCapabilities,
    EngineConfigBase,
    EngineInfo,
    PendingBatch,
    Thresholds,
)
from visionflow.engines.inflight import InflightRing, SlotBatch
from visionflow.engines.registry import Backend
from visionflow.engines.trt_build import (
    NMS_OUTPUTS,
    NMS_THRESHOLD_INPUTS,
    CalibrationBatches,
    EngineKey,
    EngineRepository,
    Profile,
    build_plan,
    calibration_input,
    file_sha256,
    import_trt,
    make_entropy_calibrator,
    onnx_has_reduced_precision,
    onnx_input_hw,
    profile_for,
    trt_major,
)
from visionflow.errors import EngineError, ModelError
from visionflow.gpu import cuda
from visionflow.gpu.cuda import check
from visionflow.gpu.kernels import InputKernel, frame_pointers, staging_pointers
from visionflow.pipeline.postprocess import cxcywh_to_xyxy

if TYPE_CHECKING:
    import tensorrt as trt

_ALIGN = 256  # TensorRT wants tensor addresses aligned; cudaMalloc gives 256
BACKEND_KEY = "tensorrt"


class TensorRTConfig(EngineConfigBase):
    """NVIDIA TensorRT engines built from the ONNX model (needs the tensorrt package)."""

    backend: Literal["tensorrt"] = Field(
        default="tensorrt", description="Inference backend: TensorRT."
    )
    precision: Literal["fp32", "fp16", "int8"] = Field(
        default="fp16", description="Engine precision; int8 needs calibration frames."
    )
    engine_dir: str = Field(
        default="~/.cache/visionflow/engines",
        description="Engine repository; engines are keyed by model, GPU, TensorRT version, "
        "precision and profile and rebuilt on mismatch.",
    )
    workspace_mb: int = Field(default=2048, ge=64, description="Builder workspace limit (MiB).")
    contexts: int = Field(
        default=2,
        ge=1,
        le=16,
        description="Execution contexts, each on its own CUDA stream with its own buffers: "
        "how many batches a worker keeps in flight.",
    )
    opt_batch: int | None = Field(
        default=None, ge=1, description="Optimisation-profile 'opt' batch; empty: max_batch."
    )
    calibration_frames: int = Field(
        default=256, ge=8, description="INT8: frames taken from the streams for calibration."
    )
    calibration_cache: str | None = Field(
        default=None, description="INT8: calibration cache file; empty: beside the engine."
    )
    calibration_images: str | None = Field(
        default=None,
        description="INT8: letterboxed frames from the configured streams (.npy, written by "
        "'visionflow calibrate -c CONFIG'), read when no calibration cache exists yet; "
        "empty: calibration.npy in engine_dir.",
    )
    nms_in_engine: bool = Field(
        default=True,
        description="Run NMS inside the engine (TensorRT's INMSLayer) so only kept detections "
        "are copied to the host; false: copy the raw output and decode on the CPU.",
    )
    nms_max_per_class: int = Field(
        default=300, ge=1, le=5000, description="In-engine NMS: most boxes kept per class."
    )
    device: int = Field(default=0, ge=0, description="CUDA device ordinal inside the worker.")

    def batches_at_once(self) -> int:
        return self.contexts

    def load_timeout_s(self) -> float:
        return 1800.0  # a first start builds the engine (INT8: calibrates too): minutes


# ---------------------------------------------------------------------------- pure logic
def decode_in_engine_nms(
    selected: npt.NDArray[np.integer],
    boxes_cxcywh: npt.NDArray[np.float32],
    scores: npt.NDArray[np.float32],
    batch: int,
    max_detections: int,
) -> list[Detections]:
    """Per image ``(xyxy boxes, scores, class ids)``, best first, from the engine's kept rows:
    ``selected`` ``[K, 3]`` (image, class, anchor) with their ``[K, 4]`` boxes and ``[K]``
    scores."""
    images = selected[:, 0]
    out: list[Detections] = []
    for image in range(batch):
        mine = np.flatnonzero(images == image)
        order = mine[np.argsort(-scores[mine], kind="stable")][:max_detections]
        out.append(
            (
                cxcywh_to_xyxy(boxes_cxcywh[order].astype(np.float32)),
                scores[order].astype(np.float32),
                selected[order, 1].astype(np.intp),
            )
        )
    return out


def grown_capacity(size: int, minimum: int = 1 << 16) -> int:
    """Bytes to allocate for ``size``: the next power of two, at least ``minimum`` (so a
    growing detection count reallocates a few times, not every batch)."""
    return max(minimum, 1 << max(0, int(size) - 1).bit_length())


@dataclass
class GrowingBuffers:
    """Device buffers for outputs whose size TensorRT learns only while running (the NMS
    rows); ``malloc``/``free`` are cudaMalloc/cudaFree in the engine, plain callables here."""

    malloc: Callable[[int], int]
    free: Callable[[int], None]
    pointers: dict[str, int] = field(default_factory=dict)
    capacity: dict[str, int] = field(default_factory=dict)

    def ensure(self, name: str, size: int) -> int:
        """A pointer to at least ``size`` bytes for tensor ``name`` (the old one if it fits)."""
        if self.capacity.get(name, -1) >= size:
            return self.pointers[name]
        if name in self.pointers:
            self.free(self.pointers[name])
        capacity = grown_capacity(size)
        self.pointers[name] = self.malloc(capacity)
        self.capacity[name] = capacity
        return self.pointers[name]

    def close(self) -> None:
        for pointer in self.pointers.values():
            self.free(pointer)
        self.pointers.clear()
        self.capacity.clear()


def make_output_allocator(buffers: GrowingBuffers) -> trt.IOutputAllocator:
    """An ``IOutputAllocator`` over :class:`GrowingBuffers`."""
    import tensorrt as trt

    class Allocator(trt.IOutputAllocator):
        def __init__(self) -> None:
            trt.IOutputAllocator.__init__(self)

        def reallocate_output(
            self, tensor_name: str, memory: int, size: int, alignment: int
        ) -> int:
            return buffers.ensure(tensor_name, size)

        def reallocate_output_async(
            self, tensor_name: str, memory: int, size: int, alignment: int, stream: int
        ) -> int:
            return buffers.ensure(tensor_name, size)

        def notify_shape(self, tensor_name: str, shape: Any) -> None:
            pass  # the row count is read from the num_selected output instead

    return Allocator()


# ---------------------------------------------------------------------------- runtime
def batch_pointers(
    frames: Sequence[Any], on_device: Sequence[bool], staging: int, height: int, width: int
) -> npt.NDArray[np.uint64]:
    """The input kernel's frame table for a batch: frame ``i`` in GPU memory is read where it
    is; a host frame was uploaded to row ``i`` of the device staging buffer at ``staging``."""
    table = staging_pointers(staging, len(frames), height, width)
    where = [i for i, device in enumerate(on_device) if device]
    if where:
        try:
            table[where] = frame_pointers([frames[i] for i in where], height, width)
        except (TypeError, ValueError) as exc:
            raise EngineError(f"tensorrt: {exc}") from exc
    return table


def trt_capabilities(config: TensorRTConfig) -> EngineCapabilities:
    """Host and device frames, in-engine NMS as configured, one batch in flight per context."""
    return EngineCapabilities(
        host_frames=True,
        device_frames=True,
        nms_in_engine=config.nms_in_engine,
        max_inflight=config.contexts,
    )


# ---------------------------------------------------------------------------- runtime
@dataclass
class _Context:
    """One batch in flight: an execution context on its own stream, with its own buffers."""

    context: Any
    stream: int
    event: int
    device_in: int
    device_raw: int
    device_u8: int
    device_pointers: int
    device_thresholds: int  # iou at +0, score at +_ALIGN
    device_count: int
    outputs: GrowingBuffers
    allocator: Any  # held here: TensorRT keeps only a raw pointer to it
    host_u8: npt.NDArray[np.uint8]  # pinned staging for host frames
    host_pointers: npt.NDArray[np.uint64]  # pinned frame table
    host_count: npt.NDArray[np.int32]  # pinned: in-engine NMS row count
    host_raw: npt.NDArray[Any] | None  # pinned raw output (no in-engine NMS)
    thresholds: tuple[float, float] | None = None


class TensorRTEngine(Engine):
    """Serialized-engine runtime with ``contexts`` execution contexts, each on its own CUDA
    stream: up to ``contexts`` batches in flight (:mod:`visionflow.engines.inflight`)."""

    def __init__(
        self,
        config: TensorRTConfig,
        model_path: Path,
        max_batch: int,
        calibration_frames: Iterator[npt.NDArray[np.floating]] | None = None,
    ) -> None:
        import_trt()
        import tensorrt as trt

        if not model_path.is_file():
            raise ModelError(f"model file not found: {model_path}")
        self._rt = rt = cuda.runtime()
        check(rt.cudaSetDevice(config.device), "cudaSetDevice")
        props = check(rt.cudaGetDeviceProperties(config.device), "cudaGetDeviceProperties")
        gpu = props.name.decode() if isinstance(props.name, bytes) else str(props.name)
        capability = f"{props.major}.{props.minor}"
        height, width = onnx_input_hw(model_path)
        profile = profile_for(max_batch, config.opt_batch, height, width)
        plan = self._plan(config, model_path, profile, gpu, capability, calibration_frames)
        self._runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        self._engine = self._runtime.deserialize_cuda_engine(plan)
        if self._engine is None:
            raise EngineError("TensorRT could not deserialize the engine")
        self._nms = config.nms_in_engine
        self._io_names(trt)
        self._half = self._engine.get_tensor_dtype(self._input) == trt.DataType.HALF
        self._raw_dtype = np.dtype(
            np.float16
            if self._engine.get_tensor_dtype(self._raw) == trt.DataType.HALF
            else np.float32
        )
        raw_dims = self._engine.get_tensor_shape(self._raw)
        self._raw_per_image = (int(raw_dims[1]), int(raw_dims[2]))
        self._size = (height, width)
        self._max_batch = max_batch
        self._kernel = InputKernel(props.major, props.minor)
        self._pinned: list[int] = []
        self._ring = InflightRing([self._make_context() for _ in range(config.contexts)])
        self.capabilities = trt_capabilities(config)
        self.info = EngineInfo(
            backend=BACKEND_KEY,
            device=f"{gpu} (sm {capability}, TensorRT {trt.__version__}, {config.precision})",
            input_width=width,
            input_height=height,
            input_dtype="float16" if self._half else "float32",
            max_batch=max_batch,
            num_classes=self._raw_per_image[0] - 4,
        )

    # -- building / loading
    @staticmethod
    def _plan(
        config: TensorRTConfig,
        model_path: Path,
        profile: Profile,
        gpu: str,
        capability: str,
        calibration_frames: Iterator[npt.NDArray[np.floating]] | None,
    ) -> bytes:
        import tensorrt as trt

        max_batch = profile.max[0]
        strongly_typed = trt_major(trt.__version__) >= 11
        reduced = onnx_has_reduced_precision(model_path)
        if strongly_typed and config.precision != "fp32" and not reduced:
            raise EngineError(
                f"TensorRT {trt.__version__} builds strongly typed networks only: convert "
                f"{model_path.name} to {config.precision} first (python -m modelopt.onnx.autocast "
                "for fp16, ModelOpt Q/DQ quantization for int8) or use precision 'fp32'"
            )
        key = EngineKey(
            file_sha256(model_path),
            gpu,
            capability,
            trt.__version__,
            config.precision,
            profile,
            config.nms_in_engine,
            config.nms_max_per_class if config.nms_in_engine else 0,
        )
        cache = Path(config.calibration_cache or Path(config.engine_dir) / f"{key.digest()}.calib")

        def build() -> bytes:
            calibrator = None
            if config.precision == "int8" and not strongly_typed:
                frames = calibration_frames or calibration_input(config, cache, profile.max[2:])
                batches = CalibrationBatches(
                    frames or iter(()), min(8, max_batch), config.calibration_frames
                )
                calibrator = make_entropy_calibrator(batches, cache.expanduser())
            return build_plan(model_path, config, profile, calibrator, strongly_typed)

        return EngineRepository(Path(config.engine_dir)).get_or_build(key, build)

    def _io_names(self, trt: Any) -> None:
        engine = self._engine
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        inputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        outputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        self._input = next(n for n in inputs if n not in NMS_THRESHOLD_INPUTS)
        self._raw = next(n for n in outputs if n not in NMS_OUTPUTS)
        if self._nms and not set(NMS_OUTPUTS) <= set(outputs):
            raise EngineError(f"engine built without in-engine NMS (outputs: {outputs})")

    def _malloc(self, nbytes: int) -> int:
        return int(check(self._rt.cudaMalloc(max(nbytes, _ALIGN)), "cudaMalloc"))

    def _pinned_array(self, shape: tuple[int, ...], dtype: np.dtype[Any]) -> npt.NDArray[Any]:
        """Page-locked host memory (``cudaMallocHost``), freed by :meth:`close`."""
        nbytes = max(1, int(np.prod(shape)) * dtype.itemsize)
        pointer = int(check(self._rt.cudaMallocHost(nbytes), "cudaMallocHost"))
        self._pinned.append(pointer)
        raw = (ctypes.c_uint8 * nbytes).from_address(pointer)
        return np.frombuffer(memoryview(raw), dtype, count=int(np.prod(shape))).reshape(shape)

    def _make_context(self) -> _Context:
        (height, width), n = self._size, self._max_batch
        context = self._engine.create_execution_context()
        channels, anchors = self._raw_per_image
        outputs = GrowingBuffers(self._malloc, lambda p: check(self._rt.cudaFree(p), "cudaFree"))
        flags = self._rt.cudaEventDisableTiming
        ctx = _Context(
            context=context,
            stream=int(check(self._rt.cudaStreamCreate(), "cudaStreamCreate")),
            event=int(check(self._rt.cudaEventCreateWithFlags(flags), "cudaEventCreate")),
            device_in=self._malloc(n * 3 * height * width * (2 if self._half else 4)),
            device_raw=self._malloc(n * channels * anchors * self._raw_dtype.itemsize),
            device_u8=self._malloc(n * height * width * 3),
            device_pointers=self._malloc(n * 8),
            device_thresholds=self._malloc(2 * _ALIGN),
            device_count=self._malloc(_ALIGN),
            outputs=outputs,
            allocator=make_output_allocator(outputs) if self._nms else None,
            host_u8=self._pinned_array((n, height, width, 3), np.dtype(np.uint8)),
            host_pointers=self._pinned_array((n,), np.dtype(np.uint64)),
            host_count=self._pinned_array((1,), np.dtype(np.int32)),
            host_raw=None
            if self._nms
            else self._pinned_array((n, channels, anchors), self._raw_dtype),
        )
        context.set_tensor_address(self._input, ctx.device_in)
        context.set_tensor_address(self._raw, ctx.device_raw)
        if self._nms:
            iou, score = NMS_THRESHOLD_INPUTS
            context.set_tensor_address(iou, ctx.device_thresholds)
            context.set_tensor_address(score, ctx.device_thresholds + _ALIGN)
            context.set_tensor_address(NMS_OUTPUTS[0], ctx.device_count)
            for name in NMS_OUTPUTS[1:]:
                context.set_output_allocator(name, ctx.allocator)
        return ctx

    # -- copies
    def _h2d(self, ctx: _Context, dst: int, src: npt.NDArray[Any]) -> None:
        kind = self._rt.cudaMemcpyKind.cudaMemcpyHostToDevice
        check(self._rt.cudaMemcpyAsync(dst, src.ctypes.data, src.nbytes, kind, ctx.stream), "H2D")

    def _d2h(self, ctx: _Context, src: int, dst: npt.NDArray[Any]) -> npt.NDArray[Any]:
        kind = self._rt.cudaMemcpyKind.cudaMemcpyDeviceToHost
        check(self._rt.cudaMemcpyAsync(dst.ctypes.data, src, dst.nbytes, kind, ctx.stream), "D2H")
        return dst

    def _sync(self, ctx: _Context) -> None:
        check(self._rt.cudaStreamSynchronize(ctx.stream), "cudaStreamSynchronize")

    def _query(self, ctx: _Context) -> bool:
        result = self._rt.cudaEventQuery(ctx.event)
        err = result[0] if isinstance(result, tuple) else result
        if err == self._rt.cudaError_t.cudaErrorNotReady:
            return False
        check(result, "cudaEventQuery")
        return True

    # -- running
    def _execute(self, ctx: _Context, n: int) -> None:
        height, width = self._size
        ctx.context.set_input_shape(self._input, (n, 3, height, width))
        if not ctx.context.execute_async_v3(ctx.stream):
            raise EngineError("TensorRT enqueue failed")

    def _set_thresholds(self, ctx: _Context, conf: float, iou: float) -> None:
        if ctx.thresholds == (conf, iou):
            return
        self._h2d(ctx, ctx.device_thresholds, np.array([iou], np.float32))
        self._h2d(ctx, ctx.device_thresholds + _ALIGN, np.array([conf], np.float32))
        self._sync(ctx)  # the host arrays above are temporaries (once per context and change)
        ctx.thresholds = (conf, iou)

    def _enqueue(
        self, ctx: _Context, frames: Sequence[Any], on_device: list[bool], thresholds: Thresholds
    ) -> None:
        """Everything of one batch on ``ctx.stream``: uploads of host frames (from pinned
        staging), frame table, input kernel, engine, result copies into pinned memory, event."""
        (height, width), n = self._size, len(frames)
        frame_bytes = height * width * 3
        host = [i for i, device in enumerate(on_device) if not device]
        for i in host:
            ctx.host_u8[i] = frames[i]
        if len(host) == n:  # the usual case: one copy for the whole batch
            self._h2d(ctx, ctx.device_u8, ctx.host_u8[:n])
        else:
            for i in host:
                self._h2d(ctx, ctx.device_u8 + i * frame_bytes, ctx.host_u8[i])
        ctx.host_pointers[:n] = batch_pointers(frames, on_device, ctx.device_u8, height, width)
        self._h2d(ctx, ctx.device_pointers, ctx.host_pointers[:n])
        if self._nms:
            self._set_thresholds(ctx, thresholds.conf, thresholds.iou)
        self._kernel.launch(
            ctx.device_pointers, ctx.device_in, n, height * width, self._half, ctx.stream
        )
        self._execute(ctx, n)
        if self._nms:
            self._d2h(ctx, ctx.device_count, ctx.host_count)
        else:
            assert ctx.host_raw is not None
            self._d2h(ctx, ctx.device_raw, ctx.host_raw[:n])
        check(self._rt.cudaEventRecord(ctx.event, ctx.stream), "cudaEventRecord")

    def _collect(self, ctx: _Context, n: int, thresholds: Thresholds) -> list[Detections]:
        from visionflow.pipeline.postprocess import decode_output

        check(self._rt.cudaEventSynchronize(ctx.event), "cudaEventSynchronize")
        t = thresholds
        if not self._nms:
            assert ctx.host_raw is not None
            raw = ctx.host_raw[:n].astype(np.float32)  # a copy: the pinned rows are reused
            return [decode_output(o, t.conf, t.iou, t.max_detections) for o in raw]
        k = int(ctx.host_count[0])
        selected = np.zeros((k, 3), np.int32)
        boxes = np.zeros((k, 4), np.float32)
        scores = np.zeros(k, np.float32)
        if k:  # the row count is known only now: a second, small copy
            _, indices, box_name, score_name = NMS_OUTPUTS
            self._d2h(ctx, ctx.outputs.pointers[indices], selected)
            self._d2h(ctx, ctx.outputs.pointers[box_name], boxes)
            self._d2h(ctx, ctx.outputs.pointers[score_name], scores)
            self._sync(ctx)
        return decode_in_engine_nms(selected, boxes, scores, n, t.max_detections)

    # -- the Engine interface
    def submit(self, frames: Sequence[Any], thresholds: Thresholds) -> PendingBatch:
        """Enqueue a batch on the next context's stream; ``result()`` waits on its event."""
        on_device = self.check_frames(frames)
        n = len(frames)
        if n == 0:
            return CompletedBatch(())
        index, ctx = self._ring.acquire()
        try:
            self._enqueue(ctx, frames, on_device, thresholds)
        except BaseException:
            self._ring.abandon(index)
            raise
        return SlotBatch(
            self._ring,
            index,
            wait=lambda: self._collect(ctx, n, thresholds),
            poll=lambda: self._query(ctx),
            keep=frames,  # device frames are read by the input kernel until the event
        )

    def infer(self, batch: npt.NDArray[np.floating]) -> npt.NDArray[np.float32]:
        if self._ring.pending:
            raise EngineError("infer() while batches are in flight")
        data = np.ascontiguousarray(batch, np.float16 if self._half else np.float32)
        n = data.shape[0]
        ctx = self._ring.slots[0]
        self._h2d(ctx, ctx.device_in, data)
        if self._nms:  # the NMS branch runs too: give it thresholds it can read
            self._set_thresholds(ctx, 1.0, 0.0)
        self._execute(ctx, n)
        out = np.empty((n, *self._raw_per_image), self._raw_dtype)
        self._d2h(ctx, ctx.device_raw, out)
        self._sync(ctx)
        return out.astype(np.float32, copy=False)

    def close(self) -> None:
        rt = self._rt
        for ctx in self._ring.slots:
            rt.cudaStreamSynchronize(ctx.stream)
            for pointer in (
                ctx.device_in,
                ctx.device_raw,
                ctx.device_u8,
                ctx.device_pointers,
                ctx.device_thresholds,
                ctx.device_count,
            ):
                rt.cudaFree(pointer)
            ctx.outputs.close()
            rt.cudaEventDestroy(ctx.event)
            rt.cudaStreamDestroy(ctx.stream)
        self._ring.slots.clear()
        for pointer in self._pinned:
            rt.cudaFreeHost(pointer)
        self._pinned.clear()
        self._kernel.close()


BACKEND = Backend(BACKEND_KEY, TensorRTConfig, TensorRTEngine)
