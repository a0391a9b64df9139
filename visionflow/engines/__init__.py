"""Inference backends behind one interface (:class:`~visionflow.engines.base.Engine`).

One module per backend (``ort.py``, ``torch_cuda.py``, ``trt.py``), each declaring its key,
config class and engine class; :mod:`visionflow.engines.registry` finds them by scanning this
package.  Backend modules import their libraries lazily, so a machine without TensorRT or CUDA
can still validate every config.
"""

from __future__ import annotations

from visionflow.engines.base import (
    CompletedBatch,
    Detections,
    Engine,
    EngineCapabilities,
    EngineConfigBase,
    EngineInfo,
    PendingBatch,
    SyncEngine,
    Thresholds,
)
from visionflow.engines.registry import (
    Backend,
    EngineConfig,
    backends,
    create_engine,
    engine_config_type,
    register,
)

__all__ = [
    "Backend",
    "CompletedBatch",
    "Detections",
    "Engine",
    "EngineCapabilities",
    "EngineConfig",
    "EngineConfigBase",
    "EngineInfo",
    "PendingBatch",
    "SyncEngine",
    "Thresholds",
    "backends",
    "create_engine",
    "engine_config_type",
    "register",
]
