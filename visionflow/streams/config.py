"""Per-stream configuration: what a camera is and how it is read."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, field_validator

from visionflow.streams.urls import redact_url, source_scheme
from visionflow.tracking.config import TrackingConfig

#: Redis key families under ``<prefix>:`` (visionflow.schema, the consumer's dead letters).
KEY_FAMILIES: tuple[str, ...] = (
    "streams",
    "status",
    "worker",
    "detections",
    "deadletter",
    "counts",
    "snapshot",
    "registry",
    "events",
    "fleet",
    "pipeline",
)

# Key layout rule: every key is ``<prefix>:<family>`` or ``<prefix>:<family>:<id>``. A stream
# id has no ':' (nor glob characters, spaces or control characters), so ``<id>`` is always
# the last segment and keys of different families or ids never coincide, whatever the id
# ("streams" and "status" are fine ids). key_prefix may contain ':' but none of its
# segments may be a family name, so one deployment's keys never fall inside another's.
StreamId = Annotated[
    str,
    Field(
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}$",
        description="Stream id: 1-64 ASCII letters, digits, '_', '.', '-' (first a letter or "
        "digit; no ':'), the last segment of its Redis keys <prefix>:detections:<id> and "
        "<prefix>:status:<id>, so no id can produce another key family's key.",
    ),
]


class StreamConfig(BaseModel):
    """One video source (camera, file or http stream)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: StreamId = Field(description="Unique stream id, used in Redis keys and the status table.")
    url: str = Field(
        min_length=1,
        description="rtsp://, rtsps://, http(s):// URL or local file path (file:// or plain); "
        "which of these are accepted is source.allowed_schemes (rtsp and rtsps by default). "
        "Other FFmpeg protocols (concat:, data:, subfile, pipe:, tcp:, udp:, ...) are refused. "
        "May contain ${ENV} references (e.g. for the password).",
    )
    enabled: bool = Field(default=True, description="Disabled streams are registered but not read.")
    fps_cap: float | None = Field(
        default=None,
        gt=0,
        le=240,
        description="Hard ceiling applied after decode: at most this many frames per second "
        "are delivered, the rest are decoded and skipped (counted as skipped_fps_cap). "
        "Prefer analysis_fps, which also avoids decoding frames it will not use.",
    )
    analysis_fps: float | None = Field(
        default=None,
        gt=0,
        le=240,
        description="Frames per second to analyse (like Frigate's detect fps); empty: every "
        "frame. Frames are kept evenly by presentation time and load is shed before decode "
        "where the decoder allows: only keyframes are decoded when the target is at most "
        "~1.2x the keyframe rate, B-frames are skipped when that suffices, and the rest of a "
        "GOP is not decoded once none of its frames will be used; frames decoded but not "
        "used skip the letterbox (counted as skipped_analysis, not as drops). Under "
        "overload the scheduler's fair share lowers the target further. Applied before "
        "fps_cap, which stays a ceiling after decode.",
    )
    loop: bool = Field(
        default=False, description="Local files only: start again at the end instead of stopping."
    )
    realtime: bool = Field(
        default=True,
        description="Local files only: pace frames at the file's frame rate like a live camera.",
    )
    labels: dict[str, str] = Field(
        default_factory=dict, description="Free-form labels (site, zone, ...) copied to status."
    )
    tracking: TrackingConfig | None = Field(
        default=None,
        description="Track objects (ByteTrack: track ids on the detections), with zones and "
        "lines (events and counts); empty: no tracking (the default). 'tracking: {}' tracks "
        "with the defaults.",
    )

    @field_validator("url")
    @classmethod
    def _known_scheme(cls, url: str) -> str:
        source_scheme(url)  # raises ValueError for concat:, data:, pipe:, ... (any other protocol)
        return url

    @property
    def scheme(self) -> str:
        """'rtsp', 'rtsps', 'http', 'https' or 'file' (a local path), checked against
        ``source.allowed_schemes``."""
        return source_scheme(self.url)

    @property
    def is_file(self) -> bool:
        """True for local files (plain path or file:// URL)."""
        return self.scheme == "file"

    @property
    def safe_url(self) -> str:
        """The URL with any password replaced, fit for logs, Redis and the API."""
        return redact_url(self.url)

    def __repr__(self) -> str:  # never leak the password through repr()
        return f"StreamConfig(id={self.id!r}, url={self.safe_url!r}, enabled={self.enabled})"

    __str__ = __repr__
