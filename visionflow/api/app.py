"""The FastAPI app factory (OpenAPI schema at ``/docs``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles

from visionflow.api.auth import token_guard
from visionflow.api.context import ApiContext
from visionflow.api.metrics import make_registry
from visionflow.api.routes import control, data, fleet, health, metrics, status
from visionflow.streams.urls import redact_text

STATIC = Path(__file__).resolve().parent / "static"


def create_app(ctx: ApiContext, token: str | None) -> FastAPI:
    """The API over ``ctx``; mutating routes need ``token`` (none: they answer 403)."""
    app = FastAPI(
        title="visionflow operator API",
        summary="Streams, detections, counts, workers, health and metrics of a visionflow "
        "pipeline; runtime stream changes with a bearer token.",
    )
    app.state.ctx = ctx
    app.state.metrics = make_registry(ctx.source.snapshot)
    app.add_exception_handler(RequestValidationError, _validation_error)
    for router in (status.router, data.router, health.router, metrics.router, fleet.router):
        app.include_router(router)
    app.include_router(control.build_router(token_guard(token)))
    app.include_router(fleet.build_router(token_guard(token)))
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
