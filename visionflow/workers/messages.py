"""Control and status messages between processes (frozen, small, picklable)."""

from __future__ import annotations

from dataclasses import dataclass, field

from visionflow.engines.base import EngineInfo
from visionflow.pipeline.frames import FrameRef
from visionflow.streams.config import StreamConfig
from visionflow.streams.state import StreamState
from visionflow.workers.latency import StreamLatency
from visionflow.workers.status import PublishStats


@dataclass(frozen=True)
class StreamStats:
    """Counters of one stream as its ingest process sees them."""

    stream_id: str
    state: StreamState
    state_since: float
    frames: int
    skipped_fps_cap: int
    drops_backpressure: int
    decode_errors: int
    reconnects: int
    last_error: str | None
    last_frame_ts: float | None
    width: int | None
    height: int | None
    analysis_fps: float = 0.0  # frames used (announced) per second, measured
    decode_mode: str = "all"  # "all", "nonref", "prefix" or "nonkey" (streams.shedding)
    skipped_analysis: int = 0  # frames not analysed: not decoded, or decoded and not used
    source_fps: float | None = None  # the source's frame rate, measured from packets
    target_fps: float | None = None  # min(analysis_fps, fair share); None: every frame
    lag_s: float | None = None  # seconds behind real time the packets are read (None: no pts)
    behind: bool = False  # read more than source.shed_lag_limit_s behind real time
    last_seq: int = -1  # the last seq given out (shed and skipped frames advance it too)


@dataclass(frozen=True)
class IngestHeartbeat:
    """Sent by every ingest process twice a second; its absence means the process hung."""

    process: int
    ts: float
    streams: tuple[StreamStats, ...]


@dataclass(frozen=True)
class StateChanged:
    """A stream changed state (sent at once, not only with the next heartbeat)."""

    stream_id: str
    source: StreamState
    target: StreamState
    reason: str
    at: float


@dataclass(frozen=True)
class PoolClosed:
    """An ingest process removed a stream's frame pool (consumers may detach)."""

    pool: str


@dataclass(frozen=True)
class AppearanceStreams:
    """To every inference worker: the streams whose detections get appearance descriptors
    (their tracking re-identifies by appearance, ``tracking.appearance_s``); all of them,
    replacing the set sent before, from the next batch the worker finishes (a frame described
    or not around a change is harmless: the tracker takes frames with or without)."""

    stream_ids: frozenset[str]


@dataclass(frozen=True)
class AddStream:
    """Command: start reading a stream, its first frame numbered ``first_seq``."""

    stream: StreamConfig
    first_seq: int = 0


@dataclass(frozen=True)
class RemoveStream:
    """Command: stop reading a stream and free its resources."""

    stream_id: str


@dataclass(frozen=True)
class UpdateStream:
    """Command: a changed entry of a stream being read (enabled, analysis_fps, labels,
    fps_cap apply in place; url, loop, realtime reopen it; counters and seq go on)."""

    stream: StreamConfig


@dataclass(frozen=True)
class StopReading:
    """Command (shutdown, first step): stop every reader and announce what is decoded, but
    keep the frame pools until ``None`` comes -- frames in GPU memory die with their
    process, so it must outlive the batches that read them."""


@dataclass(frozen=True)
class WorkerReady:
    """An inference worker loaded its engine."""

    worker_id: int
    info: EngineInfo
    pid: int


@dataclass(frozen=True)
class WorkerFailed:
    """An inference worker could not start (bad model, missing library)."""

    worker_id: int
    error: str


# ---- data-plane traffic (the scheduler's queue) ---------------------------------------------
@dataclass(frozen=True)
class FrameBatch:
    """Frames an ingest process announces at once (never one message per frame)."""

    process: int
    frames: tuple[FrameRef, ...]


@dataclass(frozen=True)
class BatchDone:
    """An inference worker finished a batch: its detections went to the output stage; the
    scheduler frees the batch's slots and counts it.  Small and O(1) per batch."""

    batch_id: int
    worker_id: int
    frames: int
    busy_ms: float
    error: str | None = None
    skipped: tuple[tuple[str, int], ...] = ()  # (pool, seq) of frames it could not read


@dataclass(frozen=True)
class BatchAbandoned:
    """Scheduler -> output stage: this batch id will never come (no worker could take it),
    so results of later batches need not wait for it.  Unless its results did arrive before
    (the worker died between writing them and reporting), its frames count ``worker_lost``."""

    batch_id: int
    frames: tuple[tuple[str, int], ...] = ()  # (stream, frames of it in the batch)
    reason: str = "worker_lost"  # or "shutdown": stopped before a worker finished it


@dataclass(frozen=True)
class OutputShards:
    """Task-queue message to the inference workers: streams' output shards (new assignments;
    sent before any frame of those streams; see :mod:`visionflow.workers.shards`)."""

    assigned: tuple[tuple[str, int], ...]


@dataclass(frozen=True)
class OutputStats:
    """The output stage's counters per stream (sent twice a second and at exit)."""

    ts: float
    published: tuple[tuple[str, int], ...]
    dropped: tuple[tuple[str, str, int], ...]  # (stream, reason, count)
    pending: int  # results waiting in the sinks
    connected: bool
    last_error: str | None
    final: bool = False
    pid: int = 0  # which output process (counts of a dead one are kept, not replaced)
    held_batches: int = 0  # batches waiting for an earlier one in the reorder buffer
    latency: tuple[tuple[str, StreamLatency], ...] = ()  # per stream, per stage (written ones)
    publish: PublishStats = field(default_factory=PublishStats)  # Redis errors, spool depth
    # results the lease fence refused, by (stream, registration generation, count): drops
    # (reason "fenced") of that registration only (fleet nodes)
    fenced: tuple[tuple[str, int, int], ...] = ()
    shard: int = 0  # which output process (its streams: visionflow.workers.shards)


@dataclass(frozen=True)
class SetAnalysisRates:
    """Command to an ingest process: each stream's fair share of inference, in frames per
    second (``None``: no limit), from :class:`visionflow.pipeline.share.FairShareController`;
    applied with :meth:`visionflow.workers.ingest.StreamReader.set_share`."""

    rates: tuple[tuple[str, float | None], ...]
    # the shares come from a decoder cut (streams behind real time, not inference drops):
    # a stream given one below its rate decodes only its GOPs' heads
    decoder_bound: bool = False
