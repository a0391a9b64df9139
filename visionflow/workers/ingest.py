"""Ingest processes: decode several streams each, letterbox, hand frames over in shared memory.

Each stream has its own reader thread (PyAV releases the GIL while demuxing and decoding), its
own state machine, backoff and watchdog, and its own frame pool.  Ready frames are announced
to the scheduler in batches (:class:`Announcer`: one :class:`FrameBatch` message per few
milliseconds, never one message per frame); heartbeats and state changes go to the status
board on a separate control queue.  Nothing a camera does can block another process; the
process group restarts an ingest process that stops sending heartbeats.
"""

from __future__ import annotations

import logging
import os
import queue
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from visionflow.config import SourceConfig
from visionflow.errors import SourceEndedError, SourceError, SourceStalledError
from visionflow.pipeline.framepool import FramePool
from visionflow.pipeline.frames import FrameRef, Letterbox
from visionflow.pipeline.letterbox import letterbox_geometry
from visionflow.streams.backoff import Backoff, ReconnectLimiter
from visionflow.streams.config import StreamConfig
from visionflow.streams.nvdec import NvdecSource
from visionflow.streams.shedding import NO_MODES, ShedPolicy
from visionflow.streams.sources import DecodedFrame, VideoSource
from visionflow.streams.state import StreamState, StreamStateMachine, Transition
from visionflow.streams.urls import redact_text
from visionflow.workers.heap import HeapTrimmer
from visionflow.workers.logs import setup_child_logging
from visionflow.workers.messages import (
    AddStream,
    FrameBatch,
    IngestHeartbeat,
    PoolClosed,
    RemoveStream,
    SetAnalysisRates,
    StateChanged,
    StopReading,
    StreamStats,
    UpdateStream,
)
from visionflow.workers.procs import exit_with_parent

log = logging.getLogger("visionflow.ingest")
HEARTBEAT_S = 0.5
# a command (adding a stream allocates its frame pool: on a GPU shared by many processes that
# can take seconds) that runs longer than this stops the heartbeat: the process is restarted
COMMAND_DEADLINE_S = 60.0


@dataclass(frozen=True)
class IngestPlan:
    """How one ingest process decodes: decoder, its GPU (``CUDA_VISIBLE_DEVICES``) and
    whether its frame slots live in GPU memory (CUDA IPC) or host shared memory."""

    decode: str = "cpu"
    env: tuple[tuple[str, str], ...] = ()
    device_frames: bool = False


def make_source(
    stream: StreamConfig, policy: SourceConfig, stop: threading.Event, decode: str
) -> VideoSource:
    """The decoder asked for: PyAV on the CPU, NVDEC packet by packet, or DALI by GOP."""
    if decode == "nvdec":
        return NvdecSource(stream, policy, stop)
    if decode == "dali":
        from visionflow.streams.dali import DaliSource

        return DaliSource(stream, policy, stop)
    return VideoSource(stream, policy, stop)


class Announcer:
    """Gathers the frames of every reader thread and sends them as one :class:`FrameBatch`
    at most ``interval_s`` after the first of them was ready."""

    def __init__(self, process: int, outbox: Any, interval_s: float) -> None:
        self.process, self.outbox, self.interval_s = process, outbox, interval_s
        self._pending: list[FrameRef] = []
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self.messages = 0
        self.thread = threading.Thread(target=self._run, name="announcer", daemon=True)

    def put(self, frame: FrameRef) -> None:
        with self._cond:
            self._pending.append(frame)
            if len(self._pending) == 1:
                self._cond.notify()

    def flush(self) -> None:
        with self._cond:
            frames, self._pending = self._pending, []
        if frames:
            self.messages += 1
            self.outbox.put(FrameBatch(self.process, tuple(frames)))

    def _run(self) -> None:
        while not self._stop.is_set():
            with self._cond:
                while not self._pending and not self._stop.is_set():
                    self._cond.wait(0.5)
            self._stop.wait(self.interval_s)  # let more frames join this message
            self.flush()

    @property
    def started(self) -> bool:
        return self.thread.ident is not None

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self._stop.set()
        with self._cond:
            self._cond.notify()
        self.thread.join(timeout=2)
        self.flush()


class StreamReader:
    """One stream's thread: connect, decode, letterbox into the pool, reconnect on failure."""

    def __init__(
        self,
        stream: StreamConfig,
        policy: SourceConfig,
        pool: FramePool,
        announce: Callable[[FrameRef], None],
        control: Any,
        decode: str = "cpu",
        limiter: ReconnectLimiter | None = None,
        snapshot_interval_s: float = 0.0,
    ) -> None:
        self.stream, self.policy, self.pool = stream, policy, pool
        self.snapshot_interval_s = snapshot_interval_s  # 0: no frame is marked for snapshots
        self._next_snapshot = 0.0
        self.limiter = limiter  # shared by the process's readers: connects per second
        self.announce, self.control = announce, control
        self.decode = decode
        # stop_event interrupts the source (stop for good, disable, reopen); _halted, _enabled
        # and _reopen say which, all changed under _cmd_lock; _wake ends a disabled wait
        self.stop_event = threading.Event()
        self._cmd_lock = threading.Lock()
        self._wake = threading.Event()
        self._halted = False
        self._enabled = stream.enabled
        self._reopen = False
        self.machine = StreamStateMachine(stream.id, on_change=self._on_change)
        self.backoff = Backoff(
            policy.backoff_initial_s,
            policy.backoff_max_s,
            policy.backoff_multiplier,
            policy.backoff_jitter,
        )
        self.seq = -1
        self.frames = self.skipped = self.backpressure = self.reconnects = 0
        self.decode_errors = self.skipped_analysis = self._shed_packets = 0
        self.last_error: str | None = None
        self.last_frame_ts: float | None = None
        self.size: tuple[int, int] | None = None
        self._letterbox: Letterbox | None = None
        self._next_allowed = 0.0
        self.source = make_source(stream, policy, self.stop_event, decode)
        self.shed = ShedPolicy(
            stream.analysis_fps,
            modes=self.source.decode_modes if policy.shed_load else NO_MODES,
            prefix_ratio=0.5 if policy.shed_gop_prefix else 0.0,
            lag_limit_s=self._lag_limit(),
        )
        self._attach(self.source)
        self.thread = self._new_thread()

    def _attach(self, source: VideoSource) -> None:
        source.target_size = (self.pool.width, self.pool.height)
        source.shed = self.shed

    def _new_thread(self) -> threading.Thread:
        return threading.Thread(target=self.run, name=f"stream-{self.stream.id}", daemon=True)

    # ---- life cycle ----------------------------------------------------------------
    def _on_change(self, change: Transition) -> None:
        log.info(
            "stream %s: %s -> %s %s", self.stream.id, change.source, change.target, change.reason
        )
        self.control.put(
            StateChanged(self.stream.id, change.source, change.target, change.reason, change.at)
        )

    def run(self) -> None:
        reason = "start"
        try:
            while True:
                if not self._enabled:
                    if not self._wait_enabled():
                        return
                    reason = "enabled"
                if not self._resume():
                    return
                if not self._may_connect():
                    continue  # interrupted while waiting its turn: halted, disabled, reopen
                self.machine.to(StreamState.CONNECTING, reason)
                reason = self._session(self.source)
                if self.machine.state in (StreamState.FAILED, StreamState.STOPPED):
                    return
                if self._halted or not self._enabled:
                    continue
                if self._reopen:
                    reason = "stream entry changed"
                    continue
                self.reconnects += 1
        finally:
            self.source.close()
            if self.machine.state not in (StreamState.STOPPED, StreamState.FAILED):
                self.machine.to(StreamState.STOPPED, "stopped")

    # ---- runtime changes (any thread) ----------------------------------------------------
    def stop(self) -> None:
        """Stop reading for good: the thread ends (state ``stopped``)."""
        with self._cmd_lock:
            self._halted = True
            self.stop_event.set()
            self._wake.set()

    def reconfigure(self, stream: StreamConfig) -> None:
        """Apply a changed entry of this stream: ``analysis_fps`` and ``fps_cap`` from the
        next frame, ``labels`` with it; ``enabled`` false closes the source (state
        ``disabled``, counters and seq kept), true reads again; a changed ``url``, ``loop``
        or ``realtime`` reopens the stream with a new source."""
        with self._cmd_lock:
            old, self.stream = self.stream, stream
            self.shed.analysis_fps = stream.analysis_fps
            self.shed.lag_limit_s = self._lag_limit()
            if (old.url, old.loop, old.realtime) != (stream.url, stream.loop, stream.realtime):
                self._reopen = True
            self._enabled = stream.enabled
            if self._reopen or not stream.enabled:
                self.stop_event.set()  # ends the session; run() sees why
            self._wake.set()

    def ensure_running(self) -> None:
        """After :meth:`reconfigure`: a reader whose thread ended (failed, or a file that
        ended) is marked ``disabled`` when disabled, and read again when enabled after
        being disabled or with a changed entry."""
        if self.thread.is_alive() or self._halted:
            return
        if not self._enabled:
            if self.machine.state is not StreamState.DISABLED:
                self.machine.to(StreamState.DISABLED, "disabled")
        elif self.machine.state is StreamState.DISABLED or self._reopen:
            self.thread = self._new_thread()
            self.thread.start()

    def _wait_enabled(self) -> bool:
        """Sit in ``disabled`` until enabled (True) or stopped for good (False)."""
        if self.machine.state is not StreamState.DISABLED:
            self.machine.to(StreamState.DISABLED, "disabled")
        while True:
            with self._cmd_lock:
                if self._halted:
                    return False
                if self._enabled:
                    return True
                self._wake.clear()
            self._wake.wait()

    def _resume(self) -> bool:
        """Before connecting: clear the interruption, swap in a new source when the entry
        changed; False when stopped for good."""
        with self._cmd_lock:
            if self._halted:
                return False
            self.stop_event.clear()
            if self._reopen:
                self._reopen = False
                self.source.close()
                self.source = make_source(self.stream, self.policy, self.stop_event, self.decode)
                self._attach(self.source)
            return True

    def _may_connect(self) -> bool:
        """Wait for the process-wide reconnect limit (network streams only); False once
        the reader is stopped."""
        if self.stop_event.is_set():
            return False
        if self.limiter is None or self.stream.is_file:
            return True
        return self.limiter.wait(self.stop_event)

    def _session(self, source: VideoSource) -> str:
        """Open, stream until something breaks; returns why the next connect happens."""
        try:
            source.open()
            for decoded in source.frames():
                if self.machine.state is StreamState.CONNECTING:
                    self.machine.to(StreamState.STREAMING, f"{decoded.width}x{decoded.height}")
                    self.backoff.reset()
                self._deliver(decoded)
            return "stopping"
        except SourceError as exc:
            if self.stop_event.is_set():
                return "interrupted"  # disabled, reopened or stopped on purpose
            return self._source_failed(exc)
        except Exception as exc:  # a bug must not kill the other streams' threads
            log.exception("stream %s: unexpected error", self.stream.id)
            self._record(exc)
            return self._back_off(exc)
        finally:
            source.close()
            self.decode_errors += source.decode_errors

    def _source_failed(self, exc: SourceError) -> str:
        """What a source error means for the state; returns why the next connect happens."""
        if isinstance(exc, SourceStalledError):
            self._record(exc)
            if self.machine.state is StreamState.STREAMING:
                self.machine.to(StreamState.STALLED, str(exc))
                return "reopen after stall"
            return self._back_off(exc)
        if isinstance(exc, SourceEndedError):
            if self.stream.loop and self.machine.state is StreamState.STREAMING:
                return "loop"
            self.machine.to(
                StreamState.STOPPED
                if self.machine.state is StreamState.STREAMING
                else StreamState.FAILED,
                str(exc),
            )
            return "ended"
        self._record(exc)
        if exc.permanent:
            self.machine.to(StreamState.FAILED, str(exc))
            return "failed"
        return self._back_off(exc)

    def _back_off(self, exc: BaseException) -> str:
        if self.stop_event.is_set():
            return "interrupted"
        limit = self.policy.max_retries
        if limit is not None and self.backoff.failures >= limit:
            self.machine.to(StreamState.FAILED, f"gave up after {limit} retries: {exc}")
            return "failed"
        delay = self.backoff.next_delay()
        self.machine.to(StreamState.BACKOFF, f"retry in {delay:.1f}s: {exc}")
        self.stop_event.wait(delay)
        return "retry"

    def _record(self, exc: BaseException) -> None:
        self.last_error = redact_text(str(exc))[:300]
        log.warning("stream %s: %s", self.stream.id, self.last_error)

    # ---- frames ----------------------------------------------------------------------
    def set_share(self, fps: float | None, decoder_bound: bool = False) -> None:
        """This stream's fair share (frames/s; None: no limit), from the scheduler's
        :class:`visionflow.workers.messages.SetAnalysisRates`.  The reader sheds down to
        ``min(analysis_fps, share)`` before decode; ``decoder_bound``: the share comes from a
        decoder cut (streams behind real time), so a share below the rate decodes GOP heads;
        safe to call from any thread."""
        self.shed.set_share(fps, decoder_bound)

    def _deliver(self, decoded: DecodedFrame) -> None:
        # seq numbers source frames: packets the shedding policy kept from the decoder count
        shed_packets = self.shed.packets_skipped
        self.seq += 1 + shed_packets - self._shed_packets
        self._shed_packets = shed_packets
        if not decoded.used:  # shed by analysis_fps / the fair share: never letterboxed
            self.skipped_analysis += 1
            return
        now = time.time()
        cap = self.stream.fps_cap
        if cap is not None:
            if now < self._next_allowed:
                self.skipped += 1
                self.shed.not_used()
                return
            self._next_allowed = max(self._next_allowed + 1 / cap, now - 0.5 / cap)
        slot = self._acquire_slot()
        if slot is None:
            self.backpressure += 1
            self.shed.not_used()
            return
        t0 = time.perf_counter()
        letterbox = self._geometry(decoded.width, decoded.height)
        self.source.write_letterboxed(decoded, self.pool.image(slot), letterbox)
        self.pool.publish(slot)
        decode_ms = decoded.decode_ms + (time.perf_counter() - t0) * 1000
        self.frames += 1
        self.last_frame_ts = now
        self.announce(
            FrameRef(
                stream_id=self.stream.id,
                seq=self.seq,
                pts=decoded.pts,
                capture_ts=now - decode_ms / 1000,
                decode_ms=round(decode_ms, 3),
                pool=self.pool.name,
                slot=slot,
                letterbox=letterbox,
                lossless=self.lossless,
                snapshot=self._snapshot_due(now),
            )
        )

    def _snapshot_due(self, now: float) -> bool:
        """Mark at most one frame per snapshot interval (a marked frame that is dropped
        later leaves that interval without a snapshot)."""
        if self.snapshot_interval_s <= 0 or now < self._next_snapshot:
            return False
        self._next_snapshot = now + self.snapshot_interval_s
        return True

    def _lag_limit(self) -> float:
        """The shedding policy's lag limit: none for a file read faster than real time (it
        is never "behind": it waits for slots, and its pts run ahead of the clock)."""
        return 0.0 if self.lossless else self.policy.shed_lag_limit_s

    @property
    def lossless(self) -> bool:
        """Files read faster than real time wait for inference instead of dropping frames."""
        return self.stream.is_file and not self.stream.realtime

    def _acquire_slot(self) -> int | None:
        slot = self.pool.acquire()
        while slot is None and self.lossless and not self.stop_event.wait(0.002):
            slot = self.pool.acquire()
        return slot

    def _geometry(self, width: int, height: int) -> Letterbox:
        lb = self._letterbox
        if lb is None or (lb.src_w, lb.src_h) != (width, height):
            lb = letterbox_geometry(width, height, self.pool.width, self.pool.height)
            self._letterbox, self.size = lb, (width, height)
        return lb

    def stats(self) -> StreamStats:
        shed = self.shed.snapshot()
        return StreamStats(
            stream_id=self.stream.id,
            state=self.machine.state,
            state_since=self.machine.since,
            frames=self.frames,
            skipped_fps_cap=self.skipped,
            drops_backpressure=self.backpressure,
            decode_errors=self.decode_errors,
            reconnects=self.reconnects,
            last_error=self.last_error,
            last_frame_ts=self.last_frame_ts,
            width=self.size[0] if self.size else None,
            height=self.size[1] if self.size else None,
            analysis_fps=round(shed.analysis_fps, 2),
            decode_mode=shed.mode,
            skipped_analysis=self.skipped_analysis + shed.packets_skipped,
            source_fps=None if shed.source_fps is None else round(shed.source_fps, 2),
            target_fps=shed.target_fps,
            # a file read faster than real time has no lag: its pts run ahead of the clock
            lag_s=None if shed.lag_s is None or self.lossless else round(shed.lag_s, 3),
            behind=shed.behind,
            last_seq=self.seq,
        )


class IngestProcess:
    """The body of one ingest process: its readers, commands and heartbeat."""

    def __init__(
        self,
        index: int,
        run_id: str,
        policy: SourceConfig,
        input_size: tuple[int, int],
        slots: int,
        queues: IngestQueues,
        decode: str = "cpu",
        device_frames: bool = False,
        announce_interval_s: float = 0.004,
        snapshot_interval_s: float = 0.0,
    ) -> None:
        self.index, self.run_id, self.policy = index, run_id, policy
        self.snapshot_interval_s = snapshot_interval_s
        self.decode = decode
        self.device_frames = device_frames
        self.width, self.height = input_size
        self.slots, self.queues = slots, queues
        self.announcer = Announcer(index, queues.frames, announce_interval_s)
        self.readers: dict[str, StreamReader] = {}
        self._final: dict[str, StreamStats] = {}  # removed streams' last counts, sent once
        self._final_lock = threading.Lock()
        self._pools = 0
        self.stopping = threading.Event()
        self._busy_since: float | None = None  # when the running command started
        self._beating = threading.Event()
        self._beat_thread = threading.Thread(target=self._beat, name="heartbeat", daemon=True)
        limit = policy.max_reconnects_per_s
        self.limiter = None if limit is None else ReconnectLimiter(limit)

    def add(self, stream: StreamConfig, first_seq: int = 0) -> None:
        if stream.id in self.readers:
            self.remove(stream.id)
        self._pools += 1
        name = f"vf-{self.run_id}-{self.index}-{self._pools}"
        device = 0 if self.device_frames else None  # the process sees only its decode GPU
        pool = FramePool(name, self.slots, self.height, self.width, create=True, device=device)
        reader = StreamReader(
            stream,
            self.policy,
            pool,
            self.announcer.put,
            self.queues.control,
            self.decode,
            self.limiter,
            self.snapshot_interval_s,
        )
        reader.seq = first_seq - 1
        self.readers[stream.id] = reader
        reader.thread.start()

    def remove(self, stream_id: str) -> None:
        reader = self.readers.pop(stream_id, None)
        if reader is None:
            return
        reader.stop()
        reader.thread.join(timeout=self.policy.read_timeout_s + 2)
        self.announcer.flush()  # its frames travel before the pool is declared closed
        self.queues.frames.put(PoolClosed(reader.pool.name))
        reader.pool.close()
        with self._final_lock:
            self._final[stream_id] = reader.stats()

    def update(self, stream: StreamConfig) -> None:
        """A changed entry of one of this process's streams (:meth:`StreamReader.reconfigure`)."""
        reader = self.readers.get(stream.id)
        if reader is None:
            log.warning("stream %s: update for a stream this process does not read", stream.id)
            return
        reader.reconfigure(stream)
        reader.ensure_running()

    def heartbeat(self) -> None:
        stats = tuple(s for r in list(self.readers.values()) if (s := self._stats(r)))
        with self._final_lock:
            final, self._final = tuple(self._final.values()), {}
        self.queues.control.put(IngestHeartbeat(self.index, time.time(), stats + final))

    def start_heartbeat(self) -> None:
        """Beat from a thread of its own, every ``HEARTBEAT_S``, from now on: a process
        busy opening streams (CUDA context, frame pools, decoders) is alive, not silent."""
        self._beating.set()
        self._beat_thread.start()

    def stop_heartbeat(self) -> None:
        self._beating.clear()
        if self._beat_thread.is_alive():
            self._beat_thread.join(timeout=2 * HEARTBEAT_S + 1)

    def _beat(self) -> None:
        heap = HeapTrimmer()
        while self._beating.is_set():
            heap.maybe_trim()
            if self.command_stuck(time.monotonic()):
                log.error(
                    "ingest-%d: a command has run > %.0fs; heartbeat withheld",
                    self.index,
                    COMMAND_DEADLINE_S,
                )
            else:
                self.heartbeat()
            time.sleep(HEARTBEAT_S)

    def command_stuck(self, now: float) -> bool:
        """The command loop has been inside one command longer than ``COMMAND_DEADLINE_S``
        (the watchdog then finds the process silent and restarts it)."""
        busy = self._busy_since
        return busy is not None and now - busy > COMMAND_DEADLINE_S

    def run_command(self, command: object) -> None:
        """Carry out one command, timed for :meth:`command_stuck`."""
        self._busy_since = time.monotonic()
        try:
            self._dispatch(command)
        finally:
            self._busy_since = None

    def _dispatch(self, command: object) -> None:
        if isinstance(command, AddStream):
            self.add(command.stream, command.first_seq)
        elif isinstance(command, RemoveStream):
            self.remove(command.stream_id)
        elif isinstance(command, UpdateStream):
            self.update(command.stream)
        elif isinstance(command, StopReading):
            self.stop_reading()
        elif isinstance(command, SetAnalysisRates):
            for stream_id, fps in command.rates:
                reader = self.readers.get(stream_id)
                if reader is not None:
                    reader.set_share(fps, command.decoder_bound)

    @staticmethod
    def _stats(reader: StreamReader) -> StreamStats | None:
        """One stream's counters; a reader caught mid-update skips this heartbeat rather
        than ending the process (the serve loop has no other guard)."""
        try:
            return reader.stats()
        except Exception:
            log.exception("stream %s: stats unavailable this heartbeat", reader.stream.id)
            return None

    def stop_reading(self) -> None:
        """Stop every reader; frames already decoded are announced, pools stay open."""
        for reader in self.readers.values():
            reader.stop()
        for reader in self.readers.values():
            reader.thread.join(timeout=self.policy.read_timeout_s + 2)
        self.announcer.flush()
        self.heartbeat()

    def serve(self) -> None:
        """Carry out commands until told to stop (heartbeats: :meth:`start_heartbeat`)."""
        if not self.announcer.started:
            self.announcer.start()
        if not self._beating.is_set():
            self.start_heartbeat()
        while not self.stopping.is_set():
            try:
                command = self.queues.commands.get(timeout=HEARTBEAT_S / 2)
            except queue.Empty:
                continue
            if command is None:
                break
            self.run_command(command)
        for stream_id in list(self.readers):
            self.remove(stream_id)
        self.announcer.stop()
        self.stop_heartbeat()
        self.heartbeat()  # the final counts of every stream, after every other beat


@dataclass(frozen=True)
class IngestQueues:
    """An ingest process's queues: frame announcements (to the scheduler), status (to the
    board) and commands (from the pipeline)."""

    frames: Any
    control: Any
    commands: Any


@dataclass(frozen=True)
class IngestSpec:
    """Everything an ingest process needs to start (picklable)."""

    index: int
    run_id: str
    streams: tuple[StreamConfig, ...]
    policy: SourceConfig
    input_size: tuple[int, int]
    slots: int
    plan: IngestPlan = IngestPlan()
    announce_interval_s: float = 0.004
    first_seqs: tuple[tuple[str, int], ...] = ()  # a restarted process goes on counting
    snapshot_interval_s: float = 0.0  # mark a frame per stream this often (0: never)


def ingest_main(spec: IngestSpec, queues: IngestQueues, log_level: int) -> None:
    """Entry point of an ingest process."""
    plan = spec.plan
    os.environ.update(dict(plan.env))  # before anything touches CUDA
    setup_child_logging(log_level)
    exit_with_parent()
    process = IngestProcess(
        spec.index,
        spec.run_id,
        spec.policy,
        spec.input_size,
        spec.slots,
        queues,
        plan.decode,
        plan.device_frames,
        spec.announce_interval_s,
        spec.snapshot_interval_s,
    )
    signal.signal(signal.SIGTERM, lambda *_: process.stopping.set())
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the supervisor decides when we stop
    process.start_heartbeat()  # before the streams open: opening them can take a while
    process.announcer.start()  # the first streams' frames go out while the others open
    first = dict(spec.first_seqs)
    for stream in spec.streams:
        process.run_command(AddStream(stream, first.get(stream.id, 0)))
    process.serve()
