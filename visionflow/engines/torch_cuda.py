"""PyTorch on a CUDA GPU, running the same ONNX model (named ``torch-cuda`` everywhere).

The ONNX graph is converted in memory by ``onnx2torch``, once per batch-size bucket (powers
of two up to ``max_batch``) with that batch fixed, so every shape folds into a constant; the
constants that onnx2torch reads on the host (reshape shapes, split sizes, slice bounds, resize
scales) are kept in host memory, so a forward pass never waits on the device.  Each bucket
runs in fp16 (or fp32), channels-last, as one captured CUDA graph (a smaller batch runs in
its bucket, the extra rows ignored), and decode + class-aware NMS run on the GPU
(``torchvision.ops.batched_nms`` when torchvision is there, a vectorised torch fallback
otherwise).  It is the GPU backend that runs where TensorRT cannot be installed,
and a real option for GPUs without TensorRT.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np
import numpy.typing as npt

from visionflow.engines.base import Detections, Engine, EngineInfo
from visionflow.engines.config import TorchCudaConfig
from visionflow.errors import EngineUnavailableError, ModelError
from visionflow.pipeline.layouts import OutputLayout

log = logging.getLogger("visionflow.engines.torch_cuda")


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
    """One batch size: its module, static input and (when captured) CUDA graph + output."""

    module: Any
    static_in: Any
    graph: Any = None
    static_out: Any = None


class TorchCudaEngine(Engine):
    """ONNX model -> PyTorch modules (one per batch bucket) on one CUDA device.

    Every bucket's input lives in a pre-allocated, channels-last device tensor; a batch is
    written into it (uploaded from pinned host memory, or copied device-to-device from
    frames that never left the GPU), normalised there, and the bucket's CUDA graph is
    replayed (eager module call when graphs are off or capture failed).
    """

    accepts_device_frames = True

    def __init__(self, config: TorchCudaConfig, model_path: Path, max_batch: int) -> None:
        try:
            import onnx
            import torch
            from onnx2torch import convert
        except (ImportError, RuntimeError, OSError) as exc:
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
        proto = onnx.load(str(model_path))
        dims = proto.graph.input[0].type.tensor_type.shape.dim
        self._shape = (dims[2].dim_value or 640, dims[3].dim_value or 640)
        self._convert = convert
        self.buckets = batch_buckets(max_batch)
        self.graph_error: str | None = None
        self._use_graphs = config.cuda_graphs
        self._buckets = {
            size: self._load(fix_batch(proto, size), model_path, size) for size in self.buckets
        }
        height, width = self._shape
        self._device_u8 = torch.empty(
            (max_batch, height, width, 3), dtype=torch.uint8, device=self.device
        )
        self._pinned = torch.empty((max_batch, height, width, 3), dtype=torch.uint8).pin_memory()
        self._pinned_np: npt.NDArray[np.uint8] = self._pinned.numpy()
        if self._use_graphs:  # capture every bucket now: no stall when a new size first comes
            for size in reversed(self.buckets):
                if not self._capture(size):
                    break
        with torch.inference_mode():
            probe = self._forward_static(1)
        mode = "CUDA graphs" if self._use_graphs else "eager"
        self.info = EngineInfo(
            backend="torch-cuda",
            device=f"{torch.cuda.get_device_name(self.device)} ({config.precision}, {mode})",
            input_width=width,
            input_height=height,
            input_dtype="float16" if self.fp16 else "float32",
            max_batch=max_batch,
            num_classes=int(probe.shape[1]) - 4,
        )

    # ---- building -----------------------------------------------------------------
    def _load(self, proto: Any, where: Path, size: int) -> _Bucket:
        torch = self._torch
        try:
            module = self._convert(fold_constants(proto))
        except Exception as exc:
            raise ModelError(f"{where}: onnx2torch cannot convert it: {exc}") from exc
        module = module.eval().to(self.device)
        if self.fp16:
            module = module.half()
        module = module.to(memory_format=torch.channels_last)
        height, width = self._shape
        static_in = torch.zeros(
            (size, 3, height, width), dtype=self._dtype, device=self.device
        ).contiguous(memory_format=torch.channels_last)
        try:
            frozen = freeze_static(module, static_in)
        except Exception as exc:  # the model still runs; a graph capture may then fail
            log.warning("batch %d: cannot freeze shape computations: %s", size, exc)
            frozen = 0
        static_shape_ops(module)
        moved = host_constants(module)
        log.debug("batch %d: %d values frozen, %d constants on the host", size, frozen, len(moved))
        return _Bucket(module, static_in)

    def _run(self, bucket: _Bucket) -> Any:
        out = bucket.module(bucket.static_in)
        return out[0] if isinstance(out, (list, tuple)) else out

    def _capture(self, size: int) -> bool:
        """Capture bucket ``size``'s forward pass as a CUDA graph (False: run eagerly)."""
        torch = self._torch
        bucket = self._buckets[size]
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
            for b in self._buckets.values():
                b.graph = b.static_out = None
            torch.cuda.synchronize(self.device)
            return False

    # ---- running ------------------------------------------------------------------
    def _forward_static(self, n: int) -> Any:
        """Run the bucket holding ``n`` frames on what was written into its static input."""
        bucket = self._buckets[bucket_for(n, self.buckets)]
        with self._torch.inference_mode():
            if bucket.graph is None:
                return self._run(bucket)[:n]
            bucket.graph.replay()
            return bucket.static_out[:n]

    def _static_in(self, n: int) -> Any:
        return self._buckets[bucket_for(n, self.buckets)].static_in[:n]

    def forward(self, x: Any) -> Any:
        """Run a device tensor ``[n, 3, H, W]`` (any float dtype); returns ``[n, 4+C, A]``."""
        n = int(x.shape[0])
        with self._torch.inference_mode():
            self._static_in(n).copy_(x)
        return self._forward_static(n)

    def _forward_u8(self, images: Any) -> Any:
        """``[n, H, W, 3]`` uint8 RGB on the device -> normalised into the static input, run."""
        n = int(images.shape[0])
        with self._torch.inference_mode():
            target = self._static_in(n)
            target.copy_(images.permute(0, 3, 1, 2))  # uint8 -> fp16/fp32, into channels-last
            target.mul_(1.0 / 255.0)
        return self._forward_static(n)

    def host_buffer(self, max_batch: int) -> npt.NDArray[np.uint8]:
        """The pinned host staging buffer: images written here upload without a copy."""
        return self._pinned_np[:max_batch]

    def _upload_u8(self, images: npt.NDArray[np.uint8]) -> Any:
        n = len(images)
        if images.ctypes.data != self._pinned_np.ctypes.data:  # not our pinned buffer yet
            self._pinned_np[:n] = images
        dst = self._device_u8[:n]
        dst.copy_(self._pinned[:n], non_blocking=True)
        return dst

    def infer(self, batch: npt.NDArray[np.floating]) -> npt.NDArray[np.float32]:
        x = self._torch.from_numpy(np.ascontiguousarray(batch)).to(self.device)
        out = self.forward(x)
        return np.asarray(out.float().cpu().numpy(), dtype=np.float32)

    def detect(
        self,
        batch: npt.NDArray[np.floating],
        conf_threshold: float,
        iou_threshold: float,
        max_detections: int,
    ) -> list[Detections]:
        x = self._torch.from_numpy(np.ascontiguousarray(batch)).to(self.device)
        return gpu_decode(self.forward(x), conf_threshold, iou_threshold, max_detections)

    def detect_images(
        self,
        images: npt.NDArray[np.uint8],
        conf_threshold: float,
        iou_threshold: float,
        max_detections: int,
    ) -> list[Detections]:
        out = self._forward_u8(self._upload_u8(images))
        return gpu_decode(out, conf_threshold, iou_threshold, max_detections)

    def detect_frames(
        self,
        frames: Sequence[Any],
        conf_threshold: float,
        iou_threshold: float,
        max_detections: int,
    ) -> list[Detections]:
        """Frames that are device arrays (``__cuda_array_interface__``, e.g. CUDA IPC slots)
        are copied device-to-device into the batch; host arrays are uploaded."""
        torch = self._torch
        n = len(frames)
        dst = self._device_u8[:n]
        with torch.inference_mode():
            for i, frame in enumerate(frames):
                if hasattr(frame, "__cuda_array_interface__"):
                    dst[i].copy_(torch.as_tensor(frame, device=self.device), non_blocking=True)
                else:
                    dst[i].copy_(torch.from_numpy(np.ascontiguousarray(frame)))
        out = self._forward_u8(dst)
        return gpu_decode(out, conf_threshold, iou_threshold, max_detections)

    def close(self) -> None:
        self._buckets.clear()
        self._torch.cuda.empty_cache()


def gpu_decode(
    output: Any,
    conf_threshold: float,
    iou_threshold: float,
    max_detections: int,
    layout: OutputLayout = OutputLayout.ANCHORS,
) -> list[Detections]:
    """Decode ``[N, 4+C, A]`` on the GPU: best class, threshold, one class-aware NMS for the
    whole batch (images kept apart by offsetting their class ids), one copy to the host.

    An ``end2end`` output ``[N, K, 6]`` is only thresholded and cut to ``max_detections``
    per image on the GPU (:func:`_gpu_end_to_end`): the model already ran NMS."""
    if layout is OutputLayout.END_TO_END:
        return _gpu_end_to_end(output, conf_threshold, max_detections)
    import torch

    batched_nms = nms_function()
    n, channels = int(output.shape[0]), int(output.shape[1])
    with torch.inference_mode():
        out = output.float()
        scores, classes = out[:, 4:].max(1)  # [N, A]
        image, anchor = (scores > conf_threshold).nonzero(as_tuple=True)
        box = out[image, :4, anchor]  # [K, 4] cx, cy, w, h
        xyxy = torch.cat([box[:, :2] - box[:, 2:] / 2, box[:, :2] + box[:, 2:] / 2], 1)
        s, c = scores[image, anchor], classes[image, anchor]
        keep = batched_nms(xyxy, s, image * (channels - 4) + c, iou_threshold)
        host = (
            torch.cat(
                [xyxy[keep], s[keep, None], c[keep, None].float(), image[keep, None].float()], 1
            )
            .cpu()
            .numpy()
        )
    return split_rows(host, n, max_detections)  # NMS order: best score first


def _gpu_end_to_end(output: Any, conf_threshold: float, max_detections: int) -> list[Detections]:
    """``[N, K, 6]`` rows ``x1, y1, x2, y2, score, class_id``: keep ``score > conf_threshold``,
    the first ``max_detections`` of them per image in the model's order (as
    :func:`~visionflow.pipeline.postprocess.decode_end_to_end` and Ultralytics do)."""
    import torch

    n = int(output.shape[0])
    with torch.inference_mode():
        out = output.float()
        passed = out[..., 4] > conf_threshold  # [N, K]
        passed &= passed.cumsum(1) <= max_detections  # rank among the passing rows
        image, row = passed.nonzero(as_tuple=True)
        host = torch.cat([out[image, row], image[:, None].float()], 1).cpu().numpy()
    return split_rows(host, n, max_detections)


def split_rows(host: npt.NDArray[np.float32], n: int, max_detections: int) -> list[Detections]:
    """Host rows ``x1, y1, x2, y2, score, class_id, image`` -> per image of ``n``, in row
    order, at most ``max_detections`` each."""
    results: list[Detections] = []
    for i in range(n):
        rows = host[host[:, 6] == i][:max_detections]
        results.append(
            (
                rows[:, :4].astype(np.float32),
                rows[:, 4].astype(np.float32),
                np.rint(rows[:, 5]).astype(np.intp),
            )
        )
    return results


@functools.cache
def nms_function() -> Callable[..., Any]:
    """``torchvision.ops.batched_nms``, or :func:`_batched_nms` when torchvision cannot be
    imported: missing (``ImportError``), or built for another torch, which raises
    ``RuntimeError`` (e.g. "operator torchvision::nms does not exist") or ``OSError`` (its
    C++ library does not load) at import.  Decided once per process, the reason logged once."""
    try:
        from torchvision.ops import batched_nms
    except (ImportError, RuntimeError, OSError) as exc:
        log.warning(
            "torchvision unusable (%s: %s); GPU NMS uses visionflow's torch implementation",
            type(exc).__name__,
            exc,
        )
        return _batched_nms
    return cast(Callable[..., Any], batched_nms)


def _batched_nms(boxes: Any, scores: Any, classes: Any, iou_threshold: float) -> Any:
    """Greedy class-aware NMS in torch (fallback when torchvision is missing)."""
    import torch

    shifted = boxes + classes[:, None].to(boxes.dtype) * 8192.0
    order = scores.argsort(descending=True)
    keep = []
    while order.numel():
        best = order[0]
        keep.append(best)
        if order.numel() == 1:
            break
        rest = order[1:]
        a, b = shifted[best], shifted[rest]
        lt = torch.maximum(a[:2], b[:, :2])
        rb = torch.minimum(a[2:], b[:, 2:])
        inter = (rb - lt).clamp(min=0).prod(1)
        union = (a[2:] - a[:2]).prod() + (b[:, 2:] - b[:, :2]).prod(1) - inter
        order = rest[inter / union.clamp(min=1e-9) <= iou_threshold]
    return torch.stack(keep) if keep else torch.zeros(0, dtype=torch.long, device=boxes.device)
