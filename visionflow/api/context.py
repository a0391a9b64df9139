"""What every route reaches: the status source, Redis, stream control, the token guard."""

from __future__ import annotations

from dataclasses import dataclass, field

import redis
from fastapi import Request

from visionflow.api.gpu import GpuProbe
from visionflow.api.rates import RateMeter
from visionflow.api.sources import StatusSource
from visionflow.streams.control import StreamControl


@dataclass
class ApiContext:
    source: StatusSource
    redis: redis.Redis  # detections, counts, /readyz's ping
    prefix: str
    control: StreamControl | None = None  # None: stream changes are not available here
    stale_after_s: float | None = None  # Redis source: status older than this is not ready
    rates: RateMeter = field(default_factory=RateMeter)
    gpus: GpuProbe = field(default_factory=GpuProbe)


def context(request: Request) -> ApiContext:
    ctx: ApiContext = request.app.state.ctx
    return ctx
