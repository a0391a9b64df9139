"""Fixtures of the API tests: a real Redis filled through the pipeline's own writers."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis
from fastapi.testclient import TestClient

from visionflow.api.app import create_app
from visionflow.api.context import ApiContext
from visionflow.api.sources import PipelineSource, RedisSource
from visionflow.config import RedisConfig
from visionflow.errors import ConfigError
from visionflow.pipeline.frames import Detection, FrameRef, FrameResult, Letterbox
from visionflow.schema import detections_key, encode_entry, format_stream_id, next_entry_id
from visionflow.streams.config import StreamConfig
from visionflow.streams.control import StreamPatch
from visionflow.streams.state import StreamState
from visionflow.workers.board import RedisStatusWriter
from visionflow.workers.status import PipelineStatus, StreamStatus, WorkerStatus

TOKEN = "s3cret-token"
PASSWORD_URL = "rtsp://admin:hunter2@10.0.0.5:554/live"


def stream_status(stream_id: str = "cam1", **changes: Any) -> StreamStatus:
    values: dict[str, Any] = {
        "stream_id": stream_id,
        "url": f"rtsp://10.0.0.5/{stream_id}",
        "labels": {"site": "gate"},
        "state": StreamState.STREAMING,
        "state_since": time.time() - 30,
        "fps": 25.0,
        "frames": 750,
        "published": 740,
        "skipped_fps_cap": 0,
        "drops": {"inference_behind": 8},
        "decode_errors": 0,
        "reconnects": 1,
        "last_error": None,
        "last_frame_ts": time.time() - 0.2,
        "width": 640,
        "height": 360,
        "in_flight": 2,
        "analysis_fps": 12.5,
    }
    values.update(changes)
    return StreamStatus(**values)


def worker_status(worker_id: int = 0, **changes: Any) -> WorkerStatus:
    values: dict[str, Any] = {
        "worker_id": worker_id,
        "state": "ready",
        "backend": "onnxruntime",
        "device": "cpu",
        "batches": 100,
        "frames": 400,
        "inflight": 1,
        "restarts": 0,
        "error": None,
    }
    values.update(changes)
    return WorkerStatus(**values)


def pipeline_status(
    streams: tuple[StreamStatus, ...] = (), workers: tuple[WorkerStatus, ...] = (), **changes: Any
) -> PipelineStatus:
    values: dict[str, Any] = {
        "streams": streams,
        "workers": workers,
        "redis_connected": True,
        "redis_error": None,
        "redis_pending": 0,
        "model_id": "demo-1",
        "uptime_s": 12.0,
    }
    values.update(changes)
    return PipelineStatus(**values)


def write_status(url: str, prefix: str, status: PipelineStatus) -> None:
    """What the pipeline's status writer would write (its own code, one write)."""
    writer = RedisStatusWriter(RedisConfig(url=url, key_prefix=prefix), url, lambda: status)
    writer.write()
    writer._client.close()


def write_entries(
    client: redis.Redis, prefix: str, stream_id: str, labels: list[list[str]], t0: float
) -> list[str]:
    """One detections entry per element of ``labels`` (its detections' labels), 40 ms apart,
    encoded by the output stage's encoder and written with its explicit ids."""
    ids, last = [], None
    for seq, frame_labels in enumerate(labels):
        capture = t0 + seq * 0.04
        box = Letterbox(640, 360, 640, 640, 1.0, 0, 140, 640, 360)
        frame = FrameRef(stream_id, seq, seq / 25, capture, 3.0, "pool", 0, box)
        dets = tuple(Detection(i, lab, 0.9, 10, 10, 50, 50) for i, lab in enumerate(frame_labels))
        result = FrameResult(frame, dets, 2.0, 9.0, 4, 0, capture + 0.02)
        last = next_entry_id(capture, seq, last)
        entry_id = format_stream_id(last)
        client.xadd(
            detections_key(prefix, stream_id),
            encode_entry(result, "demo-1", capture + 0.03),
            id=entry_id,
        )
        ids.append(entry_id)
    return ids


class MemoryControl:
    """An in-memory StreamControl: the seam until the Redis-backed registry lands."""

    def __init__(self, streams: list[StreamConfig] | None = None) -> None:
        self.streams = {s.id: s for s in streams or []}

    def list(self) -> list[StreamConfig]:
        return list(self.streams.values())

    def add(self, stream: StreamConfig) -> None:
        if stream.id in self.streams:
            raise ConfigError(f"stream {stream.id!r} is already registered")
        if "refused" in stream.url:  # a message naming the URL as given, password and all
            raise ConfigError(f"stream {stream.id!r}: {stream.url} is not allowed")
        self.streams[stream.id] = stream

    def update(self, stream_id: str, patch: StreamPatch) -> StreamConfig:
        old = self.streams[stream_id]
        changes = {k: v for k, v in patch.model_dump().items() if v is not None}
        self.streams[stream_id] = new = old.model_copy(update=changes)
        return new

    def remove(self, stream_id: str) -> None:
        if stream_id not in self.streams:
            raise ConfigError(f"stream {stream_id!r} is not registered")
        del self.streams[stream_id]


@pytest.fixture
def redis_api(redis_server: str, key_prefix: str) -> Iterator[Callable[..., TestClient]]:
    """Factory: a TestClient of the API reading Redis (``visionflow api``)."""
    clients: list[redis.Redis] = []

    def make(
        control: MemoryControl | None = None, token: str | None = TOKEN, **ctx: Any
    ) -> TestClient:
        client = redis.Redis.from_url(redis_server)
        clients.append(client)
        context = ApiContext(RedisSource(client, key_prefix), client, key_prefix, control, **ctx)
        return TestClient(create_app(context, token))

    yield make
    for c in clients:
        c.close()


@pytest.fixture
def pipeline_api(redis_server: str, key_prefix: str) -> Iterator[Callable[..., TestClient]]:
    """Factory: a TestClient of the API over an in-process status (``visionflow run``)."""
    clients: list[redis.Redis] = []

    def make(status: Callable[[], PipelineStatus], token: str | None = TOKEN) -> TestClient:
        client = redis.Redis.from_url(redis_server)
        clients.append(client)
        context = ApiContext(PipelineSource(status), client, key_prefix)
        return TestClient(create_app(context, token))

    yield make
    for c in clients:
        c.close()
