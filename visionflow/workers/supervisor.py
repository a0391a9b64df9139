"""The supervisor: starts and watches every process, batches, dispatches, publishes.

::

    ingest 0 ─┐ FrameRef (pool, slot)      ┌─▶ inference worker 0 ─┐
    ingest 1 ─┼───────▶ inbox ─▶ batcher ──┤                       ├─▶ inbox ─▶ reorder ─▶ Redis
    ...      ─┘ heartbeats, state changes  └─▶ inference worker N ─┘  BatchResult   publisher

One thread runs the scheduler loop over a single inbox queue; the Redis publisher has its own
thread.  Processes that die are restarted: an ingest process that stops sending heartbeats
is killed and started again; an inference worker's in-flight batches go to other workers.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import queue
import threading
import time
import uuid
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from visionflow.config import AppConfig
from visionflow.errors import ConfigError, EngineError
from visionflow.models import ResolvedModel, resolve_model
from visionflow.pipeline.batcher import DynamicBatcher
from visionflow.pipeline.dispatch import Dispatcher
from visionflow.pipeline.framepool import PoolCache
from visionflow.pipeline.frames import BatchRequest, BatchResult, FrameRef
from visionflow.pipeline.ordering import ReorderBuffer
from visionflow.schema import status_key, streams_key, worker_key
from visionflow.streams.config import StreamConfig
from visionflow.streams.state import StreamState
from visionflow.workers.inference import WorkerSpec, inference_main
from visionflow.workers.ingest import HEARTBEAT_S, IngestPlan, ingest_main
from visionflow.workers.messages import (
    AddStream,
    IngestHeartbeat,
    PoolClosed,
    RemoveStream,
    StateChanged,
    StreamStats,
    WorkerFailed,
    WorkerReady,
)
from visionflow.workers.plan import plan_ingest, resolve_decode
from visionflow.workers.publisher import RedisPublisher
from visionflow.workers.status import PipelineStatus, StreamStatus, WorkerStatus

log = logging.getLogger("visionflow.supervisor")
_CTX = mp.get_context("spawn")


@dataclass
class _StreamView:
    config: StreamConfig
    process: int
    stats: StreamStats | None = None
    state: StreamState = StreamState.STOPPED
    state_since: float = field(default_factory=time.time)
    drops: Counter[str] = field(default_factory=Counter)
    fps: float = 0.0
    last_frames: tuple[float, int] | None = None
    last_reason: str = ""
    history: deque[StateChanged] = field(default_factory=lambda: deque(maxlen=64))


@dataclass
class _IngestProc:
    index: int
    process: Any
    commands: Any
    streams: list[str]
    last_beat: float
    plan: IngestPlan
    restarts: int = 0
    pools: set[str] = field(default_factory=set)
    started: float = field(default_factory=time.monotonic)
    restarting: bool = False


@dataclass
class _Worker:
    spec: WorkerSpec
    process: Any
    tasks: Any
    state: str = "starting"
    error: str | None = None
    backend: str = ""
    device: str = ""
    restarts: int = 0
    ready_at: float | None = None
    started: float = field(default_factory=time.monotonic)


def restart_delay(started: float, restarts: int) -> float:
    """Seconds to wait before restarting a process that died.

    A process that ran a while is restarted at once (after 0.5 s); one that keeps dying
    soon after starting (a bad model, a broken library) backs off up to 30 s, so a crash loop
    does not eat the CPU the healthy processes need.
    """
    lived = time.monotonic() - started
    if lived > 30:
        return 0.5
    return float(min(30.0, 0.5 * 2 ** min(restarts, 6)))


class Pipeline:
    """A running visionflow deployment."""

    def __init__(
        self,
        config: AppConfig,
        redis_url: str,
        *,
        log_level: int = logging.INFO,
        worker_env: list[dict[str, str]] | None = None,
    ) -> None:
        self.config = config
        self.redis_url = redis_url
        self.log_level = log_level
        self.model: ResolvedModel = resolve_model(config)
        self.run_id = uuid.uuid4().hex[:8]
        self.batcher = DynamicBatcher(
            config.batching.max_batch,
            config.batching.max_delay_ms / 1000,
            config.batching.buffer_per_stream,
        )
        self.dispatcher = Dispatcher()
        self.reorder = ReorderBuffer()
        self.publisher = RedisPublisher(config.redis, redis_url, self.model.model_id)
        self.publisher.set_status_source(self._redis_status)
        width, height = self.model.input_size
        self.pools = PoolCache(height, width, config.workers.slots_per_stream)
        self._inbox: Any = _CTX.Queue()
        self._streams: dict[str, _StreamView] = {}
        self._ingest: dict[int, _IngestProc] = {}
        self._workers: dict[int, _Worker] = {}
        if worker_env is None and config.engine.backend != "onnxruntime":
            from visionflow.gpu.placement import gpu_worker_envs

            worker_env = gpu_worker_envs(config.workers.workers_per_gpu)
        self._worker_env = worker_env or []
        self._batch_ids = 0
        self._lock = threading.RLock()
        self._stop = threading.Event()
        self._stopping = threading.Event()
        self._pending: list[tuple[float, Callable[[], None]]] = []
        self._thread = threading.Thread(target=self._loop, name="scheduler", daemon=True)
        self.started_at = time.time()

    # ---- start / stop ------------------------------------------------------------
    def start(self) -> None:
        """Start workers, ingest processes, the publisher and the scheduler thread."""
        for worker_id in range(self._worker_count()):
            self._start_worker(worker_id)
        streams = [s for s in self.config.streams if s.enabled]
        for s in self.config.streams:
            if not s.enabled:
                self._streams[s.id] = _StreamView(s, -1)
        self.decode = resolve_decode(self.config)
        for index, group in enumerate(plan_ingest(self.config, streams, self.decode)):
            for stream in group.streams:
                self._streams[stream.id] = _StreamView(stream, index)
            self._start_ingest(index, list(group.streams), group.plan)
        self.publisher.start()
        self._thread.start()

    def _worker_count(self) -> int:
        """One per placement for GPU backends, ``inference_workers`` otherwise."""
        return len(self._worker_env) or self.config.workers.inference_workers

    def wait_ready(self, timeout: float = 60.0) -> None:
        """Block until every inference worker loaded its engine (raises on failure)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                states = [w.state for w in self._workers.values()]
                errors = [w.error for w in self._workers.values() if w.state == "failed"]
            if errors and all(s == "failed" for s in states):
                raise EngineError(f"no inference worker could start: {errors[0]}")
            if states and all(s == "ready" for s in states):
                return
            time.sleep(0.05)
        raise EngineError(f"inference workers not ready after {timeout:.0f}s")

    def stop(self, flush_timeout: float = 5.0) -> None:
        """Stop reading, let in-flight batches finish, flush Redis, end every process."""
        self._stopping.set()
        for proc in self._ingest.values():
            proc.commands.put(None)
        deadline = time.monotonic() + self.config.source.read_timeout_s + 3
        for proc in self._ingest.values():
            proc.process.join(timeout=max(0.1, deadline - time.monotonic()))
            if proc.process.is_alive():
                proc.process.kill()
        drain_until = time.monotonic() + flush_timeout
        while time.monotonic() < drain_until and any(
            w.inflight for w in self.dispatcher.workers.values()
        ):
            time.sleep(0.02)
        self._stop.set()
        self._thread.join(timeout=5)
        for frame in self.batcher.drain():
            self.pools.release(frame.pool, frame.slot)
        for worker in self._workers.values():
            worker.tasks.put(None)
        for worker in self._workers.values():
            worker.process.join(timeout=5)
            if worker.process.is_alive():
                worker.process.kill()
        self.publisher.stop(flush_timeout)
        self.pools.close()
        self._unlink_pools([name for p in self._ingest.values() for name in p.pools])

    # ---- process management ------------------------------------------------------
    def _start_worker(self, worker_id: int, restarts: int = 0) -> None:
        env = self._worker_env[worker_id] if worker_id < len(self._worker_env) else {}
        spec = WorkerSpec(
            worker_id=worker_id,
            engine=self.config.engine,
            model_path=self.model.path,
            class_names=self.model.class_names,
            input_size=self.model.input_size,
            max_batch=self.config.batching.max_batch,
            slots=self.config.workers.slots_per_stream,
            conf_threshold=self.model.conf_threshold,
            iou_threshold=self.config.model.iou_threshold,
            max_detections=self.config.model.max_detections,
            env=tuple(env.items()),
        )
        tasks = _CTX.Queue()
        process = _CTX.Process(
            target=inference_main,
            args=(spec, tasks, self._inbox, self.log_level),
            name=f"inference-{worker_id}",
            daemon=True,
        )
        process.start()
        self._workers[worker_id] = _Worker(spec, process, tasks, restarts=restarts)
        if worker_id not in self.dispatcher.workers:
            self.dispatcher.add_worker(worker_id, self.config.batching.max_inflight_per_worker)
        self.dispatcher.workers[worker_id].alive = False  # until WorkerReady

    def _start_ingest(
        self, index: int, streams: list[StreamConfig], plan: IngestPlan, restarts: int = 0
    ) -> None:
        commands = _CTX.Queue()
        process = _CTX.Process(
            target=ingest_main,
            args=(
                index,
                f"{self.run_id}r{restarts}",
                streams,
                self.config.source,
                self.model.input_size,
                self.config.workers.slots_per_stream,
                self._inbox,
                commands,
                self.log_level,
                plan,
            ),
            name=f"ingest-{index}",
            daemon=True,
        )
        process.start()
        self._ingest[index] = _IngestProc(
            index, process, commands, [s.id for s in streams], time.monotonic() + 10, plan, restarts
        )

    def _unlink_pools(self, names: list[str]) -> None:
        from multiprocessing import shared_memory

        for name in names:
            try:
                shm = shared_memory.SharedMemory(name=name)
            except FileNotFoundError:
                continue
            shm.close()
            shm.unlink()

    # ---- runtime registration ----------------------------------------------------
    def add_stream(self, stream: StreamConfig) -> None:
        """Start reading a new stream (on the ingest process with the fewest streams)."""
        with self._lock:
            if stream.id in self._streams and self._streams[stream.id].process >= 0:
                raise ConfigError(f"stream {stream.id!r} is already registered")
            proc = min(self._ingest.values(), key=lambda p: (len(p.streams), p.index))
            proc.streams.append(stream.id)
            self._streams[stream.id] = _StreamView(stream, proc.index)
        proc.commands.put(AddStream(stream))

    def remove_stream(self, stream_id: str) -> None:
        """Stop reading a stream and forget it."""
        with self._lock:
            view = self._streams.pop(stream_id, None)
            if view is None:
                raise ConfigError(f"stream {stream_id!r} is not registered")
            if view.process >= 0:
                proc = self._ingest[view.process]
                proc.streams.remove(stream_id)
                proc.commands.put(RemoveStream(stream_id))

    # ---- the scheduler loop ------------------------------------------------------
    def _loop(self) -> None:
        next_check = 0.0
        while not self._stop.is_set():
            now = time.monotonic()
            due = self.batcher.time_until_due(now)
            timeout = 0.05 if due is None or not self.dispatcher.has_capacity() else due
            try:
                self._handle(self._inbox.get(timeout=min(timeout, 0.05)))
                for _ in range(2000):
                    self._handle(self._inbox.get_nowait())
            except queue.Empty:
                pass
            except Exception:  # never let one odd message stop the scheduler
                log.exception("scheduler: message handling failed")
            self._dispatch_due()
            if time.monotonic() >= next_check:
                self._check_processes()
                next_check = time.monotonic() + HEARTBEAT_S

    def _handle(self, msg: object) -> None:
        with self._lock:
            if isinstance(msg, FrameRef):
                self._on_frame(msg)
            elif isinstance(msg, BatchResult):
                self._on_result(msg)
            elif isinstance(msg, IngestHeartbeat):
                self._on_heartbeat(msg)
            elif isinstance(msg, StateChanged):
                view = self._streams.get(msg.stream_id)
                if view is not None:
                    view.state, view.state_since, view.last_reason = msg.target, msg.at, msg.reason
                    view.history.append(msg)
            elif isinstance(msg, PoolClosed):
                self.pools.forget(msg.pool)
            elif isinstance(msg, WorkerReady):
                self._on_worker_ready(msg)
            elif isinstance(msg, WorkerFailed):
                worker = self._workers[msg.worker_id]
                worker.state, worker.error = "failed", msg.error
                log.error("inference worker %d failed to start: %s", msg.worker_id, msg.error)

    def _on_frame(self, frame: FrameRef) -> None:
        view = self._streams.get(frame.stream_id)
        proc = self._ingest.get(view.process) if view else None
        if proc is not None:
            proc.pools.add(frame.pool)
        if view is None:
            self.pools.release(frame.pool, frame.slot)
            return
        dropped = self.batcher.add(frame, time.monotonic())
        if dropped is not None:
            self.pools.release(dropped.pool, dropped.slot)
            view.drops["inference_behind"] += 1

    def _dispatch_due(self) -> None:
        with self._lock:
            while self.batcher.time_until_due(time.monotonic()) == 0:
                worker = self.dispatcher.pick()
                if worker is None:
                    return
                frames = self.batcher.take()
                if not frames:
                    return
                self._send(worker.worker_id, frames)

    def _send(self, worker_id: int, frames: tuple[FrameRef, ...]) -> None:
        self._batch_ids += 1
        request = BatchRequest(self._batch_ids, frames, time.time())
        self.dispatcher.sent(self.dispatcher.workers[worker_id], request)
        self.reorder.sent(frames)
        self._workers[worker_id].tasks.put(request)

    def _on_result(self, result: BatchResult) -> None:
        request = self.dispatcher.completed(
            result.batch_id,
            (result.results[0].inference_ms / len(result.results)) if result.results else None,
        )
        if request is None:
            return  # a batch already re-sent after its worker died
        for frame in request.frames:
            self.pools.release(frame.pool, frame.slot)
        if result.error is not None:
            for frame in request.frames:
                if frame.stream_id in self._streams:
                    self._streams[frame.stream_id].drops["inference_error"] += 1
        ready = self.reorder.resolve(request.frames, result.results)
        if ready:
            self.publisher.submit([r for r in ready if r.frame.stream_id in self._streams])

    def _on_heartbeat(self, beat: IngestHeartbeat) -> None:
        proc = self._ingest.get(beat.process)
        if proc is not None:
            proc.last_beat = time.monotonic()
        for stats in beat.streams:
            view = self._streams.get(stats.stream_id)
            if view is None:
                continue
            view.stats = stats
            if view.last_frames is not None:
                t0, n0 = view.last_frames
                if beat.ts > t0:
                    instant = (stats.frames - n0) / (beat.ts - t0)
                    view.fps = instant if view.fps == 0 else 0.7 * view.fps + 0.3 * instant
            view.last_frames = (beat.ts, stats.frames)

    def _on_worker_ready(self, msg: WorkerReady) -> None:
        worker = self._workers[msg.worker_id]
        worker.state, worker.backend, worker.device = "ready", msg.info.backend, msg.info.device
        worker.ready_at = time.time()
        self.dispatcher.revive(msg.worker_id)
        log.info(
            "inference worker %d ready (%s on %s)", msg.worker_id, msg.info.backend, msg.info.device
        )

    def _check_processes(self) -> None:
        if self._stopping.is_set():
            return
        with self._lock:
            self._run_pending()
            for worker_id, worker in list(self._workers.items()):
                if worker.state not in ("failed", "restarting") and not worker.process.is_alive():
                    self._recover_worker(worker_id, worker)
            timeout = max(10.0, self.config.source.read_timeout_s * 2 + 2)
            for index, proc in list(self._ingest.items()):
                silent = time.monotonic() - proc.last_beat
                if proc.restarting:
                    continue
                if not proc.process.is_alive() or silent > timeout:
                    self._restart_ingest(index, proc, silent)

    def _recover_worker(self, worker_id: int, worker: _Worker) -> None:
        lost = self.dispatcher.fail_worker(worker_id)
        log.error(
            "inference worker %d died (exit %s); re-sending %d batch(es)",
            worker_id,
            worker.process.exitcode,
            len(lost),
        )
        for request in lost:
            target = self.dispatcher.pick()
            if target is None:
                self.reorder.resolve(request.frames)
                for frame in request.frames:
                    self.pools.release(frame.pool, frame.slot)
                    if frame.stream_id in self._streams:
                        self._streams[frame.stream_id].drops["worker_lost"] += 1
                continue
            self._batch_ids += 1
            resent = BatchRequest(self._batch_ids, request.frames, time.time())
            self.dispatcher.sent(target, resent)
            self._workers[target.worker_id].tasks.put(resent)
        worker.state = "restarting"
        self._later(
            restart_delay(worker.started, worker.restarts),
            lambda: self._start_worker(worker_id, worker.restarts + 1),
        )

    def _restart_ingest(self, index: int, proc: _IngestProc, silent: float) -> None:
        reason = "exited" if not proc.process.is_alive() else f"silent for {silent:.0f}s"
        log.error("ingest process %d %s; restarting it", index, reason)
        proc.process.kill()
        proc.process.join(timeout=2)
        for view in self._streams.values():
            if view.process == index:
                for frame in self.batcher.remove_stream(view.config.id):
                    self.pools.release(frame.pool, frame.slot)
                view.state, view.last_reason = StreamState.CONNECTING, f"ingest process {reason}"
        for name in proc.pools:
            self.pools.forget(name)
        self._unlink_pools(sorted(proc.pools))
        streams = [self._streams[s].config for s in proc.streams if s in self._streams]
        proc.restarting = True
        self._later(
            restart_delay(proc.started, proc.restarts),
            lambda: self._start_ingest(index, streams, proc.plan, proc.restarts + 1),
        )

    def _later(self, delay: float, action: Callable[[], None]) -> None:
        self._pending.append((time.monotonic() + delay, action))

    def _run_pending(self) -> None:
        now = time.monotonic()
        due = [(t, a) for t, a in self._pending if t <= now]
        self._pending = [(t, a) for t, a in self._pending if t > now]
        for _, action in due:
            action()

    # ---- status ------------------------------------------------------------------
    def transitions(self, stream_id: str) -> list[StateChanged]:
        """The stream's recent state changes, oldest first."""
        with self._lock:
            view = self._streams.get(stream_id)
            return list(view.history) if view else []

    def status(self) -> PipelineStatus:
        """A consistent snapshot for the status table, Redis and the API."""
        with self._lock:
            streams = [self._stream_status(v) for v in self._streams.values()]
            workers = [
                WorkerStatus(
                    worker_id=i,
                    state=self._worker_state(w),
                    backend=w.backend,
                    device=w.device,
                    batches=self.dispatcher.workers[i].batches,
                    frames=self.dispatcher.workers[i].frames,
                    inflight=len(self.dispatcher.workers[i].inflight),
                    restarts=w.restarts,
                    error=w.error,
                )
                for i, w in sorted(self._workers.items())
            ]
        return PipelineStatus(
            streams=tuple(streams),
            workers=tuple(workers),
            redis_connected=self.publisher.connected,
            redis_error=self.publisher.last_error,
            redis_pending=self.publisher.pending,
            model_id=self.model.model_id,
            uptime_s=time.time() - self.started_at,
        )

    def _worker_state(self, worker: _Worker) -> str:
        if worker.process.is_alive() or worker.state in ("failed", "restarting"):
            return worker.state
        return "stopped" if self._stopping.is_set() else "dead"

    def _stream_status(self, view: _StreamView) -> StreamStatus:
        stats = view.stats
        drops = Counter(view.drops)
        if stats is not None and stats.drops_backpressure:
            drops["backpressure"] = stats.drops_backpressure
        sid = view.config.id
        if self.publisher.dropped[sid]:
            drops["redis_unavailable"] = self.publisher.dropped[sid]
        return StreamStatus(
            stream_id=sid,
            url=view.config.safe_url,
            labels=dict(view.config.labels),
            state=view.state,
            state_since=view.state_since,
            fps=round(view.fps, 2),
            frames=stats.frames if stats else 0,
            published=self.publisher.published[sid],
            skipped_fps_cap=stats.skipped_fps_cap if stats else 0,
            drops=dict(drops),
            decode_errors=stats.decode_errors if stats else 0,
            reconnects=stats.reconnects if stats else 0,
            last_error=stats.last_error if stats else None,
            last_frame_ts=stats.last_frame_ts if stats else None,
            width=stats.width if stats else None,
            height=stats.height if stats else None,
            decode=self._decode_label(view),
        )

    def _decode_label(self, view: _StreamView) -> str:
        proc = self._ingest.get(view.process)
        if proc is None or proc.plan.decode == "cpu":
            return "cpu"
        return f"{proc.plan.decode}/{'device' if proc.plan.device_frames else 'host'}"

    def _redis_status(self) -> dict[str, dict[str, str]]:
        status = self.status()
        prefix = self.config.redis.key_prefix
        out: dict[str, dict[str, str]] = {
            status_key(prefix, s.stream_id): s.redis_fields() for s in status.streams
        }
        out[streams_key(prefix)] = {s.stream_id: "" for s in status.streams}
        for w in status.workers:
            out[worker_key(prefix, w.worker_id)] = w.redis_fields()
        return out
