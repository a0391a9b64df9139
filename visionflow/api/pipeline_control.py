"""An interim :class:`~visionflow.streams.control.StreamControl` over the in-process
:class:`~visionflow.workers.supervisor.Pipeline` (``visionflow run`` with ``api:``).

Changes last until the process ends (nothing is kept in Redis): the Redis-backed runtime
registry (``visionflow.streams.registry``) replaces this where it is available.  A patch
restarts the stream with its new settings (its counters start again); ``enabled: false``
stops reading it and keeps it listed.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING

from visionflow.errors import ConfigError
from visionflow.streams.config import StreamConfig
from visionflow.streams.control import StreamPatch

if TYPE_CHECKING:
    from visionflow.workers.supervisor import Pipeline


class PipelineControl:
    def __init__(self, pipeline: Pipeline) -> None:
        self.pipeline = pipeline
        self.allowed = set(pipeline.config.source.allowed_schemes)
        self._disabled: dict[str, StreamConfig] = {}
        self._lock = threading.Lock()

    def _running(self) -> dict[str, StreamConfig]:
        return {sid: v.config for sid, v in list(self.pipeline.board.streams.items())}

    def list(self) -> list[StreamConfig]:
        with self._lock:
            return [*self._running().values(), *self._disabled.values()]

    def add(self, stream: StreamConfig) -> None:
        if stream.scheme not in self.allowed:
            raise ConfigError(
                f"stream {stream.id!r}: URL scheme {stream.scheme!r} is not in "
                f"source.allowed_schemes {sorted(self.allowed)}"
            )
        with self._lock:
            if stream.id in self._running() or stream.id in self._disabled:
                raise ConfigError(f"stream {stream.id!r} is already registered")
            self._start(stream)

    def update(self, stream_id: str, patch: StreamPatch) -> StreamConfig:
        with self._lock:
            old = self._running().get(stream_id) or self._disabled.get(stream_id)
            if old is None:
                raise ConfigError(f"stream {stream_id!r} is not registered")
            changes = {k: v for k, v in patch.model_dump().items() if v is not None}
            new = old.model_copy(update=changes)
            self._stop(stream_id)
            self._start(new)
            return new

    def remove(self, stream_id: str) -> None:
        with self._lock:
            if stream_id not in self._running() and stream_id not in self._disabled:
                raise ConfigError(f"stream {stream_id!r} is not registered")
            self._stop(stream_id)

    def _start(self, stream: StreamConfig) -> None:
        if stream.enabled:
            self.pipeline.add_stream(stream)
        else:
            self._disabled[stream.id] = stream

    def _stop(self, stream_id: str) -> None:
        if self._disabled.pop(stream_id, None) is None:
            self.pipeline.remove_stream(stream_id)
