"""The FastAPI app factory (OpenAPI schema at ``/docs``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import redis
from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles

from visionflow.api.auth import token_guard
from visionflow.api.context import ApiContext
from visionflow.api.metrics import make_registry
from visionflow.api.protect import HostCheck, OutageLog, redis_unavailable
from visionflow.api.routes import control, data, fleet, health, metrics, status
from visionflow.streams.urls import redact_text

STATIC = Path(__file__).resolve().parent / "static"


def create_app(
    ctx: ApiContext,
    token: str | None,
    *,
    protect_reads: bool = False,
    trusted_hosts: frozenset[str] | None = None,
) -> FastAPI:
    """The API over ``ctx``; mutating routes need ``token`` (none: they answer 403), and so
    do the data GET routes with ``protect_reads`` (all but /healthz, /readyz, the page and
    the docs); ``trusted_hosts``: the Host names answered (None: any)."""
    app = FastAPI(
        title="visionflow operator API",
        summary="Streams, detections, counts, workers, health and metrics of a visionflow "
        "pipeline; runtime stream changes with a bearer token.",
    )
    app.state.ctx = ctx
    app.state.metrics = make_registry(ctx.source.snapshot)
    app.state.outages = OutageLog()
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(redis.RedisError, redis_unavailable)
    app.add_exception_handler(OSError, redis_unavailable)  # ConnectionError, socket errors
    guard = token_guard(token)
    reads = [Depends(guard)] if protect_reads else []
    for router in (status.router, data.router, metrics.router, fleet.router):
        app.include_router(router, dependencies=reads)
    app.include_router(health.router)
    app.include_router(control.build_router(guard))
    app.include_router(fleet.build_router(guard))
    if trusted_hosts is not None:
        app.add_middleware(HostCheck, hosts=trusted_hosts)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/", include_in_schema=False)
    def dashboard() -> FileResponse:
        return FileResponse(STATIC / "index.html")

    return app


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    """422 without echoing the input (a POSTed URL may carry a password)."""
    assert isinstance(exc, RequestValidationError)
    detail: list[dict[str, Any]] = [
        {"loc": list(err.get("loc", ())), "msg": redact_text(str(err.get("msg", "")))}
        for err in exc.errors()
    ]
    return JSONResponse({"detail": detail}, status_code=422)
