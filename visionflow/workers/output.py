"""The output stage: reorder by batch (so by seq) -> processors -> sinks, in its own process
(or several, each writing its own streams: :mod:`visionflow.workers.shards`).

::

    inference workers ──BatchResult──▶ output inbox ──▶ BatchReorder ──▶ processors ──▶ sinks
    scheduler ─────────BatchAbandoned─┘                (in batch-id order)  (tracker…)  (Redis…)

Workers send detections here directly; the scheduler only hears that a batch is done.  A
:class:`Processor` is the seam where a tracker or a zone filter plugs in: it sees every
stream's results in order and may add to or filter them.  Sinks are isolated from each
other: one that raises is counted and logged, the rest still get every result.  Counters go
to the status board as :class:`~visionflow.workers.messages.OutputStats` twice a second,
with the detections sink's per-stage latency (:mod:`visionflow.workers.latency`).  Sinks:
detections (:class:`RedisStreamSink`) and per-minute counts (:mod:`visionflow.workers.counts`);
frames that carry pixels also go to the snapshot writer (:mod:`visionflow.workers.snapshots`).
"""

from __future__ import annotations

import gc
import logging
import os
import queue
import signal
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from visionflow.config import RedisConfig
from visionflow.pipeline.frames import BatchResult, FrameResult
from visionflow.pipeline.ordering import BatchReorder
from visionflow.tracking.config import TrackingConfig
from visionflow.tracking.processor import TrackingProcessor
from visionflow.tracking.sink import RedisEventSink
from visionflow.workers.channels import ChannelReaders, ResultsChannel
from visionflow.workers.counts import CountsSink
from visionflow.workers.fence import Epochs, FenceBook, ForgetFence, SetFence
from visionflow.workers.heap import HeapTrimmer
from visionflow.workers.logs import setup_child_logging
from visionflow.workers.messages import BatchAbandoned, OutputStats
from visionflow.workers.procs import exit_with_parent
from visionflow.workers.sinks import RedisStreamSink, Sink
from visionflow.workers.snapshots import SnapshotWriter

log = logging.getLogger("visionflow.output")
STATS_S = 0.5
GAP_TIMEOUT_S = 15.0  # longer than the scheduler's batch deadline: a hung worker is killed
# and its batches re-sent or abandoned first; only a batch lost with an output process is
# given up on


class Processor(Protocol):
    """Sees every stream's results in order; returns what goes on to the sinks."""

    def process(self, results: list[FrameResult]) -> list[FrameResult]: ...


class OutputStage:
    """Reorder, process, fan out to sinks (no processes: unit-testable)."""

    def __init__(
        self,
        sinks: Sequence[Sink],
        processors: Sequence[Processor] = (),
        first_batch_id: int = 1,
        snapshots: SnapshotWriter | None = None,
        fences: FenceBook | None = None,
        shard: int = 0,
    ) -> None:
        """``fences``: a fleet node's lease values (:class:`SetFence` messages add to them),
        shared with the sinks that fence their writes; ``shard``: which output process this
        is (its counters are that shard's)."""
        if not sinks:
            raise ValueError("the output stage needs at least one sink")
        self.sinks, self.processors = list(sinks), list(processors)
        self.snapshots, self.fences, self.shard = snapshots, fences, shard
        self.reorder: BatchReorder[tuple[FrameResult, ...]] = BatchReorder(first_batch_id)
        self.sink_errors: Counter[str] = Counter()
        self.lost: Counter[tuple[str, str]] = Counter()  # abandoned: (stream, reason) -> frames
        self.filtered: Counter[str] = Counter()  # results processors chose not to pass on
        self.processor_errors: Counter[str] = Counter()

    def on_result(self, result: BatchResult) -> int:
        """A worker's batch; returns how many results went to the sinks."""
        if result.images and self.snapshots is not None:
            self._offer_snapshots(result)
        return self._emit(self.reorder.add(result.batch_id, result.results))

    def _offer_snapshots(self, result: BatchResult) -> None:
        """Frames with pixels go to the snapshot writer with their detections (before the
        reorder: a snapshot need not wait for an earlier batch)."""
        assert self.snapshots is not None
        by_frame = {(r.frame.stream_id, r.frame.seq): r for r in result.results}
        for image in result.images:
            found = by_frame.get((image.stream_id, image.seq))
            if found is not None:
                self.snapshots.offer(found, image.pixels)

    def skip_stale(self, timeout_s: float = GAP_TIMEOUT_S) -> int:
        skipped = len(self.reorder.skipped)
        released = self._emit(self.reorder.skip_stale(timeout_s))
        if len(self.reorder.skipped) > skipped:
            log.error("output: gave up waiting for batch(es) %s", self.reorder.skipped[skipped:])
        return released

    def on_abandoned(
        self,
        batch_id: int,
        frames: tuple[tuple[str, int], ...] = (),
        reason: str = "worker_lost",
    ) -> int:
        """No worker will deliver ``batch_id``: count its frames lost, unless it was
        already delivered (then the abandon is the duplicate)."""
        duplicates = self.reorder.duplicates
        released = self._emit(self.reorder.abandon(batch_id))
        if self.reorder.duplicates == duplicates:
            for stream_id, n in frames:
                self.lost[(stream_id, reason)] += n
        return released

    def _emit(self, batches: list[tuple[FrameResult, ...]]) -> int:
        if not batches:
            return 0
        results = [r for batch in batches for r in batch]
        if not results:  # batches of other output processes' streams only
            return 0
        for processor in self.processors:
            results = self._process(processor, results)
        for sink in self.sinks:
            try:
                sink.write(results)
            except Exception:
                self.sink_errors[sink.name] += 1
                if self.sink_errors[sink.name] == 1:
                    log.exception("sink %s failed (further failures only counted)", sink.name)
        return len(results)

    def _process(self, processor: Processor, results: list[FrameResult]) -> list[FrameResult]:
        """A processor that raises is skipped for this batch (counted, logged once); results
        it filters out are counted as dropped (``filtered``), never silently gone."""
        name = type(processor).__name__
        try:
            kept = processor.process(results)
        except Exception:
            self.processor_errors[name] += 1
            if self.processor_errors[name] == 1:
                log.exception("processor %s failed (further failures only counted)", name)
            return results
        if len(kept) != len(results):
            before = Counter(r.frame.stream_id for r in results)
            before.subtract(Counter(r.frame.stream_id for r in kept))
            self.filtered.update({sid: n for sid, n in before.items() if n > 0})
        return kept

    @property
    def primary(self) -> Sink:
        """The sink whose counts are 'published' (the first)."""
        return self.sinks[0]

    def stats(self, final: bool = False) -> OutputStats:
        sink = self.primary
        dropped = sink.drop_counts()
        dropped += [(sid, reason, n) for (sid, reason), n in self.lost.items() if n]
        dropped += [(sid, "filtered", n) for sid, n in self.filtered.items() if n]
        return OutputStats(
            ts=time.time(),
            published=tuple(sink.published.items()),
            dropped=tuple(dropped),
            pending=sink.pending,
            connected=sink.connected,
            last_error=sink.last_error,
            final=final,
            pid=os.getpid(),
            held_batches=self.reorder.held,
            latency=sink.latency.snapshot() if sink.latency is not None else (),
            publish=sink.publish_stats(),
            fenced=tuple(sink.fenced_drops()),
            shard=self.shard,
        )

    def start(self) -> None:
        for sink in self.sinks:
            sink.start()
        if self.snapshots is not None:
            self.snapshots.start()

    def stop(self, flush_timeout: float) -> None:
        if self.snapshots is not None:
            self.snapshots.stop()
        for sink in self.sinks:
            try:
                sink.stop(flush_timeout)
            except Exception:
                log.exception("sink %s failed to stop", sink.name)


@dataclass(frozen=True)
class OutputSpec:
    """Everything the output process needs (picklable)."""

    redis: RedisConfig
    redis_url: str
    model_id: str
    first_batch_id: int = 1
    flush_timeout_s: float = 5.0
    snapshot_interval_s: float = 0.0  # 0: no snapshots
    tracking: tuple[tuple[str, TrackingConfig], ...] = ()  # streams that track, and how
    # a fleet node's lease values per stream ((first seq, value, generation), ...) of the
    # streams in its pipeline (forgotten when they leave it); None: not a fleet node, writes
    # are not fenced
    fences: tuple[tuple[str, Epochs], ...] | None = None
    # the pipeline's run: tags the spool records, so a restarted output process counts
    # the entries its predecessor spooled as its own (published when written), not foreign
    run_id: str | None = None
    # which output process this is (visionflow.workers.shards): it gets the results of the
    # streams whose shard this is, and tells the status board so
    shard: int = 0


@dataclass(frozen=True)
class SetTracking:
    """Output inbox message: start, change or stop (None) tracking one stream at run time."""

    stream_id: str
    config: TrackingConfig | None


def build_stage(spec: OutputSpec) -> OutputStage:
    """Detections first (the primary sink, whose counts are 'published'), then counts, then
    tracking events; the tracker runs before them (after the reorder buffer); snapshots
    beside them (they need pixels, which only some results carry)."""
    tracker = TrackingProcessor(dict(spec.tracking))

    def events_maxlen(stream_id: str) -> int:
        config = tracker.configs.get(stream_id)
        return config.events_maxlen if config is not None else 10_000

    fences = FenceBook(spec.fences) if spec.fences is not None else None
    sinks: list[Sink] = [
        RedisStreamSink(spec.redis, spec.redis_url, spec.model_id, fences, spec.run_id)
    ]
    if spec.redis.counts_retention_s > 0:
        sinks.append(CountsSink(spec.redis, spec.redis_url))
    sinks.append(
        RedisEventSink(spec.redis, spec.redis_url, events_maxlen, spec.redis.counts_retention_s)
    )
    snapshots = None
    if spec.snapshot_interval_s > 0:
        snapshots = SnapshotWriter(spec.redis, spec.redis_url, spec.snapshot_interval_s)
    return OutputStage(
        sinks,
        processors=[tracker],
        first_batch_id=spec.first_batch_id,
        snapshots=snapshots,
        fences=fences,
        shard=spec.shard,
    )


def _set_tracking(stage: OutputStage, msg: SetTracking) -> None:
    for processor in stage.processors:
        if isinstance(processor, TrackingProcessor):
            processor.configure(msg.stream_id, msg.config)


def serve(stage: OutputStage, inbox: Any, control: Any, flush_timeout: float) -> None:
    """Move messages from ``inbox`` through ``stage`` until ``None`` arrives."""
    stage.start()
    next_stats = 0.0
    heap = HeapTrimmer()
    readers = ChannelReaders(inbox)
    try:
        while True:
            heap.maybe_trim()
            if time.monotonic() >= next_stats:
                control.put(stage.stats())
                next_stats = time.monotonic() + STATS_S
            stage.skip_stale()
            try:
                msg = readers.get(timeout=STATS_S / 2)
            except queue.Empty:
                continue
            if msg is None:  # the workers have exited: their channels hold the last results
                for last in readers.drain():
                    _handle(stage, readers, last)
                stage.skip_stale(0.0)  # stopping: what waits behind a missing batch is written
                break
            _handle(stage, readers, msg)
    finally:
        stage.stop(flush_timeout)
        control.put(stage.stats(final=True))


def _handle(stage: OutputStage, readers: ChannelReaders, msg: object) -> None:
    """One message from the inbox or a results channel."""
    if isinstance(msg, BatchResult):
        stage.on_result(msg)
    elif isinstance(msg, BatchAbandoned):
        # a result its worker sent before dying travels on another channel than this
        # message: read them all first, so the result, not the abandonment, decides
        for result in readers.drain():
            _handle(stage, readers, result)
        stage.on_abandoned(msg.batch_id, msg.frames, msg.reason)
    elif isinstance(msg, SetTracking):
        _set_tracking(stage, msg)
    elif isinstance(msg, SetFence) and stage.fences is not None:
        stage.fences.set(msg.stream_id, msg.token, msg.first_seq, msg.generation)
    elif isinstance(msg, ForgetFence) and stage.fences is not None:
        stage.fences.forget(msg.stream_id)
    elif isinstance(msg, ResultsChannel):
        readers.add(msg.channel_id, msg.conn)


def output_main(spec: OutputSpec, inbox: Any, control: Any, log_level: int) -> None:
    """Entry point of the output process."""
    setup_child_logging(log_level)
    exit_with_parent()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the pipeline decides when we stop (after
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # the workers drained): not a group signal
    log.debug("output process %d started", os.getpid())
    stage = build_stage(spec)
    # what the imports and the stage made lives as long as the process: out of the collector's
    # way, a full collection no longer walks it (bench/output_stage.py; collected first, so
    # no garbage cycle is frozen for good)
    gc.collect()
    gc.freeze()
    serve(stage, inbox, control, spec.flush_timeout_s)
