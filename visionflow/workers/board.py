"""The status board: every status event in, consistent snapshots out.

Ingest heartbeats and state changes, inference workers' ready/failed messages and the
output stage's counters arrive on the control queue (never mixed with frame traffic); the
scheduler's ledger is read under the scheduler's lock.  :meth:`StatusBoard.snapshot` serves
the CLI table, Redis (:class:`RedisStatusWriter`) and, later, the HTTP API.

Accounting per stream (frames skipped on purpose -- fps cap, analysis rate -- are counted
apart)::

    frames == published + sum(drops.values()) + in_flight

per registration of the stream: a stream removed and added again (or a fleet node's stream
taken again) starts from zero; drops of results the lease fence refused are charged by the
registration (generation) their lease value was set for, so a late refusal of an earlier
registration's frame never lands on a later one, and one of the current registration's
frames read under an earlier lease (the stream taken again while it stayed in the pipeline)
is its drop (its in-flight count settles).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import redis

from visionflow.config import RedisConfig
from visionflow.pipeline.ledger import LedgerSnapshot
from visionflow.redis_client import connect, explain, fatal
from visionflow.schema import pipeline_key, status_key, streams_key, worker_key
from visionflow.streams.backoff import Backoff
from visionflow.streams.config import StreamConfig
from visionflow.streams.state import StreamState
from visionflow.streams.urls import redact_url
from visionflow.workers.latency import StageLatency
from visionflow.workers.messages import (
    IngestHeartbeat,
    OutputStats,
    StateChanged,
    StreamStats,
    WorkerFailed,
    WorkerReady,
)
from visionflow.workers.output_book import OutputBook
from visionflow.workers.status import PipelineStatus, StreamStatus, WorkerStatus

log = logging.getLogger("visionflow.board")
# a fleet node's worker hashes expire after this many status intervals without a write (a
# node that died leaves none behind for long); one leaving deletes them
WORKER_TTL_INTERVALS = 5


@dataclass
class StreamView:
    """What the board knows of one stream (mutable; only the board touches it)."""

    config: StreamConfig
    decode: str = "cpu"
    stats: StreamStats | None = None
    state: StreamState = StreamState.STOPPED
    state_since: float = field(default_factory=time.time)
    fps: float = 0.0
    last_frames: tuple[float, int] | None = None
    base: Counter[str] = field(default_factory=Counter)  # counts of ingest processes gone
    base_last_seq: int = -1
    generation: int = 0  # the registration (fenced drops of another one are not its own)
    history: deque[StateChanged] = field(default_factory=lambda: deque(maxlen=64))


@dataclass
class WorkerView:
    """What the board knows of one inference worker."""

    worker_id: int
    placement: str = ""
    state: str = "starting"
    backend: str = ""
    device: str = ""
    error: str | None = None
    restarts: int = 0


@dataclass(frozen=True)
class WorkerLoadView:
    """The scheduler's view of one worker's load (read under its lock)."""

    batches: int
    frames: int
    inflight: int
    batch_size: StageLatency | None = None  # of the scheduler's batch book
    inference_ms: StageLatency | None = None


class StatusBoard:
    """Receives status events and builds :class:`PipelineStatus` snapshots."""

    def __init__(self, model_id: str) -> None:
        self.model_id = model_id
        self.streams: dict[str, StreamView] = {}
        self.workers: dict[int, WorkerView] = {}
        self.started_at = time.time()
        self.outputs = OutputBook()  # what the output processes published and dropped
        # output-side totals of a stream id when it was (re-)registered: a stream removed and
        # added again under the same id starts from zero instead of inheriting the old counts
        self._origin: dict[str, tuple[int, Counter[str]]] = {}
        self._lock = threading.Lock()

    # ---- membership ----------------------------------------------------------------
    def add_stream(self, config: StreamConfig, decode: str = "cpu", generation: int = 0) -> None:
        """``generation``: the registration's number (the pipeline's; fenced drops carry
        it)."""
        with self._lock:
            self.streams[config.id] = StreamView(config, decode, generation=generation)
            self._origin[config.id] = self._output_totals(config.id)

    def _output_totals(self, sid: str) -> tuple[int, Counter[str]]:
        """Published and output-side drops of ``sid`` since the board started."""
        return self.outputs.totals(sid)

    def remove_stream(self, stream_id: str) -> None:
        with self._lock:
            self.streams.pop(stream_id, None)

    def update_stream(self, config: StreamConfig) -> None:
        """A changed entry (labels, URL...) of a registered stream."""
        with self._lock:
            view = self.streams.get(config.id)
            if view is not None:
                view.config = config

    def configs(self) -> dict[str, StreamConfig]:
        with self._lock:
            return {sid: v.config for sid, v in self.streams.items()}

    def worker(self, worker_id: int) -> WorkerView:
        with self._lock:
            view = self.workers.get(worker_id)
            if view is None:
                view = self.workers[worker_id] = WorkerView(worker_id)
            return view

    # ---- events --------------------------------------------------------------------
    def apply(self, msg: object) -> None:
        with self._lock:
            if isinstance(msg, IngestHeartbeat):
                self._on_heartbeat(msg)
            elif isinstance(msg, StateChanged):
                view = self.streams.get(msg.stream_id)
                if view is not None:
                    view.state, view.state_since = msg.target, msg.at
                    view.history.append(msg)
            elif isinstance(msg, OutputStats):
                self.outputs.apply(msg)
            elif isinstance(msg, WorkerReady):
                w = self.workers.setdefault(msg.worker_id, WorkerView(msg.worker_id))
                w.state, w.backend, w.device, w.error = (
                    "ready",
                    msg.info.backend,
                    msg.info.device,
                    None,
                )
            elif isinstance(msg, WorkerFailed):
                w = self.workers.setdefault(msg.worker_id, WorkerView(msg.worker_id))
                w.state, w.error = "failed", msg.error

    def _on_heartbeat(self, beat: IngestHeartbeat) -> None:
        for stats in beat.streams:
            view = self.streams.get(stats.stream_id)
            if view is None:
                continue
            view.stats = stats
            if view.last_frames is not None:
                t0, n0 = view.last_frames
                if beat.ts > t0 and stats.frames >= n0:  # a restarted ingest counts from 0
                    instant = (stats.frames - n0) / (beat.ts - t0)
                    view.fps = instant if view.fps == 0 else 0.7 * view.fps + 0.3 * instant
            view.last_frames = (beat.ts, stats.frames)

    def demand(self) -> dict[str, float | None]:
        """Per streaming stream, the frames per second it would send unlimited (its measured
        source rate; None while unknown)."""
        with self._lock:
            return {
                sid: v.stats.source_fps if v.stats else None
                for sid, v in self.streams.items()
                if v.state is StreamState.STREAMING
            }

    def lags(self) -> dict[str, float]:
        """The streaming streams their ingest reports *behind* real time (past the lag
        limit), and how far behind they are read."""
        with self._lock:
            return {
                sid: v.stats.lag_s
                for sid, v in self.streams.items()
                if v.state is StreamState.STREAMING
                and v.stats is not None
                and v.stats.behind
                and v.stats.lag_s is not None
            }

    def ingest_restarted(self, stream_ids: list[str]) -> None:
        """The streams' ingest process died: its last counts become a base the new process's
        counts (from zero) add to, so no counter goes backwards."""
        with self._lock:
            for sid in stream_ids:
                view = self.streams.get(sid)
                if view is None or view.stats is None:
                    continue
                s = view.stats
                view.base.update(
                    frames=s.frames,
                    backpressure=s.drops_backpressure,
                    skipped_fps_cap=s.skipped_fps_cap,
                    skipped_analysis=s.skipped_analysis,
                    decode_errors=s.decode_errors,
                    reconnects=s.reconnects,
                )
                view.base_last_seq = max(view.base_last_seq, s.last_seq)
                view.stats, view.last_frames = None, None

    def last_seq(self, stream_id: str) -> int:
        """The last seq any ingest process reported for the stream (-1: none yet)."""
        with self._lock:
            view = self.streams.get(stream_id)
            if view is None:
                return -1
            return max(view.stats.last_seq if view.stats else -1, view.base_last_seq)

    def state(self, stream_id: str) -> StreamState:
        with self._lock:
            view = self.streams.get(stream_id)
            return view.state if view else StreamState.STOPPED

    def worker_down(self, worker_id: int, failed: bool, restarts: int) -> None:
        """A worker process ended: ``failed`` (its engine cannot load) or restarting."""
        with self._lock:
            view = self.workers.setdefault(worker_id, WorkerView(worker_id))
            view.state = "failed" if failed else "restarting"
            view.restarts = restarts

    def workers_starting(self) -> bool:
        """Some worker is loading its engine (failed ones never will: they do not count)."""
        with self._lock:
            return any(w.state in ("starting", "restarting") for w in self.workers.values())

    def worker_states(self) -> list[tuple[str, str | None]]:
        with self._lock:
            return [(w.state, w.error) for w in self.workers.values()]

    def final_states(self, stream_ids: set[str]) -> bool:
        final = (StreamState.STOPPED, StreamState.FAILED)
        with self._lock:
            return all(v.state in final for sid, v in self.streams.items() if sid in stream_ids)

    def transitions(self, stream_id: str) -> list[StateChanged]:
        with self._lock:
            view = self.streams.get(stream_id)
            return list(view.history) if view else []

    # ---- snapshots -----------------------------------------------------------------
    def snapshot(
        self,
        ledger: Mapping[str, LedgerSnapshot],
        loads: Mapping[int, WorkerLoadView],
        violations: int = 0,
    ) -> PipelineStatus:
        with self._lock:
            streams = tuple(
                self._stream_status(v, ledger.get(sid)) for sid, v in self.streams.items()
            )
            workers = tuple(
                self._worker_status(w, loads.get(i)) for i, w in sorted(self.workers.items())
            )
            out = self.outputs.combined()
            publish = out.publish
        return PipelineStatus(
            streams=streams,
            workers=workers,
            redis_connected=out.connected,
            redis_error=out.last_error,
            redis_pending=out.pending,
            model_id=self.model_id,
            uptime_s=time.time() - self.started_at,
            ledger_violations=violations,
            publish=publish,
        )

    def _stream_status(self, view: StreamView, ledger: LedgerSnapshot | None) -> StreamStatus:
        """Every part of the identity is measured where it happens, none is the remainder:
        in flight = in transit to the scheduler + in the ledger + handed to the output stage
        and not resolved there yet.  A part below zero is counted twice somewhere: it shows
        as ``unaccounted`` instead of being absorbed."""
        stats, sid = view.stats, view.config.id
        led = ledger or LedgerSnapshot(0, 0, {}, 0)
        drops: Counter[str] = Counter(led.drops)
        base = view.base
        backpressure = base["backpressure"] + (stats.drops_backpressure if stats else 0)
        if backpressure:
            drops["backpressure"] = backpressure
        published, out_drops = self._output_totals(sid)
        origin_published, origin_drops = self._origin.get(sid, (0, Counter()))
        published -= origin_published
        out_drops.subtract(origin_drops)
        key = (sid, view.generation)
        fenced = self.outputs.fenced(key)
        if fenced:
            out_drops["fenced"] += fenced
        drops.update(+out_drops)
        announced = max(base["frames"] + (stats.frames if stats else 0), led.announced)
        frames = announced + backpressure
        parts = (
            announced - led.announced,  # announced by ingest, not yet seen by the scheduler
            led.in_flight,
            led.inferred + led.abandoned - published - sum(out_drops.values()),  # at output
        )
        in_flight = sum(p for p in parts if p > 0)
        unaccounted = frames - published - sum(drops.values()) - in_flight
        return StreamStatus(
            stream_id=sid,
            url=view.config.safe_url,
            labels=dict(view.config.labels),
            state=view.state,
            state_since=view.state_since,
            fps=round(view.fps, 2),
            frames=frames,
            published=published,
            skipped_fps_cap=base["skipped_fps_cap"] + (stats.skipped_fps_cap if stats else 0),
            drops=dict(drops),
            decode_errors=base["decode_errors"] + (stats.decode_errors if stats else 0),
            reconnects=base["reconnects"] + (stats.reconnects if stats else 0),
            last_error=stats.last_error if stats else None,
            last_frame_ts=stats.last_frame_ts if stats else None,
            width=stats.width if stats else None,
            height=stats.height if stats else None,
            decode=view.decode,
            in_flight=in_flight,
            unaccounted=unaccounted,
            analysis_fps=stats.analysis_fps if stats else 0.0,
            decode_mode=stats.decode_mode if stats else "all",
            skipped_analysis=base["skipped_analysis"] + (stats.skipped_analysis if stats else 0),
            target_fps=stats.target_fps if stats else None,
            lag_s=stats.lag_s if stats else None,
            source_fps=stats.source_fps if stats else None,
            latency=self.outputs.latency(sid),
        )

    @staticmethod
    def _worker_status(view: WorkerView, load: WorkerLoadView | None) -> WorkerStatus:
        return WorkerStatus(
            worker_id=view.worker_id,
            state=view.state,
            backend=view.backend,
            device=view.device,
            batches=load.batches if load else 0,
            frames=load.frames if load else 0,
            inflight=load.inflight if load else 0,
            restarts=view.restarts,
            error=view.error,
            placement=view.placement,
            batch_size=load.batch_size if load else None,
            inference_ms=load.inference_ms if load else None,
        )


def redis_status(
    status: PipelineStatus, prefix: str, node_id: str | None = None
) -> tuple[dict[str, dict[str, str]], list[str]]:
    """The status hashes to write (``{key: fields}``) and the members of the streams set;
    a fleet node's (``node_id``) worker hashes are its own (``<prefix>:worker:<node>:<n>``)."""
    hashes = {status_key(prefix, s.stream_id): s.redis_fields() for s in status.streams}
    for w in status.workers:
        hashes[worker_key(prefix, w.worker_id, node_id)] = w.redis_fields()
    hashes[pipeline_key(prefix)] = status.redis_fields()
    return hashes, [s.stream_id for s in status.streams]


class RedisStatusWriter:
    """Writes the board's snapshot to Redis every ``status_interval_s`` from a thread;
    an unreachable Redis is retried with backoff and never raises into the pipeline."""

    def __init__(
        self,
        config: RedisConfig,
        url: str,
        snapshot: Callable[[], PipelineStatus],
        shared: bool = False,
        node_id: str | None = None,
    ) -> None:
        """``shared``: other processes (fleet nodes) list their streams in the same set, so
        this one only adds its own and deletes no status hash (a stream it gave up is now
        another node's; the fleet removes the streams no longer registered from the set and
        their hashes, :mod:`visionflow.fleet.node`).  ``node_id``: a fleet node's worker
        hashes are keyed by it (the nodes' workers are numbered alike)."""
        self.config, self.snapshot, self.shared = config, snapshot, shared
        self.node_id = node_id
        self.safe_url = redact_url(url)
        self._client = connect(
            url,
            config,
            socket_timeout=config.socket_timeout_s,
            socket_connect_timeout=config.socket_timeout_s,
        )
        self._stop = threading.Event()
        self._backoff = Backoff(0.2, 5.0, 2.0, 0.5)
        self._written: set[str] = set()  # stream ids whose status hash this writer wrote
        self.thread = threading.Thread(target=self._run, name="status-writer", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        """Stop the thread and write the final snapshot (stopped states, final counts); a
        fleet node's worker hashes are deleted (it left the fleet)."""
        self._stop.set()
        self.thread.join(timeout=self.config.socket_timeout_s + 2)
        try:
            self.write(final=True)
        except (redis.RedisError, OSError) as exc:
            log.warning("redis %s: final status not written: %s", self.safe_url, explain(exc))
        self._client.close()

    def write(self, final: bool = False) -> None:
        """One snapshot to Redis in one transaction; ``final``: the last one (a fleet node's
        worker hashes are deleted instead)."""
        snapshot = self.snapshot()
        hashes, members = redis_status(snapshot, self.config.key_prefix, self.node_id)
        workers = {worker_key(self.config.key_prefix, w.worker_id, self.node_id)
                   for w in snapshot.workers} if self.node_id is not None else set()  # fmt: skip
        ttl_ms = int(WORKER_TTL_INTERVALS * self.config.status_interval_s * 1000)
        pipe = self._client.pipeline(transaction=True)  # the streams set is never seen empty
        for key, fields in hashes.items():
            if key in workers and final:
                pipe.delete(key)
                continue
            pipe.hset(key, mapping=dict(fields))  # type: ignore[arg-type]
            if key in workers:
                pipe.pexpire(key, max(ttl_ms, 1000))
        set_key = streams_key(self.config.key_prefix)
        if not self.shared:
            pipe.delete(set_key)
        if members:
            pipe.sadd(set_key, *members)
        # streams removed since: their hashes go too, unless shared -- a stream this node
        # gave up is another node's now, and so is its hash (the fleet deletes the hashes
        # of streams no longer registered)
        gone = set() if self.shared else self._written - set(members)
        for sid in gone:
            pipe.delete(status_key(self.config.key_prefix, sid))
        pipe.execute()
        self._written = set(members)

    def _run(self) -> None:
        error: str | None = None  # the last one logged: an outage is logged once
        while not self._stop.wait(self.config.status_interval_s):
            try:
                self.write()
                self._backoff.reset()
                error = None
            except (redis.RedisError, OSError) as exc:
                if explain(exc) != error and fatal(exc):  # an outage is the sink's to report
                    log.error("redis %s: status not written: %s", self.safe_url, explain(exc))
                error = explain(exc)
                self._stop.wait(self._backoff.next_delay())
