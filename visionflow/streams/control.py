"""The contract for changing streams at runtime, shared by the operator API and the pipeline.

The runtime registry (kept in Redis under ``<prefix>:registry``, merged with the config file)
implements :class:`StreamControl`; the API calls it whether it runs inside ``visionflow run``
or alone (``visionflow api``), and the pipeline reconciles what it reads with the registry.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from pydantic import BaseModel, ConfigDict, Field

from visionflow.streams.config import StreamConfig


class StreamPatch(BaseModel):
    """Changes to one registered stream (``PATCH /streams/{id}``); unset fields stay as they are."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool | None = Field(default=None, description="Start (true) or stop (false) reading.")
    analysis_fps: float | None = Field(
        default=None, gt=0, le=240, description="Frames per second to analyse."
    )
    labels: dict[str, str] | None = Field(
        default=None, description="Replaces the stream's labels (free-form key/value tags)."
    )


class StreamControl(Protocol):
    """Runtime registration; every method raises ``ConfigError`` naming what was wrong
    (unknown id, duplicate id, invalid entry) and changes nothing else."""

    def list(self) -> list[StreamConfig]:
        """Every registered stream: the config file's merged with the runtime registry's."""
        ...

    def add(self, stream: StreamConfig) -> None:
        """Register a new stream (kept across restarts)."""
        ...

    def update(self, stream_id: str, patch: StreamPatch) -> StreamConfig:
        """Apply ``patch`` and return the stream's new entry."""
        ...

    def remove(self, stream_id: str) -> None:
        """Unregister a stream (kept removed across restarts)."""
        ...

    def conflicts(self) -> Sequence[ConflictView]:
        """Where the config file and the runtime registry disagree (the rule that decided
        is documented with the registry)."""
        ...


class ConflictView(Protocol):
    """One reported conflict between the config file and the runtime registry."""

    @property
    def stream_id(self) -> str: ...

    @property
    def kind(self) -> str: ...

    @property
    def detail(self) -> str: ...
