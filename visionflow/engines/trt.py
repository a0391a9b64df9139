"""NVIDIA TensorRT backend (TensorRT Python API + cuda-python for streams and memory).

What it does:

- **Engine repository.** ONNX -> serialized engine, cached in ``engine_dir`` under a key made
  of the model's hash, GPU name, compute capability, TensorRT version, precision, input size and
  optimisation profile; a cached engine whose metadata does not match is rebuilt.  Building
  shows its progress (``IProgressMonitor``).
- **Dynamic batch.** One optimisation profile ``min=1, opt=opt_batch, max=max_batch`` from the
  batching policy.
- **Precision.** TensorRT 10.x: FP16 / INT8 builder flags; INT8 uses an entropy calibrator fed
  with frames from the configured streams, with a calibration cache on disk.  TensorRT 11.x
  removed those flags and the calibrator (strongly typed networks only): the model must already
  carry its precision (an fp16 or Q/DQ ONNX, e.g. from ``modelopt.onnx.autocast``); asking for
  fp16/int8 with an fp32 model there is a clear error rather than a silent fp32 engine.
- **NMS in the engine.** ``add_in_engine_nms`` appends TensorRT's ``INMSLayer`` to the parsed
  network (boxes ``[N, A, 4]`` centre format, scores ``[N, A, C]``) where TensorRT offers it.
- **Execution.** ``contexts`` execution contexts, each with its own CUDA stream and
  pre-allocated device and pinned host buffers for ``max_batch``; async H2D copy, enqueue
  (``execute_async_v3``), D2H copy, one synchronisation per batch.

TensorRT cannot be installed on the machines this project is developed on: every piece of logic
that does not need the library is unit-tested, and the module is type-checked against
``tensorrt-stubs`` (10.13) in the gate.  No figure in this repository comes from this backend.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from visionflow.engines.base import Detections, Engine, EngineInfo
from visionflow.engines.config import TensorRTConfig
from visionflow.errors import EngineError, EngineUnavailableError, ModelError

if TYPE_CHECKING:
    import tensorrt as trt

log = logging.getLogger("visionflow.engines.trt")
INSTALL_HINT = (
    "TensorRT is not installed: install the 'tensorrt' wheel matching your CUDA (e.g. "
    "pip install tensorrt-cu13) or use engine.backend 'torch-cuda' / 'onnxruntime'"
)


# ---------------------------------------------------------------------------- pure logic
def trt_major(version: str) -> int:
    """Major version of a TensorRT version string ('10.13.0.35' -> 10)."""
    try:
        return int(version.split(".", 1)[0])
    except ValueError as exc:
        raise EngineError(f"unrecognised TensorRT version {version!r}") from exc


@dataclass(frozen=True)
class Profile:
    """One optimisation profile for the input tensor (NCHW)."""

    min: tuple[int, int, int, int]
    opt: tuple[int, int, int, int]
    max: tuple[int, int, int, int]


def profile_for(max_batch: int, opt_batch: int | None, height: int, width: int) -> Profile:
    """min 1, opt ``opt_batch`` (default ``max_batch``), max ``max_batch``."""
    if max_batch < 1:
        raise ValueError("max_batch must be >= 1")
    opt = min(max(1, opt_batch or max_batch), max_batch)
    return Profile((1, 3, height, width), (opt, 3, height, width), (max_batch, 3, height, width))


@dataclass(frozen=True)
class EngineKey:
    """Everything an engine depends on; any change means a rebuild."""

    model_sha256: str
    gpu_name: str
    compute_capability: str
    trt_version: str
    precision: str
    profile: Profile
    nms_in_engine: bool = False

    def digest(self) -> str:
        blob = json.dumps(asdict(self), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:20]

    def filename(self) -> str:
        gpu = "".join(c if c.isalnum() else "-" for c in self.gpu_name).strip("-").lower()
        return (
            f"{self.model_sha256[:12]}-{gpu}-sm{self.compute_capability.replace('.', '')}-"
            f"trt{self.trt_version}-{self.precision}-b{self.profile.max[0]}-{self.digest()}"
        )


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


class EngineRepository:
    """Serialized engines on disk with a JSON sidecar holding their :class:`EngineKey`."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder.expanduser()

    def paths(self, key: EngineKey) -> tuple[Path, Path]:
        base = self.folder / key.filename()
        return base.with_suffix(".engine"), base.with_suffix(".json")

    def load(self, key: EngineKey) -> bytes | None:
        """The cached engine for ``key``, or None when missing or built for something else."""
        engine, meta = self.paths(key)
        if not engine.is_file() or not meta.is_file():
            return None
        try:
            recorded = json.loads(meta.read_text())
        except (OSError, ValueError):
            return None
        if recorded != json.loads(json.dumps(asdict(key))):
            log.warning("engine %s was built for %s; rebuilding", engine.name, recorded)
            return None
        return engine.read_bytes()

    def store(self, key: EngineKey, plan: bytes) -> Path:
        engine, meta = self.paths(key)
        self.folder.mkdir(parents=True, exist_ok=True)
        tmp = engine.with_suffix(".partial")
        tmp.write_bytes(plan)
        tmp.replace(engine)
        meta.write_text(json.dumps(asdict(key), indent=2, sort_keys=True))
        return engine

    def get_or_build(self, key: EngineKey, build: Callable[[], bytes]) -> bytes:
        cached = self.load(key)
        if cached is not None:
            return cached
        started = time.monotonic()
        plan = build()
        path = self.store(key, plan)
        log.info("built %s in %.0fs", path.name, time.monotonic() - started)
        return plan


class CalibrationBatches:
    """Fixed-size calibration batches (``[B, 3, H, W]`` float32) from a stream of frames."""

    def __init__(
        self, frames: Iterator[npt.NDArray[np.floating]], batch_size: int, max_frames: int
    ) -> None:
        self._frames, self.batch_size, self.max_frames = frames, batch_size, max_frames
        self.taken = 0

    def next_batch(self) -> npt.NDArray[np.float32] | None:
        """The next full batch, or None when ``max_frames`` were used or frames ran out."""
        if self.taken + self.batch_size > self.max_frames:
            return None
        chunk = []
        for frame in self._frames:
            chunk.append(np.asarray(frame, np.float32))
            if len(chunk) == self.batch_size:
                break
        if len(chunk) < self.batch_size:
            return None
        self.taken += self.batch_size
        return np.ascontiguousarray(np.stack(chunk))


def decode_in_engine_nms(
    selected: npt.NDArray[np.integer],
    count: int,
    boxes_xyxy: npt.NDArray[np.float32],
    scores: npt.NDArray[np.float32],
    batch: int,
    max_detections: int,
) -> list[Detections]:
    """Turn ``INMSLayer`` outputs into per-image ``(boxes, scores, classes)``.

    ``selected`` is ``[K, 3]`` rows of ``(batch index, class, box index)`` of which the first
    ``count`` are valid; ``boxes_xyxy`` is ``[N, A, 4]`` and ``scores`` ``[N, A, C]``.
    """
    rows = selected[: int(count)]
    out: list[Detections] = []
    for image in range(batch):
        mine = rows[rows[:, 0] == image]
        cls, idx = mine[:, 1].astype(np.intp), mine[:, 2].astype(np.intp)
        s = scores[image, idx, cls].astype(np.float32)
        order = np.argsort(-s, kind="stable")[:max_detections]
        out.append((boxes_xyxy[image, idx[order]].astype(np.float32), s[order], cls[order]))
    return out


# ---------------------------------------------------------------------------- TensorRT parts
def _import_trt() -> None:
    """Fail with installation advice when TensorRT is missing."""
    try:
        import tensorrt  # noqa: F401
    except ImportError as exc:
        raise EngineUnavailableError(INSTALL_HINT) from exc


def _cuda_runtime() -> Any:
    try:
        from cuda.bindings import runtime
    except ImportError as exc:
        raise EngineUnavailableError(
            "the tensorrt backend needs cuda-python (cuda.bindings)"
        ) from exc
    return runtime


def _check(result: Any) -> Any:
    """cuda-python returns ``(err, *values)``; raise on error, return the values."""
    err, *values = result if isinstance(result, tuple) else (result,)
    if int(err) != 0:
        raise EngineError(f"CUDA call failed: {err}")
    return values[0] if len(values) == 1 else tuple(values)


def make_progress_monitor() -> trt.IProgressMonitor:
    """An ``IProgressMonitor`` that logs build phases (building takes minutes)."""
    import tensorrt as trt

    class LogProgress(trt.IProgressMonitor):
        def __init__(self) -> None:
            trt.IProgressMonitor.__init__(self)
            self._last = 0.0

        def phase_start(self, phase_name: str, parent_phase: str | None, num_steps: int) -> None:
            log.info("TensorRT build: %s (%d steps)", phase_name, num_steps)

        def step_complete(self, phase_name: str, step: int) -> bool:
            if time.monotonic() - self._last > 5:
                log.info("TensorRT build: %s step %d", phase_name, step)
                self._last = time.monotonic()
            return True  # False would cancel the build

        def phase_finish(self, phase_name: str) -> None:
            log.info("TensorRT build: %s done", phase_name)

    return LogProgress()


def make_entropy_calibrator(
    batches: CalibrationBatches, cache_file: Path
) -> trt.IInt8EntropyCalibrator2:
    """TensorRT 10.x INT8 entropy calibrator over :class:`CalibrationBatches`."""
    import tensorrt as trt

    runtime = _cuda_runtime()

    class EntropyCalibrator(trt.IInt8EntropyCalibrator2):
        def __init__(self) -> None:
            trt.IInt8EntropyCalibrator2.__init__(self)
            self._device: int | None = None

        def get_batch_size(self) -> int:
            return batches.batch_size

        def get_batch(self, names: list[str]) -> list[int]:
            batch = batches.next_batch()
            if batch is None:
                return []  # tells TensorRT calibration is over
            if self._device is None:
                self._device = int(_check(runtime.cudaMalloc(batch.nbytes)))
            _check(
                runtime.cudaMemcpy(
                    self._device,
                    batch.ctypes.data,
                    batch.nbytes,
                    runtime.cudaMemcpyKind.cudaMemcpyHostToDevice,
                )
            )
            return [self._device]

        def read_calibration_cache(self) -> bytes:
            return cache_file.read_bytes() if cache_file.is_file() else b""

        def write_calibration_cache(self, cache: Any) -> None:
            cache_file.parent.mkdir(parents=True, exist_ok=True)
            cache_file.write_bytes(bytes(cache))

    return EntropyCalibrator()


def add_in_engine_nms(
    network: trt.INetworkDefinition, num_classes: int, max_detections: int
) -> None:
    """Replace the ``[N, 4+C, A]`` output by TensorRT's NMS layer outputs."""
    import tensorrt as trt

    raw = network.get_output(0)
    network.unmark_output(raw)
    shuffle = network.add_shuffle(raw)
    shuffle.second_transpose = trt.Permutation([0, 2, 1])  # [N, A, 4+C]
    shuffled = shuffle.get_output(0)
    dims = shuffled.shape
    one = trt.Dims([1, 1, 1])
    boxes = network.add_slice(shuffled, trt.Dims([0, 0, 0]), trt.Dims([dims[0], dims[1], 4]), one)
    scores = network.add_slice(
        shuffled, trt.Dims([0, 0, 4]), trt.Dims([dims[0], dims[1], num_classes]), one
    )
    limit = network.add_constant(trt.Dims([]), trt.Weights(np.array([max_detections], np.int32)))
    nms = network.add_nms(boxes.get_output(0), scores.get_output(0), limit.get_output(0))
    nms.bounding_box_format = trt.BoundingBoxFormat.CENTER_SIZES
    nms.topk_box_limit = 5000
    for i, name in enumerate(("selected_indices", "num_selected")):
        out = nms.get_output(i)
        out.name = name
        network.mark_output(out)
    boxes.get_output(0).name = "boxes_cxcywh"
    network.mark_output(boxes.get_output(0))
    scores.get_output(0).name = "scores"
    network.mark_output(scores.get_output(0))


def build_plan(
    onnx_path: Path,
    config: TensorRTConfig,
    profile: Profile,
    calibrator: trt.IInt8Calibrator | None,
    strongly_typed: bool,
) -> bytes:
    """Parse ONNX and build a serialized engine."""
    import tensorrt as trt

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED) if strongly_typed else 0
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(onnx_path.read_bytes()):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise ModelError(f"{onnx_path}: TensorRT cannot parse it: {errors}")
    build_config = builder.create_builder_config()
    build_config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, config.workspace_mb << 20)
    build_config.progress_monitor = make_progress_monitor()
    if not strongly_typed:  # TensorRT 10.x weak typing
        if config.precision in ("fp16", "int8"):
            build_config.set_flag(trt.BuilderFlag.FP16)
        if config.precision == "int8":
            build_config.set_flag(trt.BuilderFlag.INT8)
            if calibrator is None:
                raise EngineError("INT8 needs a calibrator")
            build_config.int8_calibrator = calibrator
    opt_profile = builder.create_optimization_profile()
    opt_profile.set_shape(
        network.get_input(0).name,
        trt.Dims(list(profile.min)),
        trt.Dims(list(profile.opt)),
        trt.Dims(list(profile.max)),
    )
    build_config.add_optimization_profile(opt_profile)
    plan = builder.build_serialized_network(network, build_config)
    if plan is None:
        raise EngineError(f"{onnx_path}: TensorRT failed to build an engine (see its log)")
    return bytes(plan)


# ---------------------------------------------------------------------------- runtime
@dataclass
class _Context:
    context: Any
    stream: int
    device_in: int
    device_out: int
    host_out: npt.NDArray[np.float32]
    lock: threading.Lock


class TensorRTEngine(Engine):
    """Serialized-engine runtime with several contexts, each on its own CUDA stream."""

    def __init__(
        self,
        config: TensorRTConfig,
        model_path: Path,
        max_batch: int,
        calibration_frames: Iterator[npt.NDArray[np.floating]] | None = None,
    ) -> None:
        _import_trt()
        import tensorrt as trt

        runtime = _cuda_runtime()
        if not model_path.is_file():
            raise ModelError(f"model file not found: {model_path}")
        self._rt = runtime
        _check(runtime.cudaSetDevice(config.device))
        props = _check(runtime.cudaGetDeviceProperties(config.device))
        gpu = props.name.decode() if isinstance(props.name, bytes) else str(props.name)
        capability = f"{props.major}.{props.minor}"
        height, width = _onnx_input_hw(model_path)
        profile = profile_for(max_batch, config.opt_batch, height, width)
        strongly_typed = trt_major(trt.__version__) >= 11
        if (
            strongly_typed
            and config.precision != "fp32"
            and not _onnx_has_reduced_precision(model_path)
        ):
            raise EngineError(
                f"TensorRT {trt.__version__} builds strongly typed networks only: convert "
                f"{model_path.name} to {config.precision} first (python -m modelopt.onnx.autocast "
                "for fp16, ModelOpt Q/DQ quantization for int8) or use precision 'fp32'"
            )
        key = EngineKey(
            file_sha256(model_path), gpu, capability, trt.__version__, config.precision, profile
        )
        cache = Path(config.calibration_cache or Path(config.engine_dir) / f"{key.digest()}.calib")

        def build() -> bytes:
            calibrator = None
            if config.precision == "int8" and not strongly_typed:
                if calibration_frames is None and not cache.expanduser().is_file():
                    raise EngineError("INT8 needs calibration frames or a calibration cache")
                batches = CalibrationBatches(
                    calibration_frames or iter(()), min(8, max_batch), config.calibration_frames
                )
                calibrator = make_entropy_calibrator(batches, cache.expanduser())
            return build_plan(model_path, config, profile, calibrator, strongly_typed)

        plan = EngineRepository(Path(config.engine_dir)).get_or_build(key, build)
        self._runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        self._engine = self._runtime.deserialize_cuda_engine(plan)
        if self._engine is None:
            raise EngineError("TensorRT could not deserialize the engine")
        names = [self._engine.get_tensor_name(i) for i in range(self._engine.num_io_tensors)]
        self._input = next(
            n for n in names if self._engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT
        )
        self._output = next(
            n for n in names if self._engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT
        )
        out_dims = self._engine.get_tensor_shape(self._output)
        self._out_per_image = (int(out_dims[1]), int(out_dims[2]))
        self._contexts = [
            self._make_context(max_batch, height, width) for _ in range(config.contexts)
        ]
        self._next = 0
        self.info = EngineInfo(
            backend="tensorrt",
            device=f"{gpu} (sm {capability}, TensorRT {trt.__version__}, {config.precision})",
            input_width=width,
            input_height=height,
            input_dtype="float32",
            max_batch=max_batch,
            num_classes=self._out_per_image[0] - 4,
        )

    def _make_context(self, max_batch: int, height: int, width: int) -> _Context:
        rt = self._rt
        context = self._engine.create_execution_context()
        stream = int(_check(rt.cudaStreamCreate()))
        in_bytes = max_batch * 3 * height * width * 4
        channels, anchors = self._out_per_image
        host_out = np.empty((max_batch, channels, anchors), np.float32)
        device_in = int(_check(rt.cudaMalloc(in_bytes)))
        device_out = int(_check(rt.cudaMalloc(host_out.nbytes)))
        context.set_tensor_address(self._input, device_in)
        context.set_tensor_address(self._output, device_out)
        return _Context(context, stream, device_in, device_out, host_out, threading.Lock())

    def _pick(self) -> _Context:
        ctx = self._contexts[self._next % len(self._contexts)]
        self._next += 1
        return ctx

    def infer(self, batch: npt.NDArray[np.floating]) -> npt.NDArray[np.float32]:
        rt = self._rt
        data = np.ascontiguousarray(batch, np.float32)
        n = data.shape[0]
        ctx = self._pick()
        with ctx.lock:
            ctx.context.set_input_shape(self._input, tuple(data.shape))
            _check(
                rt.cudaMemcpyAsync(
                    ctx.device_in,
                    data.ctypes.data,
                    data.nbytes,
                    rt.cudaMemcpyKind.cudaMemcpyHostToDevice,
                    ctx.stream,
                )
            )
            if not ctx.context.execute_async_v3(ctx.stream):
                raise EngineError("TensorRT enqueue failed")
            out = ctx.host_out[:n]
            _check(
                rt.cudaMemcpyAsync(
                    out.ctypes.data,
                    ctx.device_out,
                    out.nbytes,
                    rt.cudaMemcpyKind.cudaMemcpyDeviceToHost,
                    ctx.stream,
                )
            )
            _check(rt.cudaStreamSynchronize(ctx.stream))
            return out.copy()

    def close(self) -> None:
        for ctx in self._contexts:
            self._rt.cudaFree(ctx.device_in)
            self._rt.cudaFree(ctx.device_out)
            self._rt.cudaStreamDestroy(ctx.stream)
        self._contexts.clear()


def _onnx_input_hw(path: Path) -> tuple[int, int]:
    import onnx

    dims = onnx.load(str(path), load_external_data=False).graph.input[0].type.tensor_type.shape.dim
    return (dims[2].dim_value or 640), (dims[3].dim_value or 640)


def _onnx_has_reduced_precision(path: Path) -> bool:
    """True when the graph computes in fp16/bf16 or holds Q/DQ nodes (strong typing works)."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    if any(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in graph.node):
        return True
    reduced = {onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16}
    casts = [n for n in graph.node if n.op_type == "Cast"]
    to_reduced = [n for n in casts if any(a.name == "to" and a.i in reduced for a in n.attribute)]
    return bool(to_reduced)


def calibration_frames_from(
    images: Sequence[npt.NDArray[np.uint8]],
) -> Iterator[npt.NDArray[np.float32]]:
    """Letterboxed ``[H, W, 3]`` uint8 frames -> ``[3, H, W]`` float32 in [0, 1]."""
    for image in images:
        yield np.ascontiguousarray(image.transpose(2, 0, 1), np.float32) / 255.0
