"""visionflow: many cameras -> dynamic batches -> a detector -> Redis Streams.

The public API (everything else is internal and may change)::

    from visionflow import Pipeline, load_config, parse_entry

    config = load_config("cameras.yaml")
    pipeline = Pipeline(config, "redis://localhost:6379/0")
    pipeline.start()
    pipeline.wait_ready()
    print(pipeline.status().streams)
    pipeline.stop()

Errors raised on purpose all derive from :class:`VisionflowError` (the tree is in
:mod:`visionflow.errors`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from visionflow.config import AppConfig, load_config, parse_config
from visionflow.errors import (
    ConfigError,
    ConsumerError,
    EngineError,
    EngineUnavailableError,
    InvalidTransitionError,
    ModelError,
    PublishError,
    ServerError,
    SourceDecodeError,
    SourceEndedError,
    SourceError,
    SourceOpenError,
    SourceStalledError,
    VisionflowError,
)
from visionflow.schema import Entry, parse_entry
from visionflow.streams.config import StreamConfig
from visionflow.streams.state import StreamState

if TYPE_CHECKING:
    from visionflow.consumer import ConsumerConfig, ConsumerCounters, Delivery, DetectionConsumer
    from visionflow.workers.status import PipelineStatus, StreamStatus, WorkerStatus
    from visionflow.workers.supervisor import Pipeline

__all__ = [
    "AppConfig",
    "ConfigError",
    "ConsumerConfig",
    "ConsumerCounters",
    "ConsumerError",
    "Delivery",
    "DetectionConsumer",
    "EngineError",
    "EngineUnavailableError",
    "Entry",
    "InvalidTransitionError",
    "ModelError",
    "Pipeline",
    "PipelineStatus",
    "PublishError",
    "ServerError",
    "SourceDecodeError",
    "SourceEndedError",
    "SourceError",
    "SourceOpenError",
    "SourceStalledError",
    "StreamConfig",
    "StreamState",
    "StreamStatus",
    "VisionflowError",
    "WorkerStatus",
    "load_config",
    "parse_config",
    "parse_entry",
]

_LAZY = {
    "ConsumerConfig": "visionflow.consumer",
    "ConsumerCounters": "visionflow.consumer",
    "Delivery": "visionflow.consumer",
    "DetectionConsumer": "visionflow.consumer",
    "Pipeline": "visionflow.workers.supervisor",
    "PipelineStatus": "visionflow.workers.status",
    "StreamStatus": "visionflow.workers.status",
    "WorkerStatus": "visionflow.workers.status",
}


def __getattr__(name: str) -> Any:
    """``Pipeline``, the status types and the consumer load on first use: ``import visionflow``
    stays light (the process machinery and redis are not imported until needed)."""
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'visionflow' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)
