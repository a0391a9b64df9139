"""Where the API reads status from: one small protocol, two implementations.

- :class:`PipelineSource`: the in-process :class:`~visionflow.workers.supervisor.Pipeline`
  (``visionflow run``), always fresh;
- :class:`RedisSource`: the hashes :class:`~visionflow.workers.board.RedisStatusWriter`
  writes (``visionflow api``, possibly on another host), as fresh as its last write; the
  pipeline-wide fields (output stage, spool) come from ``<prefix>:pipeline`` once written.

Both answer a :class:`Snapshot` of the status types of :mod:`visionflow.workers.status`
plus the per-stage latency (the ``latency_ms`` status field, when the pipeline writes it).
"""

from __future__ import annotations

import json
import math
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any, Protocol

import redis

from visionflow.schema import (
    fleet_alive_key,
    fleet_nodes_key,
    pipeline_key,
    status_key,
    streams_key,
    worker_key,
)
from visionflow.streams.state import StreamState
from visionflow.streams.urls import redact_text, redact_url
from visionflow.workers.latency import StageLatency, parse_latency_json, parse_stage_json
from visionflow.workers.status import PipelineStatus, PublishStats, StreamStatus, WorkerStatus

#: worker hashes are read in chunks of this many ids (workers are numbered 0, 1, ...)
WORKER_CHUNK = 16
STAGES = ("decode", "queue", "inference", "publish", "total")


@dataclass(frozen=True)
class StreamView:
    status: StreamStatus
    latency: Mapping[str, StageLatency] | None  # None: the pipeline does not measure it
    updated_ts: float | None


@dataclass(frozen=True)
class WorkerView:
    status: WorkerStatus
    updated_ts: float | None
    node: str | None = None  # the fleet node it belongs to (None: not a fleet)


@dataclass(frozen=True)
class Snapshot:
    """The pipeline's status at one instant, as the API reads it."""

    streams: tuple[StreamView, ...]
    workers: tuple[WorkerView, ...]
    model_id: str | None
    redis_connected: bool | None  # the pipeline's output stage (None: not written yet)
    redis_error: str | None
    redis_pending: int | None
    uptime_s: float | None
    as_of: float | None  # when the status was taken (None: never written)
    source: str  # "pipeline" or "redis"
    publish: PublishStats | None = None  # failed writes, spool depth (None: not written yet)

    def stream(self, stream_id: str) -> StreamView | None:
        return next((s for s in self.streams if s.status.stream_id == stream_id), None)


class StatusSource(Protocol):
    def snapshot(self) -> Snapshot: ...


def parse_latency(raw: str | None) -> dict[str, StageLatency] | None:
    """The ``latency_ms`` status field; None when the stream has no measured stage yet (or
    the field is absent or unreadable: a status written by another version)."""
    try:
        return parse_latency_json(raw or "") or None
    except (ValueError, TypeError, KeyError, AttributeError):
        return None


def _latency_of(status: StreamStatus) -> dict[str, StageLatency] | None:
    return dict(status.latency) or None


class PipelineSource:
    """The in-process pipeline's board (``Pipeline.status``), taken at most once per
    ``max_age_s`` (0.5 s): ``Pipeline.status`` takes the scheduler's lock and summarises
    every stream, and one dashboard poll makes four requests.  Thread-safe: concurrent
    requests wait for one call instead of each making their own."""

    def __init__(
        self,
        status: Callable[[], PipelineStatus],
        max_age_s: float = 0.5,
        node_id: str | None = None,
    ) -> None:
        """``node_id``: this process is that fleet node (its workers are shown with it)."""
        self._status, self.max_age_s, self.node_id = status, max_age_s, node_id
        self._lock = threading.Lock()
        self._cached: tuple[float, Snapshot] | None = None

    def snapshot(self) -> Snapshot:
        with self._lock:
            now = time.monotonic()
            if self._cached is not None and now - self._cached[0] < self.max_age_s:
                return self._cached[1]
            snap = self._take()
            self._cached = (now, snap)
            return snap

    def _take(self) -> Snapshot:
        now = time.time()
        st = self._status()
        return Snapshot(
            streams=tuple(StreamView(s, _latency_of(s), now) for s in st.streams),
            workers=tuple(WorkerView(w, now, self.node_id) for w in st.workers),
            model_id=st.model_id,
            redis_connected=st.redis_connected,
            redis_error=redact_text(st.redis_error) if st.redis_error else None,
            redis_pending=st.redis_pending,
            uptime_s=st.uptime_s,
            as_of=now,
            source="pipeline",
            publish=st.publish,
        )


class RedisSource:
    """The status hashes in Redis: two round trips, three in a fleet (the streams set and the
    fleet's node ids, which of those nodes are alive, then every hash).  Workers: the single
    pipeline's ``<prefix>:worker:<n>`` and every live fleet node's
    ``<prefix>:worker:<node_id>:<n>`` (nodes listed in ``<prefix>:fleet:nodes`` whose
    ``<prefix>:fleet:alive:<node_id>`` exists)."""

    def __init__(self, client: redis.Redis, prefix: str) -> None:
        self.client, self.prefix = client, prefix

    def snapshot(self) -> Snapshot:
        first = self.client.pipeline(transaction=False)
        first.smembers(streams_key(self.prefix))
        first.hkeys(fleet_nodes_key(self.prefix))
        members, node_ids = first.execute()
        ids = sorted(_text(m) for m in members)
        nodes: list[str | None] = [None, *self._alive(sorted(_text(n) for n in node_ids))]
        pipe = self.client.pipeline(transaction=False)
        pipe.hgetall(pipeline_key(self.prefix))
        for sid in ids:
            pipe.hgetall(status_key(self.prefix, sid))
        for node in nodes:
            for wid in range(WORKER_CHUNK):
                pipe.hgetall(worker_key(self.prefix, wid, node))
        replies = pipe.execute()
        whole = _texts(replies[0])
        streams = [
            parse_stream(sid, _texts(h))
            for sid, h in zip(ids, replies[1 : len(ids) + 1], strict=True)
        ]
        rest = replies[len(ids) + 1 :]
        workers = []
        for i, node in enumerate(nodes):
            chunk = [_texts(h) for h in rest[i * WORKER_CHUNK : (i + 1) * WORKER_CHUNK]]
            hashes = self._more_workers(chunk, node)
            workers += [parse_worker(n, h, node) for n, h in enumerate(hashes) if h]
        stamps = [s.updated_ts for s in streams if s.updated_ts is not None]
        stamps += [w.updated_ts for w in workers if w.updated_ts is not None]
        return _with_pipeline_hash(
            Snapshot(
                streams=tuple(streams),
                workers=tuple(workers),
                model_id=None,
                redis_connected=None,
                redis_error=None,
                redis_pending=None,
                uptime_s=None,
                as_of=max(stamps) if stamps else None,
                source="redis",
            ),
            whole,
        )

    def _alive(self, node_ids: list[str]) -> list[str]:
        """The fleet nodes alive now (their liveness key exists): the workers of a node
        that left or died are not listed."""
        if not node_ids:
            return []
        pipe = self.client.pipeline(transaction=False)
        for node in node_ids:
            pipe.exists(fleet_alive_key(self.prefix, node))
        return [n for n, alive in zip(node_ids, pipe.execute(), strict=True) if alive]

    def _more_workers(self, hashes: list[dict[str, str]], node: str | None) -> list[dict[str, str]]:
        """Read on, a chunk at a time, while the last worker hash read exists."""
        while hashes and len(hashes) % WORKER_CHUNK == 0 and hashes[-1]:
            more = self.client.pipeline(transaction=False)
            start = len(hashes)
            for wid in range(start, start + WORKER_CHUNK):
                more.hgetall(worker_key(self.prefix, wid, node))
            hashes += [_texts(h) for h in more.execute()]
        return hashes


def _with_pipeline_hash(snap: Snapshot, h: dict[str, str]) -> Snapshot:
    """The ``<prefix>:pipeline`` hash's fields (absent before the pipeline's first write,
    or written by a version without it: the snapshot stays as it is)."""
    if not h:
        return snap
    return replace(
        snap,
        model_id=h.get("model_id") or None,
        redis_connected=h.get("redis_connected") == "1",
        redis_error=redact_text(h["redis_error"]) if h.get("redis_error") else None,
        redis_pending=_int(h.get("redis_pending")),
        uptime_s=_float(h.get("uptime_s")),
        publish=PublishStats(
            errors=_int(h.get("publish_errors")),
            spool_entries=_int(h.get("spool_entries")),
            spool_bytes=_int(h.get("spool_bytes")),
            replayed=_int(h.get("spool_replayed")),
            overflow=_int(h.get("spool_overflow")),
            fenced=_int(h.get("fenced")),
            accepted=_int(h.get("sink_accepted")),
            published=_int(h.get("sink_published")),
            duplicates=_int(h.get("duplicates")),
        ),
    )


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _texts(fields: Any) -> dict[str, str]:
    return {_text(k): _text(v) for k, v in (fields or {}).items()}


def _int(value: str | None) -> int:
    try:
        return int(value or 0)
    except ValueError:
        return 0


def _float(value: str | None) -> float | None:
    try:
        return float(value) if value else None
    except ValueError:
        return None


def _json(value: str | None, default: Any) -> Any:
    """The JSON in ``value``; ``default`` when absent, unreadable or of another type than
    ``default`` (a hash written by another version or by hand spoils only that field)."""
    try:
        parsed = json.loads(value) if value else default
    except ValueError:
        return default
    return parsed if isinstance(parsed, type(default)) else default


def _drops(value: str | None) -> dict[str, int]:
    """The ``drops`` field: reason -> count; entries that are not numbers are left out."""
    out: dict[str, int] = {}
    for reason, count in _json(value, {}).items():
        if isinstance(count, (int, float)) and not isinstance(count, bool):
            out[str(reason)] = int(count)
    return out


def _state(value: str | None) -> StreamState:
    try:
        return StreamState(value or "stopped")
    except ValueError:
        return StreamState.STOPPED


def parse_stream(stream_id: str, h: dict[str, str]) -> StreamView:
    """A ``<prefix>:status:<id>`` hash (as :meth:`StreamStatus.redis_fields` writes it)."""
    size = (_float(h.get("width")), _float(h.get("height")))
    status = StreamStatus(
        stream_id=stream_id,
        url=redact_url(h.get("url", "")),
        labels=_json(h.get("labels"), {}),
        state=_state(h.get("state")),
        state_since=_float(h.get("state_since")) or 0.0,
        fps=_float(h.get("fps")) or 0.0,
        frames=_int(h.get("frames")),
        published=_int(h.get("published")),
        skipped_fps_cap=_int(h.get("skipped_fps_cap")),
        drops=_drops(h.get("drops")),
        decode_errors=_int(h.get("decode_errors")),
        reconnects=_int(h.get("reconnects")),
        last_error=redact_text(h["last_error"]) if h.get("last_error") else None,
        last_frame_ts=_float(h.get("last_frame_ts")),
        width=None if size[0] is None else int(size[0]),
        height=None if size[1] is None else int(size[1]),
        decode=h.get("decode", "cpu"),
        in_flight=_int(h.get("in_flight")),
        unaccounted=_int(h.get("unaccounted")),
        analysis_fps=_float(h.get("analysis_fps")) or 0.0,
        decode_mode=h.get("decode_mode", "all"),
        skipped_analysis=_int(h.get("skipped_analysis")),
        target_fps=_float(h.get("target_fps")),
        source_fps=_float(h.get("source_fps")),
        lag_s=_float(h.get("lag_s")),
    )
    return StreamView(status, parse_latency(h.get("latency_ms")), _float(h.get("updated_ts")))


def parse_worker(worker_id: int, h: dict[str, str], node: str | None = None) -> WorkerView:
    """A ``<prefix>:worker:<n>`` hash, or fleet node ``node``'s ``<prefix>:worker:<node>:<n>``
    (as :meth:`WorkerStatus.redis_fields` writes it)."""
    status = WorkerStatus(
        worker_id=worker_id,
        state=h.get("state", ""),
        backend=h.get("backend", ""),
        device=h.get("device", ""),
        batches=_int(h.get("batches")),
        frames=_int(h.get("frames")),
        inflight=_int(h.get("inflight")),
        restarts=_int(h.get("restarts")),
        error=redact_text(h["error"]) if h.get("error") else None,
        placement=h.get("placement", ""),
        batch_size=parse_stage_json(h.get("batch_size_hist")),
        inference_ms=parse_stage_json(h.get("inference_ms")),
    )
    return WorkerView(status, _float(h.get("updated_ts")), node)


def age_s(ts: float | None, now: float | None = None) -> float | None:
    if ts is None or not math.isfinite(ts):
        return None
    return max(0.0, (now or time.time()) - ts)
