"""What keeps the API answering and to whom: the Host check (DNS rebinding) and the answer
to an unreachable Redis (503, one warning per outage instead of a traceback per request)."""

from __future__ import annotations

import logging
import threading
import time

from fastapi import Request
from fastapi.responses import JSONResponse, PlainTextResponse
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Receive, Scope, Send

from visionflow.streams.urls import redact_text

log = logging.getLogger("visionflow.api")


def host_name(header: str) -> str:
    """The host of a Host header, port and IPv6 brackets removed, lower case.

    >>> host_name("[::1]:8080"), host_name("LocalHost:80"), host_name("cam")
    ('::1', 'localhost', 'cam')
    """
    if header.startswith("["):
        return header[1:].partition("]")[0].lower()
    if header.count(":") == 1:
        return header.partition(":")[0].lower()
    return header.lower()


class HostCheck:
    """ASGI middleware: 400 for a request whose Host is not one of ``hosts``, so a web
    page whose name was rebound to 127.0.0.1 cannot read a loopback API.  (Starlette's
    TrustedHostMiddleware cuts an IPv6 Host at its first ':'.)"""

    def __init__(self, app: ASGIApp, hosts: frozenset[str]) -> None:
        self.app, self.hosts = app, hosts

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket"):
            host = host_name(Headers(scope=scope).get("host", ""))
            if host not in self.hosts:
                answer = PlainTextResponse(f"Host {host!r} is not served here", 400)
                await answer(scope, receive, send)
                return
        await self.app(scope, receive, send)


class OutageLog:
    """Logs an unreachable Redis at most once per ``every_s`` (one line per outage, not a
    traceback per request)."""

    def __init__(self, every_s: float = 60.0) -> None:
        self.every_s = every_s
        self._lock = threading.Lock()
        self._last: float | None = None

    def warn(self, message: str) -> None:
        now = time.monotonic()
        with self._lock:
            if self._last is not None and now - self._last < self.every_s:
                return
            self._last = now
        log.warning(
            "Redis unreachable: %s (the data routes answer 503; logged at most every %.0f s)",
            message,
            self.every_s,
        )


async def redis_unavailable(request: Request, exc: Exception) -> JSONResponse:
    """redis.RedisError / OSError out of a route: 503 with a short redacted message."""
    message = redact_text(f"{type(exc).__name__}: {exc}")[:200]
    outages: OutageLog = request.app.state.outages
    outages.warn(message)
    return JSONResponse(
        {"detail": f"Redis unavailable: {message}"}, status_code=503, headers={"Retry-After": "1"}
    )
