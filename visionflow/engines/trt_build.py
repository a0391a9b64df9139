"""Building TensorRT engines: ONNX -> serialized engine, cached in an engine repository.

- **Engine repository.** Engines are cached in ``engine_dir`` under a key made of the model's
  hash, GPU name, compute capability, TensorRT version, precision, optimisation profile and
  in-engine NMS settings; a cached engine whose recorded key does not match is rebuilt.
  Building shows its progress (``IProgressMonitor``).
- **Dynamic batch.** One optimisation profile ``min=1, opt=opt_batch, max=max_batch`` from the
  batching policy.
- **Precision.** TensorRT 10.x: FP16 / INT8 builder flags; INT8 uses an entropy calibrator fed
  with frames from the configured streams, with a calibration cache on disk.  TensorRT 11.x
  removed those flags and the calibrator (strongly typed networks only): the model must already
  carry its precision (an fp16 or Q/DQ ONNX, e.g. from ``modelopt.onnx.autocast``); asking for
  fp16/int8 with an fp32 model there is a clear error rather than a silent fp32 engine.
- **NMS in the engine.** :func:`add_in_engine_nms` appends TensorRT's ``INMSLayer`` to the
  parsed network and gathers the kept boxes and scores inside the engine, so only the kept
  detections cross to the host (see :mod:`visionflow.engines.trt`).

Every piece that does not need TensorRT is unit-tested; the rest is type-checked against
``tensorrt-stubs`` (10.13) in the gate.  TensorRT cannot be installed where this project is
developed, so no figure in this repository comes from it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from visionflow.errors import EngineError, EngineUnavailableError, ModelError
from visionflow.gpu import cuda
from visionflow.gpu.cuda import check

if TYPE_CHECKING:
    import tensorrt as trt

    from visionflow.engines.trt import TensorRTConfig

log = logging.getLogger("visionflow.engines.trt")
INSTALL_HINT = (
    "TensorRT is not installed: install the 'tensorrt' wheel matching your CUDA (e.g. "
    "pip install tensorrt-cu13) or use engine.backend 'torch-cuda' / 'onnxruntime'"
)
#: Engine inputs the NMS layer reads its thresholds from (0-D float32, set per batch).
NMS_THRESHOLD_INPUTS = ("nms_iou_threshold", "nms_score_threshold")
#: Engine outputs of the in-engine NMS: the count, then ``[K, 3]`` (image, class, anchor),
#: ``[K, 4]`` centre/size boxes and ``[K]`` scores of the kept detections.
NMS_OUTPUTS = ("num_selected", "selected_indices", "selected_boxes", "selected_scores")


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
    nms_max_per_class: int = 0

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


# ---------------------------------------------------------------------------- TensorRT parts
def import_trt() -> None:
    """Fail with installation advice when TensorRT is missing."""
    try:
        import tensorrt  # noqa: F401
    except ImportError as exc:
        raise EngineUnavailableError(INSTALL_HINT) from exc


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

    runtime = cuda.runtime()

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
                self._device = int(check(runtime.cudaMalloc(batch.nbytes), "cudaMalloc"))
            check(
                runtime.cudaMemcpy(
                    self._device,
                    batch.ctypes.data,
                    batch.nbytes,
                    runtime.cudaMemcpyKind.cudaMemcpyHostToDevice,
                ),
                "cudaMemcpy (calibration batch)",
            )
            return [self._device]

        def read_calibration_cache(self) -> bytes:
            return cache_file.read_bytes() if cache_file.is_file() else b""

        def write_calibration_cache(self, cache: Any) -> None:
            cache_file.parent.mkdir(parents=True, exist_ok=True)
            cache_file.write_bytes(bytes(cache))

    return EntropyCalibrator()


def add_in_engine_nms(
    network: trt.INetworkDefinition, num_classes: int, max_per_class: int
) -> None:
    """Append NMS to a YOLOv8-layout network (output 0 ``[N, 4+C, A]``, which stays an output).

    Like the shared CPU decode, each anchor competes only with its best class (the other class
    scores are zeroed), the score threshold is strict and boxes whose IoU is <= the IoU
    threshold survive.  Thresholds are engine inputs (:data:`NMS_THRESHOLD_INPUTS`), so changing
    them needs no rebuild; the kept boxes and scores are gathered in the engine
    (:data:`NMS_OUTPUTS`), whose row count is data-dependent (an output allocator takes them).
    """
    import tensorrt as trt

    def const(values: npt.NDArray[Any]) -> trt.ITensor:
        return network.add_constant(trt.Dims(list(values.shape)), trt.Weights(values)).get_output(0)

    raw = network.get_output(0)
    if raw.dtype != trt.DataType.FLOAT:  # strongly typed fp16 models: decide in fp32
        raw = network.add_cast(raw, trt.DataType.FLOAT).get_output(0)
    shuffle = network.add_shuffle(raw)
    shuffle.second_transpose = trt.Permutation([0, 2, 1])  # [N, A, 4+C]
    rows = shuffle.get_output(0)
    # gathers, not slices: they keep the dynamic batch dimension without shape arithmetic
    boxes = network.add_gather(rows, const(np.arange(4, dtype=np.int32)), 2).get_output(0)
    classes = np.arange(4, 4 + num_classes, dtype=np.int32)
    scores = network.add_gather(rows, const(classes), 2).get_output(0)  # [N, A, C]
    best = network.add_reduce(scores, trt.ReduceOperation.MAX, 1 << 2, True).get_output(0)
    is_best = network.add_elementwise(scores, best, trt.ElementWiseOperation.EQUAL).get_output(0)
    zero = const(np.zeros((1, 1, 1), np.float32))
    masked = network.add_select(is_best, scores, zero).get_output(0)
    limit = const(np.array(max_per_class, np.int32))
    nms = network.add_nms(boxes, masked, limit)
    nms.bounding_box_format = trt.BoundingBoxFormat.CENTER_SIZES
    nms.topk_box_limit = 5000
    for index, name in enumerate(NMS_THRESHOLD_INPUTS, start=3):
        nms.set_input(index, network.add_input(name, trt.DataType.FLOAT, trt.Dims([])))
    selected = nms.get_output(0)  # [K, 3]: image, class, anchor
    box_at = network.add_gather(selected, const(np.array([0, 2], np.int32)), 1).get_output(0)
    score_at = network.add_gather(selected, const(np.array([0, 2, 1], np.int32)), 1).get_output(0)
    picked_boxes = network.add_gather_v2(boxes, box_at, trt.GatherMode.ND).get_output(0)
    picked_scores = network.add_gather_v2(masked, score_at, trt.GatherMode.ND).get_output(0)
    outputs = (nms.get_output(1), selected, picked_boxes, picked_scores)
    for name, tensor in zip(NMS_OUTPUTS, outputs, strict=True):
        tensor.name = name
        network.mark_output(tensor)


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
    if config.nms_in_engine:
        channels = network.get_output(0).shape[1]
        if channels <= 4:
            raise ModelError(f"{onnx_path}: output 0 is not [N, 4+C, A] (C = {channels - 4})")
        add_in_engine_nms(network, channels - 4, config.nms_max_per_class)
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


def onnx_input_hw(path: Path) -> tuple[int, int]:
    import onnx

    dims = onnx.load(str(path), load_external_data=False).graph.input[0].type.tensor_type.shape.dim
    return (dims[2].dim_value or 640), (dims[3].dim_value or 640)


def onnx_has_reduced_precision(path: Path) -> bool:
    """True when the graph computes in fp16/bf16 or holds Q/DQ nodes (strong typing works)."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    if any(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in graph.node):
        return True
    reduced = {onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16}
    casts = [n for n in graph.node if n.op_type == "Cast"]
    to_reduced = [n for n in casts if any(a.name == "to" and a.i in reduced for a in n.attribute)]
    return bool(to_reduced)


def calibration_images_path(config: TensorRTConfig) -> Path:
    """The ``.npy`` of calibration frames: ``calibration_images``, else beside the engines."""
    return Path(config.calibration_images or Path(config.engine_dir) / "calibration.npy")


def calibration_input(
    config: TensorRTConfig, cache: Path, size: tuple[int, int]
) -> Iterator[npt.NDArray[np.float32]] | None:
    """What INT8 calibration reads: nothing when the cache exists (TensorRT reads the cache),
    else the frames ``visionflow calibrate`` saved; an error naming that command when there are
    neither, or when the saved frames are not ``[N, height, width, 3]`` uint8."""
    if cache.expanduser().is_file():
        return None
    path = calibration_images_path(config).expanduser()
    if not path.is_file():
        raise EngineError(
            f"INT8 needs calibration frames: run 'visionflow calibrate -c <config>' to take them "
            f"from the configured streams (expected {path}) or give engine.calibration_cache"
        )
    images = np.load(path, mmap_mode="r", allow_pickle=False)
    height, width = size
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1:] != (height, width, 3):
        raise EngineError(
            f"{path} holds {images.dtype} {images.shape}; the model takes "
            f"[N, {height}, {width}, 3] uint8: run 'visionflow calibrate' again"
        )
    return calibration_frames_from(images)


def calibration_frames_from(
    images: Sequence[npt.NDArray[np.uint8]],
) -> Iterator[npt.NDArray[np.float32]]:
    """Letterboxed ``[H, W, 3]`` uint8 frames -> ``[3, H, W]`` float32 in [0, 1]."""
    for image in images:
        yield np.ascontiguousarray(image.transpose(2, 0, 1), np.float32) / 255.0
