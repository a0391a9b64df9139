"""The JSON the API answers for streams and workers, built from a :class:`Snapshot`."""

from __future__ import annotations

from typing import Any

from visionflow.api.gpu import GpuProbe
from visionflow.api.rates import RateMeter
from visionflow.api.sources import Snapshot, StreamView, WorkerView, age_s
from visionflow.streams.urls import redact_text, redact_url
from visionflow.workers.latency import StageLatency


def stream_json(view: StreamView, snapshot: Snapshot) -> dict[str, Any]:
    s = view.status
    latency = None
    if view.latency is not None:
        latency = {
            stage: {"p50": lat.p50, "p99": lat.p99, "count": lat.count}
            for stage, lat in view.latency.items()
        }
    return {
        "id": s.stream_id,
        "url": redact_url(s.url),
        "labels": s.labels,
        "state": str(s.state),
        "state_since": s.state_since,
        "fps": {
            "decoded": s.fps,
            "analysed": s.analysis_fps,
            "target": s.target_fps,
            "source": s.source_fps,
        },
        "lag_s": s.lag_s,
        "frames": s.frames,
        "published": s.published,
        "drops": s.drops,
        "dropped": s.total_drops,
        "in_flight": s.in_flight,
        "skipped": {"fps_cap": s.skipped_fps_cap, "analysis": s.skipped_analysis},
        "decode_errors": s.decode_errors,
        "reconnects": s.reconnects,
        "last_error": redact_text(s.last_error) if s.last_error else None,
        "last_frame_ts": s.last_frame_ts,
        "last_frame_age_s": age_s(s.last_frame_ts),
        "width": s.width,
        "height": s.height,
        "latency_ms": latency,
        "placement": {
            "decoder": s.decode,
            "decode_mode": s.decode_mode,
            "workers": [w.status.placement or w.status.device for w in snapshot.workers],
        },
        "updated_ts": view.updated_ts,
    }


def _summary(hist: StageLatency | None) -> dict[str, float | int] | None:
    """Mean (over the whole run), recent p50/p99 and count of a worker histogram."""
    if hist is None or not hist.count:
        return None
    return {
        "mean": round(hist.sum / hist.count, 2),
        "p50": round(hist.p50, 2),
        "p99": round(hist.p99, 2),
        "count": hist.count,
    }


def worker_json(view: WorkerView, rates: RateMeter, gpus: GpuProbe) -> dict[str, Any]:
    w = view.status
    ts = view.updated_ts
    meter = f"w{w.worker_id}" if view.node is None else f"w{view.node}:{w.worker_id}"
    batches_per_s = None if ts is None else rates.observe(meter, ts, w.batches)
    gpu = gpus.stats_for(w.placement)
    return {
        "id": w.worker_id,
        "node": view.node,
        "state": w.state,
        "backend": w.backend,
        "device": w.device,
        "placement": w.placement or None,
        "batches": w.batches,
        "frames": w.frames,
        "batches_per_s": None if batches_per_s is None else round(batches_per_s, 2),
        "mean_batch": round(w.mean_batch, 2),
        "batch_size": _summary(w.batch_size),
        "inference_ms": _summary(w.inference_ms),
        "queue_depth": w.inflight,
        "restarts": w.restarts,
        "error": redact_text(w.error) if w.error else None,
        "gpu": None
        if gpu is None
        else {
            "uuid": gpu.uuid,
            "utilization_percent": gpu.utilization_percent,
            "memory_used_mb": gpu.memory_used_mb,
            "memory_total_mb": gpu.memory_total_mb,
        },
        "updated_ts": ts,
    }
