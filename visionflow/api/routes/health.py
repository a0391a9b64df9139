"""``GET /healthz`` (the process answers) and ``GET /readyz`` (it can do its job)."""

from __future__ import annotations

import time
from typing import Any

import redis
from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse

from visionflow.api.context import ApiContext, context
from visionflow.api.sources import Snapshot
from visionflow.streams.urls import redact_text

router = APIRouter(tags=["health"])
Ctx = Depends(context)


@router.get("/healthz", summary="Alive")
async def healthz() -> dict[str, str]:
    """Touches nothing and runs on the event loop, not in the worker threads: it answers
    even while every thread waits on an unreachable Redis."""
    return {"status": "ok"}


@router.get("/readyz", summary="Redis reachable, workers ready, model loaded (503 otherwise)")
def readyz(ctx: ApiContext = Ctx) -> JSONResponse:
    reasons: list[str] = []
    snap: Snapshot | None = None
    try:
        ctx.redis.ping()
        snap = ctx.source.snapshot()
    except (redis.RedisError, OSError) as exc:
        reasons.append(f"redis unreachable: {redact_text(str(exc))}")
    body: dict[str, Any] = {}
    if snap is not None:
        reasons += _pipeline_reasons(snap, ctx.stale_after_s)
        ready = [w for w in snap.workers if w.status.state == "ready"]
        body["workers"] = {"ready": len(ready), "total": len(snap.workers)}
        body["streams"] = len(snap.streams)
        body["model_id"] = snap.model_id
    body["ready"] = not reasons
    body["reasons"] = reasons
    return JSONResponse(body, status_code=503 if reasons else 200)


def _pipeline_reasons(snap: Snapshot, stale_after_s: float | None) -> list[str]:
    reasons = []
    if snap.redis_connected is False:
        reasons.append(
            "the pipeline's output stage cannot reach Redis"
            + (f": {snap.redis_error}" if snap.redis_error else "")
        )
    if stale_after_s is not None:
        if snap.as_of is None:
            reasons.append("no pipeline status in Redis yet (is the pipeline running?)")
        elif time.time() - snap.as_of > stale_after_s:
            ago = time.time() - snap.as_of
            reasons.append(f"pipeline status last written {ago:.0f}s ago (is it running?)")
    if not any(w.status.state == "ready" for w in snap.workers):
        states = ", ".join(f"worker {w.status.worker_id} {w.status.state}" for w in snap.workers)
        reasons.append(f"no inference worker has its model loaded ({states or 'no workers'})")
    return reasons
