"""``GET /fleet``: the nodes sharing the streams, which streams each holds, load;
``POST /fleet/nodes/{id}/drain`` (bearer token): the node hands its streams over and takes
none; ``DELETE`` of it: the node takes streams again."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import redis
from fastapi import APIRouter, Depends, HTTPException

from visionflow.api.context import ApiContext, context
from visionflow.errors import ConfigError
from visionflow.fleet.view import fleet_view
from visionflow.schema import fleet_drain_key, fleet_nodes_key
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


def _known_node(ctx: ApiContext, node_id: str) -> None:
    try:
        known = ctx.redis.hexists(fleet_nodes_key(ctx.prefix), node_id)
    except (redis.RedisError, OSError) as exc:
        raise HTTPException(503, f"redis unreachable: {redact_text(str(exc))}") from None
    if not known:
        raise HTTPException(404, f"no fleet node {node_id!r}")


def build_router(guard: Callable[..., None]) -> APIRouter:
    """The routes that change the fleet (bearer token)."""
    control = APIRouter(tags=["fleet"], dependencies=[Depends(guard)])

    @control.post("/fleet/nodes/{node_id}/drain", status_code=202, summary="Drain a node")
    def drain(node_id: str, ctx: ApiContext = Ctx) -> dict[str, str]:
        _known_node(ctx, node_id)
        ctx.redis.set(fleet_drain_key(ctx.prefix, node_id), "1")
        return {"node_id": node_id, "drain": "requested"}

    @control.delete("/fleet/nodes/{node_id}/drain", status_code=204, summary="Undrain a node")
    def undrain(node_id: str, ctx: ApiContext = Ctx) -> None:
        _known_node(ctx, node_id)
        ctx.redis.delete(fleet_drain_key(ctx.prefix, node_id))

    return control
