"""PyTorch on a CUDA GPU, running the same ONNX model (named ``torch-cuda`` everywhere).

The ONNX graph is converted in memory by ``onnx2torch``; the module runs in fp16 (or fp32),
channels-last, with one CUDA graph captured per batch-size bucket (powers of two up to
``max_batch``; a smaller batch is zero-padded to its bucket), and decode + class-aware NMS run
on the GPU (``torchvision.ops.batched_nms`` when torchvision is there, a vectorised torch
fallback otherwise).  It is the GPU backend that runs where TensorRT cannot be installed,
and a real option for GPUs without TensorRT.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from visionflow.engines.base import Detections, Engine, EngineInfo
from visionflow.engines.config import TorchCudaConfig
from visionflow.errors import EngineUnavailableError, ModelError

log = logging.getLogger("visionflow.engines.torch_cuda")


def _wrap(module: Any, fp16: bool) -> Any:
    """The module with the backend's precision handling, as one traceable ``nn.Module``."""
    import torch

    class Wrapped(torch.nn.Module):  # type: ignore[misc]  # torch is typed as Any here
        def __init__(self) -> None:
            super().__init__()
            self.inner = module

        def forward(self, x: Any) -> Any:
            with torch.autocast("cuda", dtype=torch.float16, enabled=fp16, cache_enabled=False):
                out = self.inner(x)
            return out[0] if isinstance(out, (list, tuple)) else out

    return Wrapped()


def fold_constants(proto: Any) -> Any:
    """The model after ONNX Runtime's basic (standard-ONNX) optimisations.

    Folds ``Constant`` nodes and shape arithmetic into initializers, which ``onnx2torch``
    needs (its Conv converter reads weights and bias from initializers only); with a fixed
    batch it also removes the host-side shape reads that CUDA graphs cannot capture.
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


def load_torch_module(model_path: Path) -> Any:
    """The ONNX model as a PyTorch module (CPU, fp32), the way this backend loads it."""
    import onnx
    from onnx2torch import convert

    return convert(fold_constants(onnx.load(str(model_path))))


def batch_buckets(max_batch: int) -> list[int]:
    """Batch sizes that get a CUDA graph: powers of two below ``max_batch``, and ``max_batch``."""
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


class TorchCudaEngine(Engine):
    """ONNX model -> PyTorch module on one CUDA device."""

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
        self.fp16 = config.precision == "fp16"
        self.proto = onnx.load(str(model_path))
        dims = self.proto.graph.input[0].type.tensor_type.shape.dim
        height = dims[2].dim_value or 640
        width = dims[3].dim_value or 640
        self._convert = convert
        self.module = self._to_device(self._convert_proto(fold_constants(self.proto), model_path))
        self.buckets = batch_buckets(max_batch)
        self._graphs: dict[int, tuple[Any, Any, Any]] = {}
        self._use_graphs = config.cuda_graphs
        self._stream = torch.cuda.Stream(self.device)
        self._shape = (height, width)
        with torch.inference_mode():
            probe = self._run(self.module, torch.zeros(1, 3, height, width, device=self.device))
        if self._use_graphs:  # capture every bucket now: no stall when a new size first comes
            for size in self.buckets:
                self._graph(size)
        self.info = EngineInfo(
            backend="torch-cuda",
            device=f"{torch.cuda.get_device_name(self.device)} ({config.precision}"
            f"{', CUDA graphs' if self._use_graphs else ', eager'})",
            input_width=width,
            input_height=height,
            input_dtype="float16" if self.fp16 else "float32",
            max_batch=max_batch,
            num_classes=int(probe.shape[1]) - 4,
        )

    # ---- building -----------------------------------------------------------------
    def _convert_proto(self, proto: Any, where: Path | str) -> Any:
        try:
            return self._convert(proto)
        except Exception as exc:
            raise ModelError(f"{where}: onnx2torch cannot convert it: {exc}") from exc

    def _to_device(self, module: Any) -> Any:
        torch = self._torch
        module = module.eval().to(self.device)
        if self.fp16:
            module = module.half()
        return module.to(memory_format=torch.channels_last)

    # ---- running ------------------------------------------------------------------
    def _run(self, module: Any, x: Any) -> Any:
        torch = self._torch
        x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast("cuda", dtype=torch.float16, enabled=self.fp16, cache_enabled=False):
            out = module(x.half() if self.fp16 else x.float())
        out = out[0] if isinstance(out, (list, tuple)) else out
        return out

    def _capture(self, module: Any, size: int) -> tuple[Any, Any, Any]:
        """Trace the module at batch ``size`` and capture one replay of it.

        Converted graphs read shapes on the host (``Shape``/``Reshape``), which a CUDA graph
        cannot capture; ``torch.jit.trace`` at a fixed batch turns those reads into constants.
        """
        torch = self._torch
        height, width = self._shape
        dtype = torch.float16 if self.fp16 else torch.float32
        static_in = torch.zeros(size, 3, height, width, device=self.device, dtype=dtype)
        runner = _wrap(module, self.fp16)
        with torch.no_grad(), torch.cuda.stream(self._stream):
            traced = torch.jit.trace(runner, static_in, check_trace=False, strict=False)
            for _ in range(3):  # warm up kernels and the allocator outside the capture
                traced(static_in)
            self._stream.synchronize()
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, stream=self._stream):
                static_out = traced(static_in)
        return graph, static_in, static_out

    def _graph(self, size: int) -> tuple[Any, Any, Any] | None:
        """The CUDA graph for one bucket (None: run eagerly)."""
        if not self._use_graphs:
            return None
        if size not in self._graphs:
            try:
                self._graphs[size] = self._capture(self.module, size)
            except Exception as exc:
                log.warning("CUDA graph capture failed (%s); running eagerly", exc)
                self._use_graphs = False
                self._torch.cuda.synchronize()
                return None
        return self._graphs[size]

    def forward(self, x: Any) -> Any:
        """Run a device tensor ``[n, 3, H, W]`` (any float dtype); returns ``[n, 4+C, A]``."""
        torch = self._torch
        n = int(x.shape[0])
        size = bucket_for(n, self.buckets)
        captured = self._graph(size)
        with torch.inference_mode():
            if captured is None:
                return self._run(self.module, x)
            graph, static_in, static_out = captured
            static_in[:n].copy_(x)
            if n < size:
                static_in[n:].zero_()
            graph.replay()
            return static_out[:n]

    def _upload(self, batch: npt.NDArray[Any]) -> Any:
        host = self._torch.from_numpy(np.ascontiguousarray(batch))
        return host.pin_memory().to(self.device, non_blocking=True)

    def infer(self, batch: npt.NDArray[np.floating]) -> npt.NDArray[np.float32]:
        out = self.forward(self._upload(batch))
        return np.asarray(out.float().cpu().numpy(), dtype=np.float32)

    def detect(
        self,
        batch: npt.NDArray[np.floating],
        conf_threshold: float,
        iou_threshold: float,
        max_detections: int,
    ) -> list[Detections]:
        out = self.forward(self._upload(batch))
        return gpu_decode(out, conf_threshold, iou_threshold, max_detections)

    def detect_images(
        self,
        images: npt.NDArray[np.uint8],
        conf_threshold: float,
        iou_threshold: float,
        max_detections: int,
    ) -> list[Detections]:
        x = self._upload(images).permute(0, 3, 1, 2)
        x = x.half() if self.fp16 else x.float()
        out = self.forward(x.mul_(1.0 / 255.0))
        return gpu_decode(out, conf_threshold, iou_threshold, max_detections)

    def close(self) -> None:
        self._graphs.clear()
        self._torch.cuda.empty_cache()


def gpu_decode(
    output: Any, conf_threshold: float, iou_threshold: float, max_detections: int
) -> list[Detections]:
    """Decode ``[N, 4+C, A]`` on the GPU: best class, threshold, one class-aware NMS for the
    whole batch (images kept apart by offsetting their class ids), one copy to the host."""
    import torch

    try:
        from torchvision.ops import batched_nms
    except ImportError:  # pragma: no cover - torchvision is optional
        batched_nms = _batched_nms
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
    results: list[Detections] = []
    for i in range(n):
        rows = host[host[:, 6] == i][:max_detections]  # NMS order: best score first
        results.append(
            (
                rows[:, :4].astype(np.float32),
                rows[:, 4].astype(np.float32),
                rows[:, 5].astype(np.intp),
            )
        )
    return results


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
