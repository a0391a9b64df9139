"""``POST /streams``, ``PATCH /streams/{id}``, ``DELETE /streams/{id}``: runtime changes
through the :class:`~visionflow.streams.control.StreamControl` (bearer token required).

Unknown id -> 404, an id already registered -> 409 (also when a concurrent POST of the same
id wins the race), a PATCH that sets nothing -> 400, a runtime URL breaking the ``${ENV}`` rule
(:func:`~visionflow.streams.secrets.check_runtime_url`) -> 400, anything else the control
refuses -> 400; messages are passed on with credentials redacted.  A URL's password is
never answered.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import redis
from fastapi import APIRouter, Depends, HTTPException

from visionflow.api.context import ApiContext, context
from visionflow.errors import ConfigError
from visionflow.streams.config import StreamConfig
from visionflow.streams.control import StreamControl, StreamPatch
from visionflow.streams.merge import NOTHING_TO_CHANGE, patch_fields
from visionflow.streams.secrets import check_runtime_url
from visionflow.streams.urls import redact_text

Ctx = Depends(context)


def stream_config_json(stream: StreamConfig) -> dict[str, Any]:
    data = stream.model_dump(mode="json")
    data["url"] = stream.safe_url
    return data


def _control(ctx: ApiContext) -> StreamControl:
    if ctx.control is None:
        raise HTTPException(503, "stream control is not available in this API")
    return ctx.control


def _known(control: StreamControl, stream_id: str) -> bool:
    return bool(_call(lambda: any(s.id == stream_id for s in control.list())))


def _call(action: Callable[[], Any]) -> Any:
    try:
        return action()
    except ConfigError as exc:
        raise HTTPException(400, redact_text(str(exc))) from None
    except (redis.RedisError, OSError) as exc:  # the registry lives in Redis
        raise HTTPException(503, f"stream registry unavailable: {redact_text(str(exc))}") from None


def build_router(guard: Callable[..., None]) -> APIRouter:
    router = APIRouter(tags=["control"], dependencies=[Depends(guard)])

    @router.post("/streams", status_code=201, summary="Register and start a new stream")
    def add_stream(stream: StreamConfig, ctx: ApiContext = Ctx) -> dict[str, Any]:
        control = _control(ctx)
        if _known(control, stream.id):
            raise HTTPException(409, f"stream {stream.id!r} is already registered")
        _call(lambda: check_runtime_url(stream.id, stream.url))
        if _known(control, stream.id):
            raise HTTPException(409, f"stream {stream.id!r} is already registered")
        try:
            _call(lambda: control.add(stream))
        except HTTPException as exc:
            if exc.status_code == 400 and _known(control, stream.id):  # a concurrent POST won
                raise HTTPException(409, f"stream {stream.id!r} is already registered") from None
            raise
        return stream_config_json(stream)

    @router.patch("/streams/{stream_id}", summary="Enable/disable, analysis fps, labels")
    def patch_stream(stream_id: str, patch: StreamPatch, ctx: ApiContext = Ctx) -> dict[str, Any]:
        control = _control(ctx)
        if not patch_fields(patch):
            raise HTTPException(400, f"nothing to change: {NOTHING_TO_CHANGE}")
        if not _known(control, stream_id):
            raise HTTPException(404, f"no stream {stream_id!r}")
        updated: StreamConfig = _call(lambda: control.update(stream_id, patch))
        return stream_config_json(updated)

    @router.delete("/streams/{stream_id}", status_code=204, summary="Unregister a stream")
    def delete_stream(stream_id: str, ctx: ApiContext = Ctx) -> None:
        control = _control(ctx)
        if not _known(control, stream_id):
            raise HTTPException(404, f"no stream {stream_id!r}")
        _call(lambda: control.remove(stream_id))

    @router.get("/registry/conflicts", summary="Config file vs runtime registry conflicts")
    def registry_conflicts(ctx: ApiContext = Ctx) -> list[dict[str, str]]:
        control = _control(ctx)
        conflicts = _call(control.conflicts)
        return [
            {"stream_id": c.stream_id, "kind": c.kind, "detail": redact_text(c.detail)}
            for c in conflicts
        ]

    return router
