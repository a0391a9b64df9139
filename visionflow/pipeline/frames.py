"""Frozen records passed between stages (ingest -> scheduler -> inference -> output stage).

They carry metadata only; pixels travel through shared memory
(:mod:`visionflow.pipeline.framepool`), so a message stays a few hundred bytes.  The one
exception is :class:`FrameImage`: at most one frame per stream per snapshot interval, copied
by the inference worker for the output stage's annotated snapshots.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple


class Size(NamedTuple):
    """A width and a height in pixels, in that order, everywhere in visionflow."""

    width: int
    height: int


@dataclass(frozen=True)
class Letterbox:
    """How a frame of ``src_w`` x ``src_h`` was scaled and padded into the network input."""

    src_w: int
    src_h: int
    dst_w: int
    dst_h: int
    scale: float
    pad_x: int
    pad_y: int
    scaled_w: int
    scaled_h: int


@dataclass(frozen=True)
class FrameRef:
    """One decoded frame, waiting in a shared-memory slot."""

    stream_id: str
    seq: int
    pts: float | None
    capture_ts: float
    decode_ms: float
    pool: str
    slot: int
    letterbox: Letterbox
    lossless: bool = False  # a file read faster than real time: wait, never drop
    snapshot: bool = False  # its pixels go to the output stage for the stream's snapshot


@dataclass(frozen=True)
class BatchRequest:
    """Frames the scheduler sends to one inference worker."""

    batch_id: int
    frames: tuple[FrameRef, ...]
    formed_ts: float


@dataclass(frozen=True)
class Detection:
    """One detected object, box in the original frame's pixels."""

    class_id: int
    label: str
    score: float
    x1: float
    y1: float
    x2: float
    y2: float
    track_id: int | None = None  # set by the tracker (output stage) on tracked streams
    # appearance descriptor (visionflow.pipeline.appearance: 64 float16, 128 bytes), only on
    # streams whose tracking re-identifies by appearance; internal, never written to Redis
    appearance: bytes | None = None

    def tracked(self, track_id: int | None) -> Detection:
        """This detection with ``track_id`` and without its descriptor (the tracker's output;
        ``dataclasses.replace`` costs several times more, once per box of every tracked
        frame)."""
        return Detection(
            self.class_id, self.label, self.score, self.x1, self.y1, self.x2, self.y2, track_id
        )


@dataclass(frozen=True)
class TrackEvent:
    """Something a tracked object did (``visionflow.tracking``): enter, exit, loiter, cross."""

    kind: str
    track_id: int
    label: str
    ts: float  # capture time (Unix seconds) of the frame it happened in
    seq: int
    box: tuple[float, float, float, float]
    zone: str = ""
    line: str = ""
    direction: str = ""  # cross: 'in' or 'out'
    dwell_s: float | None = None  # exit and loiter: time inside the zone so far
    inferred: bool = False  # nobody saw it (a zone passage, an unseen crossing); ts estimated


@dataclass(frozen=True)
class FrameResult:
    """Detections of one frame plus its latency accounting."""

    frame: FrameRef
    detections: tuple[Detection, ...]
    queue_ms: float
    inference_ms: float
    batch_size: int
    worker_id: int
    done_ts: float
    events: tuple[TrackEvent, ...] = ()  # tracking: what happened in this frame
    counts: tuple[tuple[str, str], ...] = ()  # tracking: (label, metric) to count once each


@dataclass(frozen=True)
class FrameImage:
    """The pixels of a frame marked ``snapshot``: its letterboxed image without the padding,
    ``[scaled_h, scaled_w, 3]`` RGB uint8 (a box in original pixels times ``letterbox.scale``
    lands on it)."""

    stream_id: str
    seq: int
    pixels: Any  # numpy uint8 array


@dataclass(frozen=True)
class BatchResult:
    """What an inference worker sends back for one batch."""

    batch_id: int
    worker_id: int
    results: tuple[FrameResult, ...]
    error: str | None = None
    images: tuple[FrameImage, ...] = ()  # of its frames marked ``snapshot``
