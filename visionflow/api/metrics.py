"""``GET /metrics``: Prometheus text built from the status snapshot at scrape time."""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from visionflow.api.sources import Snapshot, WorkerView, age_s
from visionflow.streams.state import StreamState
from visionflow.workers.latency import StageLatency
from visionflow.workers.status import PublishStats

NS = "visionflow"


class StatusCollector(Collector):
    """Every metric family from one snapshot (taken when Prometheus scrapes)."""

    def __init__(self, snapshot: Callable[[], Snapshot]) -> None:
        self._snapshot = snapshot

    def collect(self) -> Iterator[Metric]:
        snap = self._snapshot()
        yield from _stream_metrics(snap)
        yield from _latency_metrics(snap)
        yield from _worker_metrics(snap)
        yield from _output_metrics(snap)


def _gauge(name: str, doc: str, labels: list[str]) -> GaugeMetricFamily:
    return GaugeMetricFamily(f"{NS}_{name}", doc, labels=labels)


def _counter(name: str, doc: str, labels: list[str]) -> CounterMetricFamily:
    return CounterMetricFamily(f"{NS}_{name}", doc, labels=labels)


def _stream_metrics(snap: Snapshot) -> Iterator[Metric]:
    fps = _gauge("stream_fps", "Frames per second decoded and delivered.", ["stream"])
    analysed = _gauge("stream_analysis_fps", "Frames per second analysed.", ["stream"])
    state = _gauge("stream_state", "1 for the stream's current state.", ["stream", "state"])
    in_flight = _gauge(
        "stream_in_flight", "Frames decoded, not published or dropped yet.", ["stream"]
    )
    age = _gauge("stream_last_frame_age_seconds", "Seconds since the last frame.", ["stream"])
    frames = _counter("stream_frames", "Frames decoded.", ["stream"])
    published = _counter("stream_published", "Entries written to Redis.", ["stream"])
    drops = _counter("stream_drops", "Frames dropped, by reason.", ["stream", "reason"])
    reconnects = _counter("stream_reconnects", "Reconnections to the source.", ["stream"])
    errors = _counter("stream_decode_errors", "Frames that failed to decode.", ["stream"])
    for view in snap.streams:
        s, sid = view.status, view.status.stream_id
        fps.add_metric([sid], s.fps)
        analysed.add_metric([sid], s.analysis_fps)
        for st in StreamState:
            state.add_metric([sid, str(st)], 1.0 if s.state is st else 0.0)
        in_flight.add_metric([sid], s.in_flight)
        last = age_s(s.last_frame_ts)
        if last is not None:
            age.add_metric([sid], last)
        frames.add_metric([sid], s.frames)
        published.add_metric([sid], s.published)
        for reason, n in sorted(s.drops.items()):
            drops.add_metric([sid, reason], n)
        reconnects.add_metric([sid], s.reconnects)
        errors.add_metric([sid], s.decode_errors)
    yield from (fps, analysed, state, in_flight, age, frames, published, drops, reconnects, errors)


def _latency_metrics(snap: Snapshot) -> Iterator[Metric]:
    family = HistogramMetricFamily(
        f"{NS}_stage_latency_seconds",
        "Per-stage latency of published frames (decode, queue, inference, publish, total).",
        labels=["stream", "stage"],
    )
    for view in snap.streams:
        for stage, lat in sorted((view.latency or {}).items()):
            if lat.buckets:
                family.add_metric([view.status.stream_id, stage], _buckets(lat), lat.sum / 1000)
    yield family


def _buckets(lat: StageLatency, scale: float = 1e-3) -> list[tuple[str, float]]:
    """Cumulative (le, count) pairs ending with +Inf = the total count; ``le`` is the
    bound times ``scale`` (ms to seconds by default)."""
    out = [(repr(le * scale), float(n)) for le, n in lat.buckets if le != float("inf")]
    out.append(("+Inf", float(max(lat.count, lat.buckets[-1][1] if lat.buckets else 0))))
    return out


def _worker_labels(snap: Snapshot) -> list[str]:
    """A fleet's workers (``visionflow api`` over several nodes) are told apart by ``node``."""
    fleet = any(view.node is not None for view in snap.workers)
    return ["worker", "backend", "placement", *(["node"] if fleet else [])]


def _worker_key(view: WorkerView, labels: list[str]) -> list[str]:
    w = view.status
    key = [str(w.worker_id), w.backend, w.placement or w.device]
    return [*key, view.node or ""] if len(labels) > len(key) else key


def _worker_metrics(snap: Snapshot) -> Iterator[Metric]:
    labels = _worker_labels(snap)
    batches = _counter("worker_batches", "Batches inferred.", labels)
    frames = _counter("worker_frames", "Frames inferred.", labels)
    mean = _gauge("worker_mean_batch_size", "Mean frames per batch.", labels)
    inflight = _gauge("worker_inflight_batches", "Batches queued on the worker.", labels)
    restarts = _counter("worker_restarts", "Restarts of the worker process.", labels)
    ready = _gauge("worker_ready", "1 when the worker's engine is loaded.", labels)
    for view in snap.workers:
        w, key = view.status, _worker_key(view, labels)
        batches.add_metric(key, w.batches)
        frames.add_metric(key, w.frames)
        mean.add_metric(key, w.mean_batch)
        inflight.add_metric(key, w.inflight)
        restarts.add_metric(key, w.restarts)
        ready.add_metric(key, 1.0 if w.state == "ready" else 0.0)
    yield from (batches, frames, mean, inflight, restarts, ready)
    yield from _worker_histograms(snap, labels)


def _worker_histograms(snap: Snapshot, labels: list[str]) -> Iterator[Metric]:
    sizes = HistogramMetricFamily(
        f"{NS}_worker_batch_size",
        "Frames per batch a worker finished (since the pipeline started).",
        labels=labels,
    )
    seconds = HistogramMetricFamily(
        f"{NS}_worker_inference_seconds",
        "A worker's busy time per batch: pre-processing, inference, post-processing.",
        labels=labels,
    )
    for view in snap.workers:
        w, key = view.status, _worker_key(view, labels)
        if w.batch_size is not None:
            sizes.add_metric(key, _buckets(w.batch_size, 1.0), w.batch_size.sum)
        if w.inference_ms is not None:
            seconds.add_metric(key, _buckets(w.inference_ms), w.inference_ms.sum / 1000)
    yield from (sizes, seconds)


def _output_metrics(snap: Snapshot) -> Iterator[Metric]:
    """The output stage's side (absent when reading a Redis the pipeline never wrote it to)."""
    if snap.redis_connected is not None:
        up = _gauge("redis_connected", "1 while the output stage reaches Redis.", [])
        up.add_metric([], 1.0 if snap.redis_connected else 0.0)
        yield up
    if snap.redis_pending is not None:
        pending = _gauge(
            "redis_pending", "Entries not written to Redis yet (memory and spool).", []
        )
        pending.add_metric([], snap.redis_pending)
        yield pending
    if snap.publish is not None:
        yield from _publish_metrics(snap.publish)
    if snap.uptime_s is not None:
        uptime = _gauge("uptime_seconds", "Seconds since the pipeline started.", [])
        uptime.add_metric([], snap.uptime_s)
        yield uptime


def _publish_metrics(p: PublishStats) -> Iterator[Metric]:
    errors = _counter("publish_errors", "Writes of detections Redis did not take.", [])
    errors.add_metric([], p.errors)
    entries = _gauge("spool_entries", "Entries waiting in the on-disk spool for Redis.", [])
    entries.add_metric([], p.spool_entries)
    size = _gauge("spool_bytes", "Bytes on disk of the spooled entries waiting.", [])
    size.add_metric([], p.spool_bytes)
    replayed = _counter("spool_replayed", "Spooled entries written once Redis was back.", [])
    replayed.add_metric([], p.replayed)
    overflow = _counter("spool_overflow", "Unwritten entries a full spool dropped.", [])
    overflow.add_metric([], p.overflow)
    fenced = _counter(
        "fenced", "Detections entries the lease fence refused (a fleet node past its lease).", []
    )
    fenced.add_metric([], p.fenced)
    yield from (errors, entries, size, replayed, overflow, fenced)


def make_registry(snapshot: Callable[[], Snapshot]) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(StatusCollector(snapshot))
    return registry
