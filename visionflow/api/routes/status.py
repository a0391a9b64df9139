"""``GET /streams``, ``GET /streams/{id}``, ``GET /workers``."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, HTTPException

from visionflow.api.context import ApiContext, context
from visionflow.api.views import stream_json, worker_json

router = APIRouter(tags=["status"])
Ctx = Depends(context)


@router.get("/streams", summary="Every stream's state, rates, counts and latency")
def list_streams(ctx: ApiContext = Ctx) -> dict[str, Any]:
    snap = ctx.source.snapshot()
    return {
        "as_of": snap.as_of,
        "source": snap.source,
        "model_id": snap.model_id,
        "streams": [stream_json(v, snap) for v in snap.streams],
    }


@router.get("/streams/{stream_id}", summary="One stream's state, rates, counts and latency")
def get_stream(stream_id: str, ctx: ApiContext = Ctx) -> dict[str, Any]:
    snap = ctx.source.snapshot()
    view = snap.stream(stream_id)
    if view is None:
        raise HTTPException(404, f"no stream {stream_id!r}")
    return stream_json(view, snap)


@router.get("/workers", summary="Inference workers: placement, load, GPU use")
def list_workers(ctx: ApiContext = Ctx) -> dict[str, Any]:
    snap = ctx.source.snapshot()
    return {
        "as_of": snap.as_of,
        "model_id": snap.model_id,
        "workers": [worker_json(w, ctx.rates, ctx.gpus) for w in snap.workers],
        "redis": {
            "connected": snap.redis_connected,
            "pending": snap.redis_pending,
            "error": snap.redis_error,
            "publish_errors": snap.publish.errors if snap.publish else None,
            "spool_entries": snap.publish.spool_entries if snap.publish else None,
            "spool_bytes": snap.publish.spool_bytes if snap.publish else None,
            "fenced": snap.publish.fenced if snap.publish else None,
            "accepted": snap.publish.accepted if snap.publish else None,
            "published": snap.publish.published if snap.publish else None,
            "duplicates": snap.publish.duplicates if snap.publish else None,
        },
    }
