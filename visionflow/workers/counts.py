"""Counts per stream, per label, per minute: a sink that aggregates boxes and flushes them.

Layout (:mod:`visionflow.schema`): hash ``<prefix>:counts:<bucket_start>`` per minute (the
bucket of each frame's ``capture_ts``), field ``<stream_id>|<label>|boxes`` -> boxes seen in
that minute.  Buckets with no box have no field (absent = 0).  :class:`CountsSink` adds the
results it is given to an in-memory tally (``write`` never touches the network) and a thread
flushes the tally about once a second in one pipeline through
:func:`visionflow.counts.add_counts` (``HINCRBY`` per field, ``EXPIRE <retention>`` per bucket
key), the one writer convention every count shares.

Guarantee: at most once, best effort.  A flush that fails (Redis unreachable, a timeout) is
dropped and counted (``lost_boxes``), never retried, because part of a pipeline may have been
applied and a retry would count those twice; so an outage leaves the counts of that time short.
Detections are unaffected: they have their own sink with a spool, and this sink is isolated
like any other (:class:`~visionflow.workers.output.OutputStage`).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Iterable, Sequence

import redis

from visionflow.config import RedisConfig
from visionflow.counts import CountKey, add_counts, bucket_start
from visionflow.pipeline.frames import FrameResult
from visionflow.streams.backoff import Backoff
from visionflow.streams.urls import redact_text, redact_url
from visionflow.workers.sinks import Sink, sink_client

log = logging.getLogger("visionflow.counts")
FLUSH_S = 1.0

Tally = Counter[CountKey]  # (bucket start, stream, label, "boxes") -> boxes
__all__ = ["CountsSink", "Tally", "bucket_start", "tally"]


def tally(results: Iterable[FrameResult], into: Tally | None = None) -> Tally:
    """Boxes per (bucket, stream, label, ``boxes``) of ``results``."""
    counts: Tally = Counter() if into is None else into
    for result in results:
        if not result.detections:
            continue
        frame = result.frame
        start = bucket_start(frame.capture_ts)
        for det in result.detections:
            counts[(start, frame.stream_id, det.label, "boxes")] += 1
    return counts


class CountsSink(Sink):
    """Aggregates boxes per minute bucket; a thread writes them with ``HINCRBY``."""

    name = "counts"

    def __init__(self, config: RedisConfig, url: str, flush_s: float = FLUSH_S) -> None:
        self.config, self.flush_s = config, flush_s
        self.retention_s = config.counts_retention_s
        self.safe_url = redact_url(url)
        self._client = sink_client(config, url)
        self._tally: Tally = Counter()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._backoff = Backoff(0.5, 10.0, 2.0, 0.5)
        self._retry_at = 0.0
        self._connected = False
        self._last_error: str | None = None
        self.published: Counter[str] = Counter()  # frames whose boxes were tallied
        self.dropped: Counter[str] = Counter()  # unused: counts never hold detections back
        self.written_boxes = 0
        self.lost_boxes = 0  # boxes of flushes that failed (Redis down): not in the counts
        self.flushes = 0
        self.thread = threading.Thread(target=self._run, name="counts-sink", daemon=True)

    def write(self, results: Sequence[FrameResult]) -> None:
        with self._lock:
            tally(results, self._tally)
            self.published.update(r.frame.stream_id for r in results)

    def start(self) -> None:
        self.thread.start()

    def stop(self, flush_timeout: float = 5.0) -> None:
        self._stop.set()
        if self.thread.ident is not None:
            self.thread.join(timeout=flush_timeout + self.config.socket_timeout_s)
        if not self.thread.is_alive():
            self.flush(force=True)  # the last second's counts
        self._client.close()

    def _run(self) -> None:
        while not self._stop.wait(self.flush_s):
            try:
                self.flush()
            except Exception:  # a bug must not end the thread; the counts it held are lost
                log.exception("counts: flush failed")

    def _take(self) -> Tally:
        with self._lock:
            taken, self._tally = self._tally, Counter()
        return taken

    def flush(self, force: bool = False) -> int:
        """Write the tally in one pipeline; returns the boxes written.  While Redis is
        backing off (after a failure), what comes in is dropped and counted, not kept."""
        taken = self._take()
        if not taken:
            return 0
        boxes = sum(taken.values())
        if not force and time.monotonic() < self._retry_at:
            self.lost_boxes += boxes
            return 0
        try:
            self._write(taken)
        except (redis.RedisError, OSError) as exc:
            self.lost_boxes += boxes
            self._down(exc)
            return 0
        if not self._connected:
            log.info("counts: redis %s reachable, writing counts", self.safe_url)
            self._backoff.reset()
        self._connected, self._retry_at = True, 0.0
        self.written_boxes += boxes
        self.flushes += 1
        return boxes

    def _write(self, taken: Tally) -> None:
        pipe = self._client.pipeline(transaction=False)
        add_counts(pipe, self.config.key_prefix, taken, self.retention_s)
        pipe.execute()

    def _down(self, exc: BaseException) -> None:
        message = redact_text(f"{type(exc).__name__}: {exc}")
        if self._connected or message != self._last_error:
            log.warning(
                "counts: not written to redis %s (%s); counts of this time are lost",
                self.safe_url,
                message,
            )
        self._connected, self._last_error = False, message
        self._retry_at = time.monotonic() + self._backoff.next_delay()
