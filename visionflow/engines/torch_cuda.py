"""PyTorch on a CUDA GPU, running the same ONNX model (named ``torch-cuda`` everywhere).

The ONNX graph is converted in memory by ``onnx2torch``, once per batch-size bucket (powers
of two up to ``max_batch``) with that batch fixed, so every shape folds into a constant; the
constants that onnx2torch reads on the host (reshape shapes, split sizes, slice bounds, resize
scales) are kept in host memory, so a forward pass never waits on the device.  Each bucket
runs in fp16 (or fp32), channels-last, as one captured CUDA graph (a smaller batch runs in
its bucket, the extra rows ignored).  Decode + class-aware NMS run on the GPU in fixed shapes
(:class:`CandidateNms`), so a whole batch - upload, normalise, forward, NMS, the copy of the
kept rows - is enqueued on a CUDA stream without a host sync, and ``inflight`` batches run at
once, each in its own slot (stream, pinned staging, static inputs, graphs).  It is the GPU
backend that runs where TensorRT cannot be installed, and a real option for GPUs without
TensorRT.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

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
from visionflow.engines.torch_fusion import fuse_silu
from visionflow.errors import EngineError, EngineUnavailableError, ModelError
from visionflow.pipeline.layouts import OutputLayout, detect_layout

log = logging.getLogger("visionflow.engines.torch_cuda")
BACKEND_KEY = "torch-cuda"


class TorchCudaConfig(EngineConfigBase):
    """PyTorch on CUDA running the same ONNX model (converted in memory), fp16, CUDA graphs."""

    backend: Literal["torch-cuda"] = Field(
        default="torch-cuda", description="Inference backend: PyTorch on a CUDA GPU."
    )
    precision: Literal["fp32", "fp16"] = Field(default="fp16", description="Compute precision.")
    cuda_graphs: bool = Field(
        default=True,
        description="Capture one CUDA graph per batch bucket (powers of two up to max_batch) "
        "and in-flight slot at start and replay it; if a model cannot be captured the worker "
        "logs why and runs eagerly.",
    )
    inflight: int = Field(
        default=2,
        ge=1,
        le=8,
        description="Batches in flight at once, each on its own CUDA stream with its own "
        "buffers and CUDA graphs (GPU memory for activations grows with it): the host side of "
        "one batch overlaps the GPU work of the next.",
    )
    fuse_activations: bool = Field(
        default=True,
        description="Rewrite each x * sigmoid(x) of the converted model (how ONNX spells SiLU) "
        "as one silu kernel: same result, less memory traffic; off only to compare.",
    )
    compile: bool = Field(
        default=False,
        description="Compile each batch bucket's module with torch.compile (inductor) before "
        "its CUDA graph is captured: about twice the images/s of the plain conversion for a "
        "YOLOv8n-size model on an H100 (model alone), at the price of minutes of compiling "
        "at each worker start (kernels are cached on disk for later starts); if compiling "
        "fails the worker logs why and runs the module as converted.",
    )
    nms_candidates: int = Field(
        default=1024,
        ge=1,
        le=8192,
        description="Best-scoring boxes per image that enter the GPU NMS (its mask takes "
        "batch x candidates^2 bytes); boxes beyond them are dropped.",
    )

    def batches_at_once(self) -> int:
        return self.inflight

    def load_timeout_s(self) -> float:
        return 900.0 if self.compile else 60.0  # compiling: ~3 min for 7 buckets, cold cache

    device: int = Field(default=0, ge=0, description="CUDA device ordinal inside the worker.")


# onnx2torch modules that read some inputs on the host (``.tolist()``, ``int(t)``, ``if t``):
# a shape, split sizes, slice bounds, resize scales.  Left on the GPU, every such read is a
# device sync, which makes eager runs launch-bound and a CUDA graph capture impossible.
HOST_INPUT_MODULES = frozenset(
    {
        "OnnxReshape",
        "OnnxSplit13",
        "OnnxResize",
        "OnnxResizeV10",
        "OnnxSlice",
        "OnnxExpand",
        "OnnxTile",
        "OnnxUnsqueezeDynamicAxes",
        "OnnxSqueezeDynamicAxes",
        "OnnxPadDynamic",
        "OnnxConstantOfShape",
        "OnnxRange",
        "OnnxTopK",
    }
)


def fold_constants(proto: Any) -> Any:
    """The model after ONNX Runtime's basic (standard-ONNX) optimisations.

    Folds ``Constant`` nodes and shape arithmetic into initializers, which ``onnx2torch``
    needs (its Conv converter reads weights and bias from initializers only); with a fixed
    batch (:func:`fix_batch`) every ``Shape`` read folds away too.
    """
    import tempfile

    import onnx
    import onnxruntime as ort

    with tempfile.TemporaryDirectory() as tmp:
        folded = Path(tmp) / "folded.onnx"
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
        options.optimized_model_filepath = str(folded)
        ort.InferenceSession(proto.SerializeToString(), options, providers=["CPUExecutionProvider"])
        return onnx.load(str(folded))


def fix_batch(proto: Any, size: int) -> Any:
    """A copy of the model whose first input has batch dimension ``size``."""
    import onnx

    fixed = onnx.ModelProto()
    fixed.CopyFrom(proto)
    fixed.graph.input[0].type.tensor_type.shape.dim[0].dim_value = size
    del fixed.graph.value_info[:]  # recorded symbolic shapes would keep Shape ops alive
    for output in fixed.graph.output:
        dims = output.type.tensor_type.shape.dim
        if dims and dims[0].HasField("dim_param"):
            dims[0].dim_value = size
    return fixed


def _node_inputs(node: Any) -> list[Any]:
    return list(node.all_input_nodes)


def _is_shape(module: Any, node: Any) -> bool:
    if node.op != "call_module":
        return False
    return type(module.get_submodule(node.target)).__name__ == "OnnxShape"


def freeze_static(module: Any, sample: Any) -> int:
    """Replace every value that does not depend on the input's data by a constant.

    With the batch fixed, ``Shape`` outputs and everything computed only from them and from
    constants (the shape arithmetic ONNX exporters emit) are the same on every call; computed
    once here on ``sample`` and stored as buffers, they cost nothing per call and no longer
    create host tensors that a CUDA graph cannot capture.  Returns how many were frozen.
    """
    import torch
    import torch.fx

    graph = module.graph
    static: set[Any] = set()
    for node in graph.nodes:
        if node.op == "get_attr" or _is_shape(module, node):
            static.add(node)
        elif node.op in ("call_module", "call_function", "call_method"):
            inputs = _node_inputs(node)
            if inputs and all(i in static for i in inputs):
                static.add(node)
    frontier = [n for n in static if n.op != "get_attr" and any(u not in static for u in n.users)]
    if not frontier:
        return 0
    values: dict[Any, Any] = {}

    class Recorder(torch.fx.Interpreter):  # type: ignore[misc]  # torch is typed as Any here
        def run_node(self, n: Any) -> Any:
            out = super().run_node(n)
            if n in frontier:
                values[n] = out
            return out

    with torch.inference_mode():
        Recorder(module).run(sample)
    frozen = 0
    for node in frontier:
        value = values.get(node)
        if not isinstance(value, torch.Tensor):
            continue
        name = f"_frozen_{frozen}"
        module.register_buffer(name, value.detach().clone())
        with graph.inserting_before(node):
            constant = graph.get_attr(name)
        node.replace_all_uses_with(constant)
        frozen += 1
    graph.eliminate_dead_code()
    module.recompile()
    return frozen


def host_constants(module: Any) -> list[str]:
    """Move the constants that :data:`HOST_INPUT_MODULES` read on the host back to the CPU.

    Only a constant whose every use is such a host-read input is moved; weights stay on the
    device.  Returns the names moved.  Run it after the module went to the GPU.
    """
    users: dict[str, list[bool]] = {}
    for node in module.graph.nodes:
        if node.op != "call_module":
            continue
        host_read = type(module.get_submodule(node.target)).__name__ in HOST_INPUT_MODULES
        named = [(i, a) for i, a in enumerate(node.args)] + [(1, a) for a in node.kwargs.values()]
        for position, arg in named:
            if getattr(arg, "op", None) == "get_attr":
                users.setdefault(arg.target, []).append(host_read and position > 0)
    for node in module.graph.nodes:  # a constant also read by a plain op stays on the device
        if node.op != "call_module":
            for arg in [*node.args, *node.kwargs.values()]:
                if getattr(arg, "op", None) == "get_attr":
                    users.setdefault(arg.target, []).append(False)
    moved = []
    for target, reads in users.items():
        if reads and all(reads):
            owner_path, _, name = target.rpartition(".")
            owner = module.get_submodule(owner_path) if owner_path else module
            if name in owner._buffers:
                host = owner._buffers[name].cpu()
                # pinned: should an op still copy it to the device, a graph can capture that
                owner._buffers[name] = host.pin_memory() if _cuda_ready() else host
                moved.append(target)
    return moved


def _cuda_ready() -> bool:
    import torch

    return bool(torch.cuda.is_available())


def _static_slices(module: Any, node: Any) -> Any:
    """A module doing what an ``OnnxSlice`` with constant bounds does, with Python ints."""
    import torch

    def values(arg: Any) -> list[int] | None:
        if arg is None or getattr(arg, "op", None) != "get_attr":
            return None
        try:
            return [int(v) for v in module.get_buffer(arg.target).cpu().tolist()]
        except AttributeError:  # a parameter, not a buffer: leave the slice alone
            return None

    args = list(node.args[1:]) + [None] * (5 - len(node.args))
    starts, ends, axes, steps = (values(a) for a in args[:4])
    if (
        starts is None
        or ends is None
        or any(a is not None and getattr(a, "op", None) != "get_attr" for a in args[:4])
    ):
        return None
    start_list, end_list = starts, ends
    axis_list: list[int] = axes if axes is not None else list(range(len(starts)))
    step_list: list[int] = steps if steps is not None else [1] * len(starts)
    if any(step < 1 for step in step_list):
        return None

    class StaticSlice(torch.nn.Module):  # type: ignore[misc]  # torch is typed as Any here
        def forward(self, x: Any) -> Any:
            index = [slice(None)] * x.dim()
            for start, end, axis, step in zip(
                start_list, end_list, axis_list, step_list, strict=True
            ):
                index[axis] = slice(start, end, step)
            return x[tuple(index)]

    return StaticSlice()


def _static_reshape(module: Any, node: Any) -> Any:
    """A module doing what an ``OnnxReshape`` with a constant shape does, with Python ints."""
    import torch

    arg: Any = node.args[1] if len(node.args) > 1 else None
    if getattr(arg, "op", None) != "get_attr":
        return None
    try:
        shape = [int(v) for v in module.get_buffer(arg.target).cpu().tolist()]
    except AttributeError:
        return None

    class StaticReshape(torch.nn.Module):  # type: ignore[misc]  # torch is typed as Any here
        def forward(self, x: Any) -> Any:
            dims = [x.shape[i] if d == 0 else d for i, d in enumerate(shape)]
            return x.reshape(dims)

    return StaticReshape()


def static_shape_ops(module: Any) -> int:
    """Swap slices and reshapes with constant parameters for modules holding Python ints.

    onnx2torch's versions read their parameters from tensors on every call (a host read per
    value, and slice bounds as tensors in an index), which CUDA graph capture rejects.
    """
    builders = {"OnnxSlice": _static_slices, "OnnxReshape": _static_reshape}
    swapped = 0
    for node in list(module.graph.nodes):
        if node.op != "call_module":
            continue
        build = builders.get(type(module.get_submodule(node.target)).__name__)
        replacement = build(module, node) if build else None
        if replacement is None:
            continue
        name = f"_static_{swapped}"
        module.add_submodule(name, replacement)
        node.target, node.args, node.kwargs = name, (node.args[0],), {}
        swapped += 1
    module.graph.eliminate_dead_code()
    module.recompile()
    return swapped


def load_torch_module(model_path: Path, batch: int | None = None) -> Any:
    """The ONNX model as a PyTorch module (CPU, fp32), the way this backend loads it."""
    import onnx
    from onnx2torch import convert

    proto = onnx.load(str(model_path))
    return convert(fold_constants(fix_batch(proto, batch) if batch else proto))


def batch_buckets(max_batch: int) -> list[int]:
    """Batch sizes with their own module and CUDA graph: powers of two below ``max_batch``,
    and ``max_batch``."""
    sizes, b = [], 1
    while b < max_batch:
        sizes.append(b)
        b *= 2
    return [*sizes, max_batch]


def bucket_for(n: int, buckets: list[int]) -> int:
    for size in buckets:
        if size >= n:
            return size
    raise ValueError(f"batch of {n} is larger than max_batch {buckets[-1]}")


@dataclass
class _Bucket:
    """One batch size in one slot: its module (shared by the slots), static input and (when
    captured) CUDA graph + static output."""

    module: Any
    static_in: Any
    graph: Any = None
    static_out: Any = None


@dataclass
class _Slot:
    """One batch in flight: a CUDA stream with its own staging, inputs, graphs and event."""

    stream: Any
    pinned: Any  # [max_batch, H, W, 3] uint8, page-locked host memory
    pinned_np: npt.NDArray[np.uint8]
    device_u8: Any  # [max_batch, H, W, 3] uint8 on the device
    buckets: dict[int, _Bucket]
    event: Any
    rows_host: Any  # [max_batch, max_detections, 6] float32, pinned
    counts_host: Any  # [max_batch] int64, pinned
    converged_host: Any  # [1] bool, pinned


class TorchCudaEngine(Engine):
    """ONNX model -> PyTorch modules (one per batch bucket) on one CUDA device, ``inflight``
    batches at once.

    Each slot (:mod:`visionflow.engines.inflight`) has its own CUDA stream, pinned staging
    buffer, channels-last static input per bucket and CUDA graph per bucket; the modules'
    weights are shared.  :meth:`submit` enqueues everything on the slot's stream - upload (or
    device-to-device copy of frames that never left the GPU), normalise, graph replay, NMS
    (:func:`candidates_nms`, fixed shapes, no host sync) and the copy of the kept rows to
    pinned host memory - then records an event; ``result()`` waits on that event.
    """

    def __init__(self, config: TorchCudaConfig, model_path: Path, max_batch: int) -> None:
        try:
            import onnx
            import torch
            from onnx2torch import convert
        except ImportError as exc:
            raise EngineUnavailableError(
                f"the torch-cuda backend needs torch (with CUDA), onnx and onnx2torch: {exc}"
            ) from exc
        if not torch.cuda.is_available():
            raise EngineUnavailableError("the torch-cuda backend found no CUDA device")
        if not model_path.is_file():
            raise ModelError(f"model file not found: {model_path}")
        self._torch = torch
        self.device = torch.device(f"cuda:{config.device}")
        torch.cuda.set_device(self.device)
        self.fp16 = config.precision == "fp16"
        self._dtype = torch.float16 if self.fp16 else torch.float32
        self._candidates = config.nms_candidates
        self._max_batch = max_batch
        proto = onnx.load(str(model_path))
        dims = proto.graph.input[0].type.tensor_type.shape.dim
        self._shape = (dims[2].dim_value or 640, dims[3].dim_value or 640)
        self._convert = convert
        self._fuse = config.fuse_activations
        self.buckets = batch_buckets(max_batch)
        self.graph_error: str | None = None
        self._use_graphs = config.cuda_graphs
        self._modules = {
            size: self._load(fix_batch(proto, size), model_path, size) for size in self.buckets
        }
        self.compile_error: str | None = None
        if config.compile:
            self._compile_all()
        self._ring = InflightRing([self._make_slot() for _ in range(config.inflight)])
        if self._use_graphs:  # capture every bucket now: no stall when a new size first comes
            self._capture_all()
        height, width = self._shape
        with torch.inference_mode():
            probe = self._forward_static(self._ring.slots[0], 1)
        torch.cuda.synchronize(self.device)
        mode = "CUDA graphs" if self._use_graphs else "eager"
        if config.compile and self.compile_error is None:
            mode = f"compiled, {mode}"
        self._layout = detect_layout(tuple(probe.shape))
        self.capabilities = EngineCapabilities(
            host_frames=True, device_frames=True, nms_in_engine=False, max_inflight=config.inflight
        )
        self.info = EngineInfo(
            backend=BACKEND_KEY,
            device=f"{torch.cuda.get_device_name(self.device)} ({config.precision}, {mode}, "
            f"{config.inflight} in flight)",
            input_width=width,
            input_height=height,
            input_dtype="float16" if self.fp16 else "float32",
            max_batch=max_batch,
            num_classes=int(probe.shape[1]) - 4 if self._layout is OutputLayout.ANCHORS else 0,
        )

    # ---- building -----------------------------------------------------------------
    def _load(self, proto: Any, where: Path, size: int) -> Any:
        torch = self._torch
        try:
            module = self._convert(fold_constants(proto))
        except Exception as exc:
            raise ModelError(f"{where}: onnx2torch cannot convert it: {exc}") from exc
        fused = fuse_silu(module) if self._fuse else 0
        module = module.eval().to(self.device)
        if self.fp16:
            module = module.half()
        module = module.to(memory_format=torch.channels_last)
        try:
            frozen = freeze_static(module, self._new_input(size))
        except Exception as exc:  # the model still runs; a graph capture may then fail
            log.warning("batch %d: cannot freeze shape computations: %s", size, exc)
            frozen = 0
        static_shape_ops(module)
        moved = host_constants(module)
        log.debug(
            "batch %d: %d SiLUs fused, %d values frozen, %d constants on the host",
            size,
            fused,
            frozen,
            len(moved),
        )
        return module

    def _compile_all(self) -> None:
        """``torch.compile`` every bucket's module and run it once (compiling is lazy: a
        failure shows at the first call); on any failure every bucket stays as converted."""
        torch = self._torch
        compiled = {}
        started = time.monotonic()
        _allow_recompiles(torch, 8 * len(self._modules))
        log.info("compiling %d batch buckets (a first start takes minutes)", len(self._modules))
        try:
            with _strict_dynamo(torch):
                for size, module in self._modules.items():
                    fast = torch.compile(module, dynamic=False)
                    with torch.inference_mode():
                        fast(self._new_input(size))
                    compiled[size] = fast
        except Exception as exc:
            self.compile_error = f"{type(exc).__name__}: {exc}"
            log.warning("torch.compile failed (%s); running the converted model", exc)
            return
        torch.cuda.synchronize(self.device)
        self._modules = compiled
        log.info("compiled in %.0f s", time.monotonic() - started)

    def _new_input(self, size: int) -> Any:
        torch = self._torch
        height, width = self._shape
        return torch.zeros((size, 3, height, width), dtype=self._dtype, device=self.device).to(
            memory_format=torch.channels_last
        )

    def _make_slot(self) -> _Slot:
        torch = self._torch
        (height, width), n = self._shape, self._max_batch
        pinned = torch.empty((n, height, width, 3), dtype=torch.uint8).pin_memory()
        return _Slot(
            stream=torch.cuda.Stream(self.device),
            pinned=pinned,
            pinned_np=pinned.numpy(),
            device_u8=torch.empty((n, height, width, 3), dtype=torch.uint8, device=self.device),
            buckets={
                size: _Bucket(module, self._new_input(size))
                for size, module in self._modules.items()
            },
            event=torch.cuda.Event(),
            rows_host=torch.empty(0).pin_memory(),
            counts_host=torch.empty(n, dtype=torch.int64).pin_memory(),
            converged_host=torch.empty(1, dtype=torch.bool).pin_memory(),
        )

    @staticmethod
    def _run(bucket: _Bucket) -> Any:
        out = bucket.module(bucket.static_in)
        return out[0] if isinstance(out, (list, tuple)) else out

    def _capture_all(self) -> None:
        """Capture every bucket of every slot as a CUDA graph (on failure: all eager)."""
        for slot in self._ring.slots:
            for size in reversed(self.buckets):
                if not self._capture(slot.buckets[size], size):
                    return

    def _capture(self, bucket: _Bucket, size: int) -> bool:
        torch = self._torch
        try:
            side = torch.cuda.Stream(self.device)
            side.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(side), torch.inference_mode():
                for _ in range(3):  # warm kernels and the allocator outside the capture
                    self._run(bucket)
            torch.cuda.current_stream(self.device).wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.inference_mode(), torch.cuda.graph(graph):
                bucket.static_out = self._run(bucket)
            bucket.graph = graph
            return True
        except Exception as exc:
            self.graph_error = f"{type(exc).__name__}: {exc}"
            log.warning("CUDA graph capture failed at batch %d (%s); running eagerly", size, exc)
            self._use_graphs = False
            for slot in self._ring.slots:
                for b in slot.buckets.values():
                    b.graph = b.static_out = None
            torch.cuda.synchronize(self.device)
            return False

    # ---- running (on the current stream) ------------------------------------------------
    def _forward_static(self, slot: _Slot, n: int) -> Any:
        """Run the bucket holding ``n`` frames on what was written into its static input."""
        bucket = slot.buckets[bucket_for(n, self.buckets)]
        with self._torch.inference_mode():
            if bucket.graph is None:
                return self._run(bucket)[:n]
            bucket.graph.replay()
            return bucket.static_out[:n]

    def _static_in(self, slot: _Slot, n: int) -> Any:
        return slot.buckets[bucket_for(n, self.buckets)].static_in[:n]

    def forward(self, x: Any) -> Any:
        """Run a device tensor ``[n, 3, H, W]`` (any float dtype) on slot 0, synchronously
        with the current stream; returns ``[n, 4+C, A]`` (benchmarks, tests)."""
        if self._ring.pending:
            raise EngineError("forward() while batches are in flight")
        slot = self._ring.slots[0]
        n = int(x.shape[0])
        with self._torch.inference_mode():
            self._static_in(slot, n).copy_(x)
        return self._forward_static(slot, n)

    def infer(self, batch: npt.NDArray[np.floating]) -> npt.NDArray[np.float32]:
        x = self._torch.from_numpy(np.ascontiguousarray(batch)).to(self.device)
        out = self.forward(x)
        return np.asarray(out.float().cpu().numpy(), dtype=np.float32)

    def submit(self, frames: Sequence[Any], thresholds: Thresholds) -> PendingBatch:
        """Enqueue a batch on the next slot's stream; see the class doc."""
        on_device = self.check_frames(frames)
        n = len(frames)
        if n == 0:
            return CompletedBatch(())
        index, slot = self._ring.acquire()
        try:
            keep = self._enqueue(slot, frames, on_device, thresholds)
        except BaseException:
            self._ring.abandon(index)
            raise
        return SlotBatch(
            self._ring,
            index,
            wait=lambda: self._collect(slot, n, thresholds, keep),
            poll=slot.event.query,
            keep=(frames, keep),
        )

    def _enqueue(
        self, slot: _Slot, frames: Sequence[Any], on_device: list[bool], thresholds: Thresholds
    ) -> Any:
        torch = self._torch
        n = len(frames)
        for i, frame in enumerate(frames):  # host frames into this slot's pinned staging
            if not on_device[i]:
                slot.pinned_np[i] = frame
        # the current stream may have produced device frames (or the weights): wait for it
        slot.stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.inference_mode(), torch.cuda.stream(slot.stream):
            dst = slot.device_u8[:n]
            if not any(on_device):
                dst.copy_(slot.pinned[:n], non_blocking=True)
            else:
                for i, frame in enumerate(frames):
                    src = torch.as_tensor(frame, device=self.device) if on_device[i] else None
                    dst[i].copy_(slot.pinned[i] if src is None else src, non_blocking=True)
            target = self._static_in(slot, n)
            target.copy_(dst.permute(0, 3, 1, 2))  # uint8 -> fp16/fp32, into channels-last
            target.mul_(1.0 / 255.0)
            out = self._forward_static(slot, n)
            state: CandidateNms | EndToEndRows
            if self._layout is OutputLayout.END_TO_END:
                state = EndToEndRows(out, thresholds.conf)
            else:
                state = candidates_nms(out, thresholds.conf, thresholds.iou, self._candidates)
            rows = state.rows(thresholds.max_detections)
            if tuple(slot.rows_host.shape[1:]) != tuple(rows.shape[1:]):  # first batch
                shape = (self._max_batch, *rows.shape[1:])
                slot.rows_host = torch.empty(shape, dtype=torch.float32).pin_memory()
            host_rows = slot.rows_host[:n]
            host_rows.copy_(rows, non_blocking=True)
            slot.counts_host[:n].copy_(state.counts(thresholds.max_detections), non_blocking=True)
            slot.converged_host.copy_(state.converged(), non_blocking=True)
            slot.event.record(slot.stream)
        return state, host_rows

    def _collect(
        self, slot: _Slot, n: int, thresholds: Thresholds, keep: tuple[Any, Any]
    ) -> list[Detections]:
        state, host_rows = keep
        slot.event.synchronize()
        if not bool(slot.converged_host[0]):  # rare: a long suppression chain; finish it here
            with self._torch.inference_mode(), self._torch.cuda.stream(slot.stream):
                state.finish()
                host_rows = state.rows(thresholds.max_detections).cpu()
                counts = state.counts(thresholds.max_detections).cpu().numpy()
        else:
            counts = slot.counts_host[:n].numpy()
        rows = host_rows.numpy()
        return [
            (
                rows[i, : counts[i], :4].copy(),
                rows[i, : counts[i], 4].copy(),
                rows[i, : counts[i], 5].astype(np.intp),
            )
            for i in range(n)
        ]

    def close(self) -> None:
        self._torch.cuda.synchronize(self.device)
        self._ring.slots.clear()
        self._modules.clear()
        self._torch.cuda.empty_cache()


@contextlib.contextmanager
def _strict_dynamo(torch: Any) -> Iterator[None]:
    """While the buckets compile: a failure raises (so the engine falls back to the converted
    model as a whole) instead of dynamo quietly running a frame uncompiled."""
    config = torch._dynamo.config
    wanted = {"fail_on_recompile_limit_hit": True, "suppress_errors": False}
    saved = {name: getattr(config, name) for name in wanted if hasattr(config, name)}
    for name in saved:
        setattr(config, name, wanted[name])
    try:
        yield
    finally:
        for name, value in saved.items():
            setattr(config, name, value)


def _allow_recompiles(torch: Any, at_least: int) -> None:
    """Raise dynamo's per-frame recompile limit (8 by default, named ``recompile_limit``,
    formerly ``cache_size_limit``): the buckets' modules share submodule code, and past the
    limit dynamo quietly runs what is left uncompiled."""
    config = torch._dynamo.config
    for name in ("recompile_limit", "cache_size_limit"):
        if hasattr(config, name):
            setattr(config, name, max(int(getattr(config, name)), at_least))
            return


class CandidateNms:
    """Class-aware greedy NMS over each image's best ``candidates`` boxes, in fixed shapes.

    Nothing here reads a value on the host, so it is enqueued on a stream with no sync.
    Greedy NMS keeps box ``i`` (ranked by score) unless a *kept* box ranked before it, of the
    same class, overlaps it by more than ``iou``.  That is a fixed point ``keep = f(keep)``
    whose only solution is the greedy answer (``keep[i]`` depends only on ``keep[:i]``); it is
    reached by iterating ``f`` from "every candidate", usually in a few rounds.
    :meth:`converged` says whether ``rounds`` were enough; :meth:`finish` iterates to the end.
    Memory: ``N * K * K`` bytes for the suppression mask, plus float temporaries for at most
    64 MiB of pairs at a time.
    """

    def __init__(self, output: Any, conf: float, iou: float, candidates: int, rounds: int) -> None:
        import torch

        out = output.float()
        n, anchors = int(out.shape[0]), int(out.shape[2])
        k = min(candidates, anchors)
        scores, classes = out[:, 4:].max(1)  # [n, A]
        self.scores, index = scores.topk(k, dim=1)  # [n, k], best first
        self.valid = self.scores > conf
        boxes = out[:, :4].gather(2, index[:, None, :].expand(n, 4, k)).transpose(1, 2)
        half = boxes[..., 2:] / 2
        self.xyxy = torch.cat([boxes[..., :2] - half, boxes[..., :2] + half], 2)  # [n, k, 4]
        self.classes = classes.gather(1, index)
        suppress = torch.empty((n, k, k), dtype=torch.bool, device=out.device)
        chunk = max(1, (64 << 20) // (4 * k * k))
        for s in range(0, n, chunk):
            x1, y1, x2, y2 = self.xyxy[s : s + chunk].unbind(2)
            w = torch.minimum(x2[:, :, None], x2[:, None, :])
            w.sub_(torch.maximum(x1[:, :, None], x1[:, None, :])).clamp_(min=0)
            h = torch.minimum(y2[:, :, None], y2[:, None, :])
            h.sub_(torch.maximum(y1[:, :, None], y1[:, None, :])).clamp_(min=0)
            inter = w.mul_(h)
            area = (x2 - x1).clamp(min=0) * (y2 - y1).clamp(min=0)
            union = (area[:, :, None] + area[:, None, :]).sub_(inter)
            torch.gt(inter, union.mul_(iou), out=suppress[s : s + chunk])  # iou > t
        suppress &= torch.ones((k, k), dtype=torch.bool, device=out.device).triu(1)  # j < i
        suppress &= self.classes[:, :, None] == self.classes[:, None, :]
        suppress &= self.valid[:, :, None]
        self._suppress = suppress
        self.keep = self.valid
        for _ in range(rounds):
            self.keep = self._step(self.keep)

    def _step(self, keep: Any) -> Any:
        return self.valid & ~(self._suppress & keep[:, :, None]).any(1)

    def converged(self) -> Any:
        """A device ``[1]`` bool: whether :attr:`keep` is the fixed point (the greedy result)."""
        return (self._step(self.keep) == self.keep).all().reshape(1)

    def finish(self) -> None:
        """Iterate to the fixed point (reads the device: syncs)."""
        while True:
            step = self._step(self.keep)
            if bool((step == self.keep).all()):
                return
            self.keep = step

    def rows(self, max_detections: int) -> Any:
        """``[N, M, 6]`` float32 (x1, y1, x2, y2, score, class) of the kept boxes, best first;
        rows past :meth:`counts` are padding."""
        import torch

        m = min(max_detections, int(self.scores.shape[1]))
        ranked = torch.where(self.keep, self.scores, torch.full_like(self.scores, -1.0))
        best, order = ranked.topk(m, dim=1)
        boxes = self.xyxy.gather(1, order[:, :, None].expand(-1, -1, 4))
        classes = self.classes.gather(1, order).float()
        return torch.cat([boxes, best[:, :, None], classes[:, :, None]], 2).contiguous()

    def counts(self, max_detections: int) -> Any:
        """``[N]`` int64: kept boxes per image, at most ``max_detections``."""
        return self.keep.sum(1).clamp(max=max_detections)


class EndToEndRows:
    """An NMS-free model's ``[N, K, 6]`` rows (x1, y1, x2, y2, score, class id): keep
    ``score > conf``, the first ``max_detections`` in the model's order (Ultralytics' end-to-end
    branch), in fixed shapes on the device; same interface as :class:`CandidateNms`."""

    def __init__(self, output: Any, conf: float) -> None:
        import torch

        self.out = output.float()
        self.valid = self.out[..., 4] > conf
        k = int(self.out.shape[1])
        rank = torch.arange(k, device=self.out.device)
        self._order = (rank + (~self.valid).to(torch.int64) * k).argsort(dim=1)  # valid first

    def converged(self) -> Any:
        import torch

        return torch.ones(1, dtype=torch.bool, device=self.out.device)

    def finish(self) -> None:
        """Nothing to iterate."""

    def rows(self, max_detections: int) -> Any:
        m = min(max_detections, int(self.out.shape[1]))
        order = self._order[:, :m]
        return self.out.gather(1, order[:, :, None].expand(-1, -1, 6)).contiguous()

    def counts(self, max_detections: int) -> Any:
        return self.valid.sum(1).clamp(max=max_detections)


def candidates_nms(
    output: Any, conf: float, iou: float, candidates: int, rounds: int = 8
) -> CandidateNms:
    """Decode ``[N, 4+C, A]`` on its device: best class per anchor, the ``candidates`` best
    anchors per image above ``conf``, class-aware greedy NMS (:class:`CandidateNms`)."""
    return CandidateNms(output, conf, iou, candidates, rounds)


BACKEND = Backend(BACKEND_KEY, TorchCudaConfig, TorchCudaEngine)
