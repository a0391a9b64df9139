"""Snapshots of the pipeline's health, shared by the status table, Redis and the API."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field

from visionflow.streams.state import StreamState
from visionflow.workers.latency import StageLatency, latency_json, stage_json


@dataclass(frozen=True)
class StreamStatus:
    """How one stream is doing."""

    stream_id: str
    url: str  # password already redacted
    labels: dict[str, str]
    state: StreamState
    state_since: float
    fps: float
    frames: int
    published: int
    skipped_fps_cap: int
    drops: dict[str, int]
    decode_errors: int
    reconnects: int
    last_error: str | None
    last_frame_ts: float | None
    width: int | None
    height: int | None
    decode: str = "cpu"  # decoder and where frames go: "cpu", "nvdec/device", "dali/host"...
    in_flight: int = 0  # frames decoded but neither published nor dropped yet
    unaccounted: int = 0  # frames - published - drops - in_flight: nonzero is a bug
    analysis_fps: float = 0.0  # frames used (announced) per second, measured in ingest
    decode_mode: str = "all"  # "all", "nonref" (B-frames skipped), "prefix" (GOP heads), "nonkey"
    skipped_analysis: int = 0  # frames not analysed: not decoded, or decoded and not used
    target_fps: float | None = None  # min(analysis_fps, fair share); None: every frame
    lag_s: float | None = None  # seconds behind real time the stream is read (None: no pts)
    source_fps: float | None = None  # the camera's own frame rate, measured from packets
    # per stage (decode, queue, inference, publish, total) of the entries written to Redis
    # by the current output process: recent p50/p99 and cumulative buckets (workers.latency)
    latency: dict[str, StageLatency] = field(default_factory=dict)

    @property
    def accounted(self) -> bool:
        """The accounting identity: frames == published + drops + in flight."""
        return self.unaccounted == 0 and (
            self.frames == self.published + self.total_drops + self.in_flight
        )

    @property
    def total_drops(self) -> int:
        return sum(self.drops.values())

    def redis_fields(self) -> dict[str, str]:
        return {
            "state": str(self.state),
            "state_since": f"{self.state_since:.3f}",
            "fps": f"{self.fps:.2f}",
            "frames": str(self.frames),
            "published": str(self.published),
            "skipped_fps_cap": str(self.skipped_fps_cap),
            "drops": json.dumps(self.drops, sort_keys=True),
            "in_flight": str(self.in_flight),
            "unaccounted": str(self.unaccounted),
            "target_fps": "" if self.target_fps is None else f"{self.target_fps:.2f}",
            "source_fps": "" if self.source_fps is None else f"{self.source_fps:.2f}",
            "lag_s": "" if self.lag_s is None else f"{self.lag_s:.3f}",
            "decode_errors": str(self.decode_errors),
            "reconnects": str(self.reconnects),
            "last_error": self.last_error or "",
            "last_frame_ts": "" if self.last_frame_ts is None else f"{self.last_frame_ts:.3f}",
            "width": "" if self.width is None else str(self.width),
            "height": "" if self.height is None else str(self.height),
            "decode": self.decode,
            "analysis_fps": f"{self.analysis_fps:.2f}",
            "decode_mode": self.decode_mode,
            "skipped_analysis": str(self.skipped_analysis),
            "url": self.url,
            "labels": json.dumps(self.labels, sort_keys=True),
            "latency_ms": latency_json(self.latency),
            "updated_ts": f"{time.time():.3f}",
        }


@dataclass(frozen=True)
class WorkerStatus:
    """How one inference worker is doing."""

    worker_id: int
    state: str
    backend: str
    device: str
    batches: int
    frames: int
    inflight: int
    restarts: int
    error: str | None
    placement: str = ""  # where it runs: "GPU 1 (H100 80GB HBM3, GPU-8f3a…)"; "" on the CPU
    # of the batches it finished without error (workers.latency.WORKER_HISTOGRAMS): frames
    # per batch, and busy ms per batch; None before its first batch
    batch_size: StageLatency | None = None
    inference_ms: StageLatency | None = None

    @property
    def mean_batch(self) -> float:
        return self.frames / self.batches if self.batches else 0.0

    @property
    def mean_inference_ms(self) -> float | None:
        hist = self.inference_ms
        return hist.sum / hist.count if hist is not None and hist.count else None

    def redis_fields(self) -> dict[str, str]:
        return {
            "state": self.state,
            "backend": self.backend,
            "device": self.device,
            "placement": self.placement,
            "batches": str(self.batches),
            "frames": str(self.frames),
            "mean_batch": f"{self.mean_batch:.2f}",
            "inflight": str(self.inflight),
            "restarts": str(self.restarts),
            "error": self.error or "",
            "batch_size_hist": stage_json(self.batch_size),
            "inference_ms": stage_json(self.inference_ms),
            "updated_ts": f"{time.time():.3f}",
        }


@dataclass(frozen=True)
class PublishStats:
    """The detections sink's side of Redis: failed writes and the on-disk spool."""

    errors: int = 0  # failed Redis writes (each a batch kept and retried, or spooled)
    spool_entries: int = 0  # entries waiting in the spool for Redis
    spool_bytes: int = 0  # bytes of those entries on disk
    replayed: int = 0  # spool entries written once Redis was reachable again
    overflow: int = 0  # unwritten entries a full spool dropped
    fenced: int = 0  # entries the lease fence refused (fleet nodes; any stream, any lease)
    accepted: int = 0  # results handed to the sink (its own: each published, dropped or pending)
    published: int = 0  # of those, written (found there already included)
    duplicates: int = 0  # entries found already written under their id (any run's)

    def plus(self, base: PublishStats) -> PublishStats:
        """These counts on top of ``base``'s (an output process gone); gauges stay."""
        return PublishStats(
            errors=base.errors + self.errors,
            spool_entries=self.spool_entries,
            spool_bytes=self.spool_bytes,
            replayed=base.replayed + self.replayed,
            overflow=base.overflow + self.overflow,
            fenced=base.fenced + self.fenced,
            accepted=base.accepted + self.accepted,
            published=base.published + self.published,
            duplicates=base.duplicates + self.duplicates,
        )


@dataclass(frozen=True)
class PipelineStatus:
    """Everything at one instant."""

    streams: tuple[StreamStatus, ...]
    workers: tuple[WorkerStatus, ...]
    redis_connected: bool
    redis_error: str | None
    redis_pending: int
    model_id: str
    uptime_s: float
    ledger_violations: int = 0  # frames resolved twice or never announced (a bug if > 0)
    publish: PublishStats = field(default_factory=PublishStats)

    def redis_fields(self) -> dict[str, str]:
        """The ``<prefix>:pipeline`` hash (schema.pipeline_key)."""
        p = self.publish
        return {
            "model_id": self.model_id,
            "uptime_s": f"{self.uptime_s:.1f}",
            "redis_connected": "1" if self.redis_connected else "0",
            "redis_error": self.redis_error or "",
            "redis_pending": str(self.redis_pending),
            "publish_errors": str(p.errors),
            "spool_entries": str(p.spool_entries),
            "spool_bytes": str(p.spool_bytes),
            "spool_replayed": str(p.replayed),
            "spool_overflow": str(p.overflow),
            "fenced": str(p.fenced),
            "sink_accepted": str(p.accepted),
            "sink_published": str(p.published),
            "duplicates": str(p.duplicates),
            "ledger_violations": str(self.ledger_violations),
            "updated_ts": f"{time.time():.3f}",
        }

    def stream(self, stream_id: str) -> StreamStatus:
        for s in self.streams:
            if s.stream_id == stream_id:
                return s
        raise KeyError(stream_id)
