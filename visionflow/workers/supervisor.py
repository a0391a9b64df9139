"""The :class:`Pipeline` facade: start, stop, add and remove streams, status.

::

    ingest 0 ─┐ FrameBatch (many FrameRefs)           ┌─▶ inference 0 ─┐ BatchResult
    ingest 1 ─┼───▶ scheduler queue ─▶ scheduler ─────┤                ├────▶ output process
    ...      ─┘          ▲ BatchDone (one per batch)  └─▶ inference N ─┘  reorder → processors
       │                 └────────────────────────────────────┘           → sinks (Redis)
       └─ heartbeats, state changes ─▶ control queue ─▶ status board ─▶ CLI table, Redis status

Each job has its own part: :class:`~visionflow.workers.procs.ProcessGroup` (spawn, watch,
restart), :class:`~visionflow.workers.scheduling.SchedulerLoop` around the pure
:class:`~visionflow.pipeline.scheduler.Scheduler` (batcher, dispatcher, slot ledger),
:class:`~visionflow.workers.board.StatusBoard`, and the output stage
(:mod:`visionflow.workers.output`).  This class only wires them together.
"""

from __future__ import annotations

import functools
import itertools
import logging
import multiprocessing as mp
import queue
import threading
import time
import uuid
from collections import Counter, deque
from collections.abc import Mapping
from typing import Any

from visionflow.config import AppConfig, RedisConfig
from visionflow.errors import ConfigError, EngineError
from visionflow.models import ResolvedModel, resolve_model
from visionflow.pipeline.framepool import PoolCache
from visionflow.pipeline.frames import BatchRequest
from visionflow.pipeline.scheduler import Scheduler, Send
from visionflow.streams.config import StreamConfig
from visionflow.streams.state import StreamState
from visionflow.workers.board import RedisStatusWriter, StatusBoard, WorkerLoadView
from visionflow.workers.channels import ResultsChannel
from visionflow.workers.fence import FenceBook, ForgetFence, SetFence
from visionflow.workers.governor import ShareGovernor
from visionflow.workers.heap import MAIN_COLLECT_EVERY, HeapTrimmer
from visionflow.workers.inference import (
    ENGINE_FAILED_EXIT,
    WorkerQueues,
    WorkerSpec,
    inference_main,
)
from visionflow.workers.ingest import IngestPlan, IngestQueues, IngestSpec, ingest_main
from visionflow.workers.latency import StageLatency, StreamLatency
from visionflow.workers.messages import (
    AddStream,
    AppearanceStreams,
    BatchAbandoned,
    IngestHeartbeat,
    OutputShards,
    OutputStats,
    PoolClosed,
    RemoveStream,
    SetAnalysisRates,
    StateChanged,
    StopReading,
    UpdateStream,
    WorkerFailed,
    WorkerReady,
)
from visionflow.workers.output import OutputSpec, SetTracking, output_main
from visionflow.workers.plan import (
    decode_plans,
    gpu_streams_per_process,
    place_added_stream,
    plan_ingest,
    resolve_decode,
    usable_cores,
)
from visionflow.workers.procs import Child, ProcessGroup
from visionflow.workers.scheduling import SchedulerLoop
from visionflow.workers.shards import (
    ShardMap,
    load_assignments,
    pending_spools,
    save_assignments,
    split,
    spool_shard,
)
from visionflow.workers.status import PipelineStatus

log = logging.getLogger("visionflow.supervisor")
# seq a restarted ingest process skips past the last one heard of: a heartbeat (every 0.5 s)
# can be up to 0.5 s stale, and a stream gives out at most 240 seq a second (the fps cap's
# limit), so this is more than the dead process can have used unheard
SEQ_MARGIN = 241
_CTX = mp.get_context("spawn")
# an output process sends its stats twice a second: silent this long, it is wedged
OUTPUT_SILENT_S = 30.0


def _worker_histograms(
    book: Mapping[str, StreamLatency], worker_id: int
) -> tuple[StageLatency | None, StageLatency | None]:
    """A worker's batch-size and inference-time histograms from the scheduler's batch book."""
    stages = dict(book.get(str(worker_id), ()))
    return stages.get("batch_size"), stages.get("inference_ms")


def _decode_label(plan: IngestPlan) -> str:
    """Decoder and where frames live, for status: "cpu", "nvdec/device", "dali/host"..."""
    if plan.decode == "cpu":
        return "cpu"
    return f"{plan.decode}/{'device' if plan.device_frames else 'host'}"


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
        self.config, self.redis_url, self.log_level = config, redis_url, log_level
        self.model: ResolvedModel = resolve_model(config)
        self.run_id = uuid.uuid4().hex[:8]
        b = config.batching
        self.scheduler = Scheduler(b.max_batch, b.max_delay_ms / 1000, b.buffer_per_stream)
        self.board = StatusBoard(self.model.model_id)
        width, height = self.model.input_size
        self.pools = PoolCache(height, width, config.workers.slots_per_stream)
        self.group = ProcessGroup()
        self._sched_q: Any = _CTX.Queue()
        self._control_q: Any = _CTX.Queue()
        self._output_qs: list[Any] = []  # one inbox per output process (set by start())
        self._shards = ShardMap(1)  # stream -> output process (set by start())
        self._channels: dict[int, list[ResultsChannel]] = {}  # worker id -> a pipe per shard
        self._retired_channels: deque[tuple[float, Any]] = deque()  # (when, replaced read end)
        self._channel_seq = 0
        self._tasks: dict[int, Any] = {}
        self._commands: dict[int, Any] = {}
        self._ingest_streams: dict[int, list[StreamConfig]] = {}
        self._ingest_plans: dict[int, IngestPlan] = {}
        self._stream_process: dict[str, int] = {}
        # one change of membership at a time: the reconciler thread adds/updates/removes while
        # the scheduler thread may respawn an ingest process from the same lists and queues
        self._membership = threading.RLock()
        self._tracking = {s.id: s.tracking for s in config.streams if s.tracking is not None}
        self._appearance = self._appearance_streams()  # the set the workers were last sent
        self._first_seq: dict[str, int] = {}  # streams added to start above a given seq
        # a fleet node's lease values, which the output stage fences its writes with
        self._fences = FenceBook() if config.fleet is not None else None
        # each registration of a stream has its own number (a lease value set before the
        # stream is added reserves the one its registration gets): the status board charges
        # a fenced drop to the registration it names
        self._generations = itertools.count(1)
        self._generation: dict[str, int] = {}
        self._worker_labels: list[str] = []
        if worker_env is None and config.engine.backend != "onnxruntime":
            from visionflow.gpu.placement import plan_gpu_workers

            placed = plan_gpu_workers(config.workers.workers_per_gpu, config.workers.gpus)
            worker_env = [p.env for p in placed]
            self._worker_labels = [p.label for p in placed]
        self._worker_env = worker_env or []
        self.loop = SchedulerLoop(
            self.scheduler, self._sched_q, self.pools, self._send, self._broadcast, self._tick
        )
        self.governor = ShareGovernor() if config.source.shed_load else None
        # the nodes of a fleet share the streams set; their worker hashes carry the node id
        node_id = config.fleet.resolved_node_id() if config.fleet is not None else None
        self.status_writer = RedisStatusWriter(
            config.redis, redis_url, self.status, node_id is not None, node_id
        )
        self._stop_board = threading.Event()
        self._board_thread = threading.Thread(target=self._board_loop, name="board", daemon=True)
        self.started_at = time.time()
        self.decode = "cpu"
        self._decode_plans: list[IngestPlan] = [IngestPlan()]  # set by start()

    # ---- start / stop ------------------------------------------------------------
    def start(self) -> None:
        """Start the output processes, workers, ingest processes and the threads."""
        shards = self.config.output.resolved_processes(self._worker_count(), usable_cores())
        self._output_qs = [_CTX.Queue() for _ in range(shards)]
        self._shards = self._shard_map(shards)
        for stream in self.config.streams:  # before the output processes read their share
            self._shards.assign(stream.id)
        self._save_shards()
        for shard in range(shards):
            self.group.add(
                _output_name(shard, shards),
                functools.partial(self._spawn_output, shard),
                self._output_exited,
                self._output_silent_s(),
                after_first_beat=True,
            )
        for worker_id in range(self._worker_count()):
            self._add_worker(worker_id)
        self.decode = resolve_decode(self.config)
        # disabled streams get a reader too, sitting in state 'disabled' until enabled
        self._decode_plans = decode_plans(self.config, self.decode)
        for index, group in enumerate(plan_ingest(self.config, self.config.streams, self.decode)):
            self._add_ingest(index, list(group.streams), group.plan)
        self._board_thread.start()
        self.loop.start()
        self.status_writer.start()

    def _worker_count(self) -> int:
        """One per placement for GPU backends, ``inference_workers`` otherwise."""
        return len(self._worker_env) or self.config.workers.inference_workers

    def wait_ready(self, timeout: float | None = None) -> None:
        """Block until every inference worker loaded its engine (raises on failure); by
        default as long as the engine may take to load (``load_timeout_s``: 60 s, longer for
        a ``torch-cuda`` engine that compiles)."""
        if timeout is None:
            timeout = self.config.engine.load_timeout_s()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            workers = self.board.worker_states()
            errors = [error for state, error in workers if state == "failed"]
            if workers and errors and len(errors) == len(workers):
                raise EngineError(f"no inference worker could start: {errors[0]}")
            if workers and all(state == "ready" for state, _ in workers):
                return
            time.sleep(0.05)
        raise EngineError(f"inference workers not ready after {timeout:.0f}s")

    def stop(self, flush_timeout: float = 5.0) -> None:
        """Stop reading, let waiting and in-flight batches finish, flush the output stage,
        write the final status, end every process."""
        self.group.stopping = True
        for commands in self._commands.values():
            commands.put(StopReading())  # frames decoded so far are still inferred
        self._await_readers_stopped(self.config.source.read_timeout_s + 3)
        self._drain_scheduler(flush_timeout)
        for tasks in self._tasks.values():  # the scheduler thread still takes BatchDone
            tasks.put(None)
        self._join("inference-", 5)
        for commands in self._commands.values():  # now the pools may go
            commands.put(None)
        self._join("ingest-", self.config.source.read_timeout_s + 3)
        self.loop.stop()
        self.loop.drain_inbox()
        self._abandon_the_rest()
        for inbox in self._output_qs:
            inbox.put(None)
        self._join("output", 2 * flush_timeout + self.config.redis.socket_timeout_s + 2)
        self._stop_board.set()
        self._board_thread.join(timeout=5)
        self._drain_control()
        self.status_writer.stop()
        self.pools.close()
        for conn in [
            *(c.conn for channels in self._channels.values() for c in channels),
            *(c for _, c in self._retired_channels),
        ]:
            conn.close()
        self._unlink_pools(sorted(self.loop.pool_owner))

    def _abandon_the_rest(self) -> None:
        """Shutdown after the deadline: waiting frames are dropped (``shutdown``); batches no
        worker finished are abandoned, so the output stage writes what it holds behind them."""
        with self.loop.lock:
            self.loop.free(self.scheduler.drain())
            for request in self.scheduler.all_inflight():
                self._abandon(request, "shutdown")
            self.loop.free(self.scheduler.abandon_all())

    def _await_readers_stopped(self, timeout: float) -> None:
        """Until every stream reports a final state (or ``timeout``)."""
        until = time.monotonic() + timeout
        while time.monotonic() < until and not self.board.final_states(set(self._stream_process)):
            time.sleep(0.02)

    def _drain_scheduler(self, timeout: float) -> None:
        """Wait until ingest's last frames are batched and every batch came back."""
        until = time.monotonic() + timeout
        while time.monotonic() < until:
            with self.loop.lock:
                idle = self.scheduler.batcher.waiting == 0 and self.scheduler.inflight_batches == 0
            if idle and self._sched_q.empty():
                return
            time.sleep(0.02)

    def _join(self, prefix: str, timeout: float) -> None:
        until = time.monotonic() + timeout
        for proc in self.group.processes(prefix):
            proc.join(timeout=max(0.1, until - time.monotonic()))
            if proc.is_alive():
                proc.kill()

    # ---- children ----------------------------------------------------------------
    def _shard_map(self, shards: int) -> ShardMap:
        """The last run's assignments when it had as many output processes (its spooled
        entries are then replayed by the process that writes their stream); warnings for
        spooled entries that may not be."""
        base = self.config.redis.spool_path()
        saved = load_assignments(base, shards)
        for folder in pending_spools(base):
            shard = spool_shard(folder, base) if base is not None else 0
            if shard >= shards:
                log.warning(
                    "spool %s holds entries of output process %d, which this run does not "
                    "have (output.processes is %d): they are written by a run with %d or more",
                    folder, shard, shards, shard + 1,
                )  # fmt: skip
            elif shards > 1 and not saved:
                log.warning(
                    "spool %s holds entries spooled with another number of output processes: "
                    "those of a stream another process writes now may be written after newer "
                    "ones (under new ids)",
                    folder,
                )
        return ShardMap(shards, saved)

    def _save_shards(self) -> None:
        try:
            save_assignments(self.config.redis.spool_path(), self._shards)
        except OSError as exc:
            log.warning("output process assignments not saved beside the spool: %s", exc)

    def _abandon(self, request: BatchRequest, reason: str = "worker_lost") -> None:
        """Tell every output process that no worker will deliver ``request`` (each its own
        streams' frames: an empty part too, so its reorder buffer stops waiting for it)."""
        counts = Counter(f.stream_id for f in request.frames)
        parts = split(counts.items(), lambda item: self._shards(item[0]), len(self._output_qs))
        for inbox, part in zip(self._output_qs, parts, strict=True):
            inbox.put(BatchAbandoned(request.batch_id, tuple(part), reason))

    def _to_output(self, stream_id: str, message: object) -> None:
        """A message about one stream, to the output process that writes it."""
        self._output_qs[self._shards(stream_id)].put(message)

    def _spawn_output(self, shard: int, restarts: int = 0) -> Any:
        with self._membership:  # the tracking and fence sets do not change meanwhile
            return self._spawn_output_locked(shard)

    def _spawn_output_locked(self, shard: int) -> Any:
        with self.loop.lock:
            inflight = [b for w in self.scheduler.dispatcher.workers.values() for b in w.inflight]
            first = min(inflight, default=self.scheduler.last_batch_id + 1)
        shards = len(self._output_qs)

        def mine(stream_id: str) -> bool:
            return self._shards(stream_id) == shard

        fences = self._fences.snapshot() if self._fences is not None else None
        spec = OutputSpec(
            _shard_redis(self.config.redis, shard),
            self.redis_url,
            self.model.model_id,
            first,
            snapshot_interval_s=self.config.output.snapshot_interval_s,
            tracking=tuple(item for item in self._tracking.items() if mine(item[0])),
            fences=None if fences is None else tuple(f for f in fences if mine(f[0])),
            run_id=self.run_id,
            shard=shard,
        )
        # the workers' channels reach it through its inbox (sent at each worker's spawn); after
        # an output restart the workers are restarted too (see _output_exited)
        name = _output_name(shard, shards)
        return self._spawn(output_main, name, spec, self._output_qs[shard], self._control_q)

    def _output_silent_s(self) -> float:
        """How long an output process may go without stats once it has sent its first: past
        the batch deadline, so that a worker wedged mid-message (the output waits on its
        pipe) is killed first, alone."""
        return max(OUTPUT_SILENT_S, self.config.batching.batch_deadline_s + 15.0)

    def _output_beat(self, pid: int) -> None:
        """An output process's stats (twice a second) are its heartbeat: one silent for
        :meth:`_output_silent_s` after its first (wedged in a C call, deadlocked) is killed
        and restarted; its start-up (a spool read back) takes what it needs."""
        for key, child in list(self.group.children.items()):
            process = child.process
            if key.startswith("output") and process is not None and process.pid == pid:
                if child.restart_at is None:
                    self.group.beat(key)
                return

    def _output_exited(self, child: Child, reason: str) -> None:
        log.error("output process %s: results not yet written were lost", reason)
        if self.group.stopping:
            return
        # it may have died in the middle of reading a worker's message: that pipe's framing
        # is lost, so every worker restarts with a new pipe (their batches are re-sent)
        for key, worker in list(self.group.children.items()):
            if key.startswith("inference-") and worker.alive:
                worker.process.kill()

    def _add_worker(self, worker_id: int) -> None:
        capacity = self.config.batching.worker_capacity(self.config.engine)
        self.scheduler.add_worker(worker_id, capacity)
        env = self._worker_env[worker_id] if worker_id < len(self._worker_env) else {}
        labels = self._worker_labels
        placement = labels[worker_id] if worker_id < len(labels) else ""
        self.board.worker(worker_id).placement = placement or env.get("CUDA_VISIBLE_DEVICES", "")
        self.group.add(
            f"inference-{worker_id}",
            lambda r: self._spawn_worker(worker_id, env),
            self._worker_exited,
        )

    def _spawn_worker(self, worker_id: int, env: dict[str, str]) -> Any:
        # under the membership lock: a change of the appearance set (API thread) either sees
        # the new task queue or happened before the spec read it, never between the two
        with self._membership:
            return self._spawn_worker_locked(worker_id, env)

    def _spawn_worker_locked(self, worker_id: int, env: dict[str, str]) -> Any:
        m = self.model
        spec = WorkerSpec(
            worker_id=worker_id,
            engine=self.config.engine,
            model_path=m.path,
            class_names=m.class_names,
            input_size=m.input_size,
            max_batch=self.config.batching.max_batch,
            slots=self.config.workers.slots_per_stream,
            conf_threshold=m.conf_threshold,
            iou_threshold=self.config.model.iou_threshold,
            max_detections=self.config.model.max_detections,
            env=tuple(env.items()),
            appearance_streams=self._appearance,
            output_shards=self._shards.items(),
        )
        tasks = self._tasks[worker_id] = _CTX.Queue()
        # its results channels, one per output process (see channels.py)
        pipes = [_CTX.Pipe(duplex=False) for _ in self._output_qs]
        writers = tuple(writer for _, writer in pipes)
        queues = WorkerQueues(tasks, writers, self._sched_q, self._control_q)
        process = self._spawn(inference_main, f"inference-{worker_id}", spec, queues)
        for writer in writers:  # the worker's copies are the only ones: its exit ends them
            writer.close()
        channels = []
        for (reader, _), inbox in zip(pipes, self._output_qs, strict=True):
            self._channel_seq += 1
            channels.append(ResultsChannel(self._channel_seq, worker_id, reader))
            inbox.put(channels[-1])
        old = self._channels.get(worker_id, [])
        self._channels[worker_id] = channels
        self._retire_channels(old)
        return process

    def _retire_channels(self, old: list[ResultsChannel]) -> None:
        """Close read ends replaced long enough ago that the outputs' inboxes have long passed
        them on (a queue pickles a connection in its feeder thread, later than ``put``)."""
        now = time.monotonic()
        self._retired_channels.extend((now, channel.conn) for channel in old)
        while self._retired_channels and now - self._retired_channels[0][0] > 30.0:
            self._retired_channels.popleft()[1].close()

    def _worker_exited(self, child: Child, reason: str) -> None:
        worker_id = int(child.key.rsplit("-", 1)[1])
        failed = child.process.exitcode == ENGINE_FAILED_EXIT
        if failed:
            child.restart = False  # its engine cannot load: restarting would only loop
        self.board.worker_down(worker_id, failed, child.restarts + 1)
        with self.loop.lock:
            lost = self.scheduler.on_worker_lost(worker_id)
            for send in lost.resend:
                self._send(send)
            for request in lost.abandoned:
                self._abandon(request)
            self.loop.free(lost.free)
        log.error(
            "inference worker %d %s; %d batch(es) re-sent, %d abandoned",
            worker_id,
            reason,
            len(lost.resend),
            len(lost.abandoned),
        )

    def _add_ingest(self, index: int, streams: list[StreamConfig], plan: IngestPlan) -> None:
        self._ingest_streams[index], self._ingest_plans[index] = streams, plan
        self._assign_shards([s.id for s in streams])
        for stream in streams:
            self._stream_process[stream.id] = index
            self.board.add_stream(stream, _decode_label(plan), self._generation_of(stream.id))
            self.scheduler.add_stream(stream.id)
        timeout = max(10.0, self.config.source.read_timeout_s * 2 + 2)
        self.group.add(
            f"ingest-{index}", lambda r: self._spawn_ingest(index, r), self._ingest_exited, timeout
        )

    def _spawn_ingest(self, index: int, restarts: int) -> Any:
        with self._membership:
            streams = self._ingest_streams[index]
            with self.loop.lock:  # a restarted process goes on counting: seq never repeats
                last = {s.id: self.scheduler.ledger.last_seq(s.id) for s in streams}
            for sid in last:  # heartbeats also count frames shed or skipped, never announced
                last[sid] = max(last[sid], self.board.last_seq(sid))
            first = tuple(
                (sid, max(seq + SEQ_MARGIN if seq >= 0 else 0, self._first_seq.get(sid, 0)))
                for sid, seq in last.items()
            )
            spec = IngestSpec(
                index=index,
                run_id=f"{self.run_id}r{restarts}",
                streams=tuple(self._ingest_streams[index]),
                policy=self.config.source,
                input_size=self.model.input_size,
                slots=self.config.workers.slots_per_stream,
                plan=self._ingest_plans[index],
                first_seqs=first,
                snapshot_interval_s=self.config.output.snapshot_interval_s,
            )
            commands = self._commands[index] = _CTX.Queue()
            if self.governor is not None:  # the new readers start with no share: resend
                with self.loop.lock:
                    self.governor.forget([s.id for s in streams])
            queues = IngestQueues(self._sched_q, self._control_q, commands)
            return self._spawn(ingest_main, f"ingest-{index}", spec, queues)

    def _ingest_exited(self, child: Child, reason: str) -> None:
        with self._membership:
            index = int(child.key.rsplit("-", 1)[1])
            now = time.time()
            self.board.ingest_restarted([s.id for s in self._ingest_streams[index]])
            with self.loop.lock:
                for stream in self._ingest_streams[index]:
                    self.loop.free(self.scheduler.drop_stream_frames(stream.id, "ingest_restart"))
                    self.board.apply(
                        StateChanged(
                            stream.id,
                            self.board.state(stream.id),
                            StreamState.CONNECTING,
                            f"ingest process {reason}",
                            now,
                        )
                    )
                names = [n for n, owner in self.loop.pool_owner.items() if owner == index]
                for name in names:
                    self.pools.forget(name)
                    del self.loop.pool_owner[name]
                    self._broadcast(PoolClosed(name))  # or every worker keeps the dead pool mapped
            self._unlink_pools(names)

    def _spawn(self, target: Any, name: str, *args: Any) -> Any:
        process = _CTX.Process(target=target, args=(*args, self.log_level), name=name, daemon=True)
        process.start()
        return process

    def _send(self, send: Send) -> None:
        """A batch to its worker; a queue that cannot take it means the worker is gone: kill
        it, and the process group re-sends what it held (this batch included)."""
        try:
            self._tasks[send.worker_id].put(send.request)
        except Exception as exc:
            log.error("inference worker %d: cannot send batch %d (%s)", send.worker_id,
                      send.request.batch_id, exc)  # fmt: skip
            child = self.group.children.get(f"inference-{send.worker_id}")
            if child is not None and child.alive:
                child.process.kill()

    def _broadcast(self, msg: object) -> None:
        for tasks in self._tasks.values():
            tasks.put(msg)

    def _tick(self) -> None:
        """Every 0.25 s on the scheduler thread: children (outside the scheduler's lock:
        restarting one may take seconds), hung workers, fair shares."""
        self.group.check()
        with self.loop.lock:
            overdue = self.scheduler.overdue(self.config.batching.batch_deadline_s)
        for worker_id in overdue:
            self._kill_hung(worker_id)
        if self.governor is None:
            return
        with self.loop.lock:
            if self.board.workers_starting():
                self.governor.pause()  # what they drop now says nothing about capacity
                return
            changed = self.governor.step(
                self.scheduler.ledger.snapshots(), self.board.demand(), self.board.lags()
            )
        if changed:
            self._send_rates(changed)

    def _kill_hung(self, worker_id: int) -> None:
        """A worker sitting on a batch past ``batching.batch_deadline_s`` is hung (a wedged
        CUDA call): kill it; the process group re-sends its batches and restarts it."""
        child = self.group.children.get(f"inference-{worker_id}")
        if child is not None and child.alive:
            deadline = self.config.batching.batch_deadline_s
            log.error(
                "inference worker %d: no batch done in %.0fs; killing it", worker_id, deadline
            )
            child.process.kill()

    def _send_rates(self, rates: dict[str, float | None]) -> None:
        """Each ingest process gets its own streams' new targets (fair shares)."""
        by_process: dict[int, list[tuple[str, float | None]]] = {}
        for sid, fps in rates.items():
            index = self._stream_process.get(sid)
            if index is not None:
                by_process.setdefault(index, []).append((sid, fps))
        bound = self.governor is not None and self.governor.decoder_bound
        for index, items in by_process.items():
            self._commands[index].put(SetAnalysisRates(tuple(items), decoder_bound=bound))

    @staticmethod
    def _unlink_pools(names: list[str]) -> None:
        from multiprocessing import shared_memory

        for name in names:
            try:
                shm = shared_memory.SharedMemory(name=name)
            except FileNotFoundError:
                continue
            shm.close()
            shm.unlink()

    # ---- the status board's thread -------------------------------------------------
    def _board_loop(self) -> None:
        # this thread runs for the pipeline's life: it trims (and collects) for the process
        heap = HeapTrimmer(collect_every=MAIN_COLLECT_EVERY)
        while not self._stop_board.is_set():
            heap.maybe_trim()
            try:
                self._on_control(self._control_q.get(timeout=0.1))
            except queue.Empty:
                continue
            except Exception:
                log.exception("status board: message handling failed")

    def _drain_control(self) -> None:
        while True:
            try:
                self._on_control(self._control_q.get(timeout=0.05))
            except queue.Empty:
                return

    def _on_control(self, msg: object) -> None:
        if isinstance(msg, OutputStats) and not msg.final:
            self._output_beat(msg.pid)  # first: a beat is not lost to a failing apply
        if not isinstance(msg, WorkerReady):
            self.board.apply(msg)
        if isinstance(msg, IngestHeartbeat):
            self.group.beat(f"ingest-{msg.process}")
        elif isinstance(msg, WorkerReady):
            with self.loop.lock:  # exit hooks run under it too: no revive after a death
                child = self.group.children.get(f"inference-{msg.worker_id}")
                if child is None or not child.alive or child.process.pid != msg.pid:
                    return  # from an incarnation already dead: must not revive its slot
                self.board.apply(msg)
                self.scheduler.worker_ready(msg.worker_id)
            log.info(
                "inference worker %d ready (%s on %s)",
                msg.worker_id,
                msg.info.backend,
                msg.info.device,
            )
        elif isinstance(msg, WorkerFailed):
            log.error("inference worker %d failed to start: %s", msg.worker_id, msg.error)

    # ---- runtime registration ----------------------------------------------------
    def add_stream(self, stream: StreamConfig, first_seq: int = 0) -> None:
        """Start reading a new stream (on the ingest process with the fewest streams); its
        frames are numbered from ``first_seq`` (a stream taken over from another node of a
        fleet goes on above the seq the other one reached)."""
        with self._membership:
            if stream.id in self._stream_process:
                raise ConfigError(f"stream {stream.id!r} is already registered")
            if first_seq:
                self._first_seq[stream.id] = first_seq
            index = self._ingest_for_new_stream()
            self._assign_shards([stream.id])
            self._ingest_streams[index].append(stream)
            self._stream_process[stream.id] = index
            label = _decode_label(self._ingest_plans[index])
            self.board.add_stream(stream, label, self._generation_of(stream.id))
            with self.loop.lock:
                self.scheduler.add_stream(stream.id)
            self._commands[index].put(AddStream(stream, first_seq))
            self._set_tracking(stream)

    def _assign_shards(self, stream_ids: list[str]) -> None:
        """Give each stream an output process and tell the workers, before any of its
        frames can reach them (the message is ahead of its batches on their task queues)."""
        if not stream_ids:
            return
        with self._membership:
            assigned = tuple((sid, self._shards.assign(sid)) for sid in stream_ids)
            if len(self._output_qs) > 1:
                self._broadcast(OutputShards(assigned))
                self._save_shards()

    def _ingest_for_new_stream(self) -> int:
        """The ingest process a stream added at run time goes to (started here if new)."""
        loads = {i: len(streams) for i, streams in self._ingest_streams.items()}
        index, plan, new = place_added_stream(
            loads,
            self._ingest_plans,
            grow=True,
            max_processes=usable_cores(),
            configured=self.config.workers.ingest_processes,
            candidates=self._decode_plans,
            gpu_per_process=gpu_streams_per_process(self.config),
        )
        if new:
            try:
                self._add_ingest(index, [], plan)
            except Exception:  # could not start (EMFILE, ENOMEM): leave no dead slot behind
                self._drop_ingest_slot(index)
                raise
            log.info("ingest-%d started for streams added at run time", index)
        return index

    def _drop_ingest_slot(self, index: int) -> None:
        self._ingest_streams.pop(index, None)
        self._ingest_plans.pop(index, None)
        self._commands.pop(index, None)
        self.group.children.pop(f"ingest-{index}", None)

    def _generation_of(self, stream_id: str) -> int:
        """The number of the stream's registration now (or, not registered, of its next)."""
        found = self._generation.get(stream_id)
        if found is None:
            found = self._generation[stream_id] = next(self._generations)
        return found

    def set_fence(self, stream_id: str, token: str, first_seq: int) -> None:
        """A fleet node took ``stream_id``'s lease as ``token``: the output stage writes its
        frames from ``first_seq`` on only while the lease still holds ``token`` (sent before
        the stream is added, so before any of those frames exists).  One lock around the
        book and the message: the reconciler's and the fleet's threads both call it, and
        the output stage must see the values in the order the book took them."""
        if self._fences is None:
            raise ConfigError("write fencing needs a fleet: section")
        with self._membership:
            generation = self._generation_of(stream_id)
            self._shards.place(stream_id)  # before the stream is added: routes the fence
            self._fences.set(stream_id, token, first_seq, generation)
            self._to_output(stream_id, SetFence(stream_id, token, first_seq, generation))

    def fence(self, stream_id: str) -> str | None:
        """The newest lease value set for the stream (None: none, or not a fleet node)."""
        return self._fences.latest(stream_id) if self._fences is not None else None

    def update_stream(self, stream: StreamConfig) -> None:
        """Apply a changed entry of a registered stream (same id) without disturbing the
        others: ``enabled`` false stops reading it (it stays listed, state ``disabled``,
        counters kept), true reads it again; ``analysis_fps``, ``fps_cap`` and ``labels``
        apply in place; a changed ``url``, ``loop`` or ``realtime`` reopens it (seq goes on)."""
        with self._membership:
            index = self._stream_process.get(stream.id)
            if index is None:
                raise ConfigError(f"stream {stream.id!r} is not registered")
            self.board.update_stream(stream)
            self._set_tracking(stream)
            streams = self._ingest_streams[index]  # a restarted ingest process reads the new one
            streams[:] = [stream if s.id == stream.id else s for s in streams]
            self._commands[index].put(UpdateStream(stream))

    def last_seq(self, stream_id: str) -> int:
        """The newest seq a registered stream's reader reported (or its first_seq - 1)."""
        return max(self.board.last_seq(stream_id), self._first_seq.get(stream_id, 0) - 1)

    def streams(self) -> dict[str, StreamConfig]:
        """The entries of the streams registered now (enabled or not), by id."""
        return self.board.configs()

    def remove_stream(self, stream_id: str) -> None:
        """Stop reading a stream and forget it."""
        with self._membership:
            if stream_id not in self.board.streams:
                raise ConfigError(f"stream {stream_id!r} is not registered")
            self.board.remove_stream(stream_id)
            self._first_seq.pop(stream_id, None)
            self._generation.pop(stream_id, None)  # added again: a new registration
            self._shards.release(stream_id)
            if self._fences is not None:  # what the sink holds of it carries its own value;
                self._fences.forget(stream_id)  # a frame of it still in a worker is refused
                self._to_output(stream_id, ForgetFence(stream_id))
            if self._tracking.pop(stream_id, None) is not None:
                self._to_output(stream_id, SetTracking(stream_id, None))
                self._send_appearance()
            index = self._stream_process.pop(stream_id, None)
            with self.loop.lock:
                self.loop.free(self.scheduler.remove_stream(stream_id))
                self.scheduler.ledger.forget(stream_id)  # when nothing of it is still in flight
                if self.governor is not None:
                    self.governor.forget([stream_id])
            if index is not None:
                streams = self._ingest_streams[index]
                streams[:] = [s for s in streams if s.id != stream_id]
                self._commands[index].put(RemoveStream(stream_id))

    def _set_tracking(self, stream: StreamConfig) -> None:
        """Tell the output stage when a stream's tracking starts, changes or stops."""
        if stream.tracking == self._tracking.get(stream.id):
            return
        if stream.tracking is None:
            self._tracking.pop(stream.id, None)
        else:
            self._tracking[stream.id] = stream.tracking
        self._to_output(stream.id, SetTracking(stream.id, stream.tracking))
        self._send_appearance()

    def _appearance_streams(self) -> frozenset[str]:
        """The streams whose tracking re-identifies by appearance (their detections need
        descriptors from the inference workers)."""
        return frozenset(sid for sid, t in self._tracking.items() if t.appearance_s > 0)

    def _send_appearance(self) -> None:
        """Tell every worker when that set changed (a worker started later gets it in its
        spec)."""
        streams = self._appearance_streams()
        if streams != self._appearance:
            self._appearance = streams
            for tasks in list(self._tasks.values()):
                tasks.put(AppearanceStreams(streams))

    # ---- status ------------------------------------------------------------------
    def transitions(self, stream_id: str) -> list[StateChanged]:
        """The stream's recent state changes, oldest first."""
        return self.board.transitions(stream_id)

    def status(self) -> PipelineStatus:
        """A consistent snapshot for the status table, Redis and the API."""
        histograms = dict(self.loop.batch_book.snapshot())  # its own lock, summed outside
        with self.loop.lock:
            ledger = self.scheduler.ledger.snapshots()
            loads = {
                i: WorkerLoadView(
                    w.batches, w.frames, len(w.inflight), *_worker_histograms(histograms, i)
                )
                for i, w in self.scheduler.dispatcher.workers.items()
            }
            violations = self.scheduler.ledger.violations
        return self.board.snapshot(ledger, loads, violations)


def _output_name(shard: int, shards: int) -> str:
    """``output`` alone, ``output-<shard>`` when there are several."""
    return "output" if shards == 1 else f"output-{shard}"


def _shard_redis(redis: RedisConfig, shard: int) -> RedisConfig:
    """Each output process has a spool of its own (one writer per spool): shard 0 keeps the
    configured directory, shard k a ``shard-k`` folder inside it."""
    base = redis.spool_path()
    if shard == 0 or base is None:
        return redis
    return redis.model_copy(update={"spool_dir": str(base / f"shard-{shard}")})
