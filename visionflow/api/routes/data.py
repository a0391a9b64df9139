"""``GET /streams/{id}/detections``, ``GET /streams/{id}/snapshot`` and ``GET /counts``:
what the cameras saw."""

from __future__ import annotations

import time
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Query, Response

from visionflow.api.context import ApiContext, context
from visionflow.api.counts import CountsQuery, check, read_counts
from visionflow.api.detections import bad_bound, read_page
from visionflow.schema import detections_key, snapshot_key

router = APIRouter(tags=["data"])
Ctx = Depends(context)
Bound = Annotated[
    str | None,
    Query(description="Entry id (<ms>-<n>) or epoch milliseconds; '(' first: exclusive."),
]


@router.get("/streams/{stream_id}/detections", summary="Detections entries, paged by entry id")
def detections(
    stream_id: str,
    since: Bound = None,
    until: Bound = None,
    limit: Annotated[int, Query(ge=1, le=1000, description="Most entries")] = 100,
    label: Annotated[str | None, Query(description="Only this label's detections")] = None,
    order: Annotated[str, Query(pattern="^(desc|asc)$", description="desc: newest first")] = (
        "desc"
    ),
    ctx: ApiContext = Ctx,
) -> dict[str, Any]:
    for name, value in (("since", since), ("until", until)):
        if bad_bound(value):
            raise HTTPException(400, f"{name}={value!r} is neither an entry id nor epoch ms")
    if not ctx.redis.exists(detections_key(ctx.prefix, stream_id)) and (
        ctx.source.snapshot().stream(stream_id) is None
    ):
        raise HTTPException(404, f"no stream {stream_id!r}")
    page = read_page(
        ctx.redis,
        ctx.prefix,
        stream_id,
        since=since,
        until=until,
        limit=limit,
        label=label,
        newest_first=order == "desc",
    )
    return {"stream": stream_id, "order": order, "entries": page.entries, "next": page.next}


@router.get(
    "/streams/{stream_id}/snapshot",
    summary="The stream's latest annotated JPEG (404 when none is kept)",
    response_class=Response,
    responses={200: {"content": {"image/jpeg": {}}}, 404: {"description": "No snapshot"}},
)
def snapshot(stream_id: str, ctx: ApiContext = Ctx) -> Response:
    data = ctx.redis.get(snapshot_key(ctx.prefix, stream_id))
    if not isinstance(data, bytes) or not data:
        raise HTTPException(404, f"no snapshot of stream {stream_id!r}")
    return Response(data, media_type="image/jpeg", headers={"Cache-Control": "no-store"})


@router.get("/snapshots", summary="Ids of the streams that have a snapshot kept now")
def snapshots(ctx: ApiContext = Ctx) -> dict[str, Any]:
    """One pipelined EXISTS per known stream, so a page asks only for snapshots that exist."""
    ids = [view.status.stream_id for view in ctx.source.snapshot().streams]
    pipe = ctx.redis.pipeline(transaction=False)
    for stream_id in ids:
        pipe.exists(snapshot_key(ctx.prefix, stream_id))
    kept = pipe.execute() if ids else []
    return {"streams": [sid for sid, n in zip(ids, kept, strict=True) if n]}


def _many(values: list[str] | None) -> tuple[str, ...]:
    """``?stream=a&stream=b`` or ``?stream=a,b``."""
    return tuple(v for raw in values or () for v in raw.split(",") if v)


@router.get("/counts", summary="Counts per label per time bucket over a window")
def counts(
    stream: Annotated[list[str] | None, Query(description="Stream id(s); none: all")] = None,
    label: Annotated[list[str] | None, Query(description="Label(s); none: all")] = None,
    window: Annotated[int, Query(description="Seconds back from now")] = 3600,
    bucket: Annotated[int, Query(description="Bucket length, a multiple of 60 s")] = 60,
    metric: Annotated[str, Query(description="boxes, tracks, zone:<z>:enter, ...")] = "boxes",
    per_stream: Annotated[bool, Query(description="One series per stream and label")] = False,
    ctx: ApiContext = Ctx,
) -> dict[str, Any]:
    query = CountsQuery(window, bucket, metric, _many(stream), _many(label), per_stream)
    problem = check(query)
    if problem:
        raise HTTPException(400, problem)
    return read_counts(ctx.redis, ctx.prefix, query, time.time())
