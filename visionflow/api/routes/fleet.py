"""``GET /fleet``: the nodes sharing the streams, which streams each holds, load."""

from __future__ import annotations

from typing import Any

import redis
from fastapi import APIRouter, Depends, HTTPException

from visionflow.api.context import ApiContext, context
from visionflow.errors import ConfigError
from visionflow.fleet.view import fleet_view
from visionflow.streams.urls import redact_text

router = APIRouter(tags=["fleet"])
Ctx = Depends(context)


@router.get("/fleet", summary="Fleet nodes (alive, heartbeat, capacity, labels), streams, load")
def get_fleet(ctx: ApiContext = Ctx) -> dict[str, Any]:
    try:
        streams = [s.id for s in ctx.control.list()] if ctx.control is not None else None
        return fleet_view(ctx.redis, ctx.prefix, streams)
    except (redis.RedisError, OSError) as exc:
        raise HTTPException(503, f"redis unreachable: {redact_text(str(exc))}") from None
    except ConfigError as exc:
        raise HTTPException(503, str(exc)) from None
