"""Inference backends behind one interface (:class:`~visionflow.engines.base.Engine`).

One module per backend; :func:`create_engine` imports only the one a config names, so a
machine without TensorRT or CUDA never imports them.
"""

from __future__ import annotations

from pathlib import Path

from visionflow.engines.base import Engine, EngineInfo
from visionflow.engines.config import (
    EngineConfig,
    OnnxRuntimeConfig,
    TensorRTConfig,
    TorchCudaConfig,
)

__all__ = ["Engine", "EngineConfig", "EngineInfo", "create_engine"]


def create_engine(config: EngineConfig, model_path: Path, max_batch: int) -> Engine:
    """Load ``model_path`` with the backend ``config`` names."""
    if isinstance(config, OnnxRuntimeConfig):
        from visionflow.engines.ort import OnnxRuntimeEngine

        return OnnxRuntimeEngine(config, model_path, max_batch)
    if isinstance(config, TensorRTConfig):
        from visionflow.engines.trt import TensorRTEngine

        return TensorRTEngine(config, model_path, max_batch)
    if isinstance(config, TorchCudaConfig):
        from visionflow.engines.torch_cuda import TorchCudaEngine

        return TorchCudaEngine(config, model_path, max_batch)
    raise TypeError(f"unknown engine config {type(config).__name__}")
