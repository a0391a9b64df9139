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
- **Async execution.** Kernel, ``execute_async_v3`` and the small result copies are queued on
  the context's stream with one synchronisation for the count and one for the kept rows.
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
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from visionflow.engines.base import Detections, Engine, EngineInfo
from visionflow.engines.config import TensorRTConfig
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
@dataclass
class _Context:
    context: Any
    stream: int
    device_in: int
    device_raw: int
    device_u8: int
    device_pointers: int
    device_thresholds: int  # iou at +0, score at +_ALIGN
    device_count: int
    outputs: GrowingBuffers
    allocator: Any  # held here: TensorRT keeps only a raw pointer to it
    lock: threading.Lock = field(default_factory=threading.Lock)
    thresholds: tuple[float, float] | None = None


class TensorRTEngine(Engine):
    """Serialized-engine runtime with several contexts, each on its own CUDA stream."""

    accepts_device_frames = True

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
        self._contexts = [self._make_context() for _ in range(config.contexts)]
        self._next = 0
        self.info = EngineInfo(
            backend="tensorrt",
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

    def _make_context(self) -> _Context:
        (height, width), n = self._size, self._max_batch
        context = self._engine.create_execution_context()
        channels, anchors = self._raw_per_image
        outputs = GrowingBuffers(self._malloc, lambda p: check(self._rt.cudaFree(p), "cudaFree"))
        ctx = _Context(
            context=context,
            stream=int(check(self._rt.cudaStreamCreate(), "cudaStreamCreate")),
            device_in=self._malloc(n * 3 * height * width * (2 if self._half else 4)),
            device_raw=self._malloc(n * channels * anchors * self._raw_dtype.itemsize),
            device_u8=self._malloc(n * height * width * 3),
            device_pointers=self._malloc(n * 8),
            device_thresholds=self._malloc(2 * _ALIGN),
            device_count=self._malloc(_ALIGN),
            outputs=outputs,
            allocator=make_output_allocator(outputs) if self._nms else None,
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

    def _pick(self) -> _Context:
        ctx = self._contexts[self._next % len(self._contexts)]
        self._next += 1
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

    # -- running
    def _normalise(self, ctx: _Context, pointers: npt.NDArray[np.uint64]) -> None:
        """The input kernel: frames at ``pointers`` -> the engine's input binding."""
        height, width = self._size
        self._h2d(ctx, ctx.device_pointers, pointers)
        n = len(pointers)
        self._kernel.launch(
            ctx.device_pointers, ctx.device_in, n, height * width, self._half, ctx.stream
        )

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
        self._sync(ctx)  # the host arrays above are temporaries
        ctx.thresholds = (conf, iou)

    def _read_raw(self, ctx: _Context, n: int) -> npt.NDArray[np.float32]:
        out = np.empty((n, *self._raw_per_image), self._raw_dtype)
        self._d2h(ctx, ctx.device_raw, out)
        self._sync(ctx)
        return out.astype(np.float32, copy=False)

    def _read_nms(self, ctx: _Context, n: int, max_detections: int) -> list[Detections]:
        count = self._d2h(ctx, ctx.device_count, np.zeros(1, np.int32))
        self._sync(ctx)
        k = int(count[0])
        selected = np.zeros((k, 3), np.int32)
        boxes = np.zeros((k, 4), np.float32)
        scores = np.zeros(k, np.float32)
        if k:
            _, indices, box_name, score_name = NMS_OUTPUTS
            self._d2h(ctx, ctx.outputs.pointers[indices], selected)
            self._d2h(ctx, ctx.outputs.pointers[box_name], boxes)
            self._d2h(ctx, ctx.outputs.pointers[score_name], scores)
            self._sync(ctx)
        return decode_in_engine_nms(selected, boxes, scores, n, max_detections)

    def _detections(
        self,
        pointers: Callable[[_Context], npt.NDArray[np.uint64]],
        conf: float,
        iou: float,
        max_detections: int,
    ) -> list[Detections]:
        """One batch: frame table -> input kernel -> engine -> kept detections per frame."""
        from visionflow.pipeline.postprocess import decode_output

        ctx = self._pick()
        with ctx.lock:
            table = pointers(ctx)
            n = len(table)
            if n > self._max_batch:
                raise EngineError(f"batch of {n} exceeds the engine's max_batch {self._max_batch}")
            if self._nms:
                self._set_thresholds(ctx, conf, iou)
            self._normalise(ctx, table)
            self._execute(ctx, n)
            if self._nms:
                return self._read_nms(ctx, n, max_detections)
            raw = self._read_raw(ctx, n)
        return [decode_output(o, conf, iou, max_detections) for o in raw]

    def _upload(
        self, images: npt.NDArray[np.uint8]
    ) -> Callable[[_Context], npt.NDArray[np.uint64]]:
        height, width = self._size
        if images.shape[1:] != (height, width, 3):
            raise ValueError(
                f"images are {images.shape[1:]}; the engine takes {(height, width, 3)}"
            )
        data = np.ascontiguousarray(images, np.uint8)

        def pointers(ctx: _Context) -> npt.NDArray[np.uint64]:
            self._h2d(ctx, ctx.device_u8, data)
            return staging_pointers(ctx.device_u8, len(data), height, width)

        return pointers

    # -- the Engine interface
    def infer(self, batch: npt.NDArray[np.floating]) -> npt.NDArray[np.float32]:
        data = np.ascontiguousarray(batch, np.float16 if self._half else np.float32)
        n = data.shape[0]
        ctx = self._pick()
        with ctx.lock:
            self._h2d(ctx, ctx.device_in, data)
            if self._nms:  # the NMS branch runs too: give it thresholds it can read
                self._set_thresholds(ctx, 1.0, 0.0)
            self._execute(ctx, n)
            return self._read_raw(ctx, n)

    def detect_images(
        self,
        images: npt.NDArray[np.uint8],
        conf_threshold: float,
        iou_threshold: float,
        max_detections: int,
    ) -> list[Detections]:
        """Letterboxed uint8 images uploaded as uint8 and normalised on the GPU."""
        return self._detections(self._upload(images), conf_threshold, iou_threshold, max_detections)

    def detect_frames(
        self,
        frames: Sequence[Any],
        conf_threshold: float,
        iou_threshold: float,
        max_detections: int,
    ) -> list[Detections]:
        """Device frames are read where they are (one kernel over a table of their addresses);
        a batch of host frames is uploaded as uint8 first."""
        height, width = self._size
        if all(hasattr(f, "__cuda_array_interface__") for f in frames):
            table = frame_pointers(frames, height, width)
            return self._detections(
                lambda ctx: table, conf_threshold, iou_threshold, max_detections
            )
        if any(hasattr(f, "__cuda_array_interface__") for f in frames):
            raise TypeError("a batch mixes frames in GPU memory with host frames")
        images = np.stack([np.asarray(f) for f in frames])
        return self.detect_images(images, conf_threshold, iou_threshold, max_detections)

    def host_buffer(self, max_batch: int) -> npt.NDArray[np.uint8]:
        """Pinned host memory (``cudaMallocHost``): uploads from it need no staging copy."""
        height, width = self._size
        nbytes = max_batch * height * width * 3
        pointer = int(check(self._rt.cudaMallocHost(nbytes), "cudaMallocHost"))
        self._pinned.append(pointer)
        raw = (ctypes.c_uint8 * nbytes).from_address(pointer)
        view: npt.NDArray[np.uint8] = np.frombuffer(memoryview(raw), np.uint8)
        return view.reshape(max_batch, height, width, 3)

    def close(self) -> None:
        rt = self._rt
        for ctx in self._contexts:
            with ctx.lock:
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
                rt.cudaStreamDestroy(ctx.stream)
        self._contexts.clear()
        for pointer in self._pinned:
            rt.cudaFreeHost(pointer)
        self._pinned.clear()
        self._kernel.close()
