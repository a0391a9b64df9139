"""The events-and-counts sink: tracking's output to Redis, beside the detections sink.

Takes the events and count increments the tracking processor put on each result and writes
them from a background thread, one ``MULTI``/``EXEC`` per round (``XADD`` to
``<prefix>:events:<stream_id>`` with ``MAXLEN ~``, ``HINCRBY`` + ``EXPIRE`` on the counts
buckets through :func:`visionflow.counts.add_counts`), so a failed round is retried whole
and a count is not applied twice.  While Redis is unreachable events wait in a bounded buffer
(the oldest dropped and counted beyond it) and counts add up in memory.
"""

from __future__ import annotations

import logging
import threading
from collections import Counter, deque
from collections.abc import Callable, Sequence
from typing import Any

import redis

from visionflow.config import RedisConfig
from visionflow.counts import COUNTS_RETENTION_S, CountKey, add_counts, bucket_start
from visionflow.pipeline.frames import FrameResult
from visionflow.schema import encode_event, events_key
from visionflow.streams.backoff import Backoff
from visionflow.streams.urls import redact_text
from visionflow.workers.sinks import Sink

log = logging.getLogger("visionflow.tracking")
MAX_EVENTS_PER_ROUND = 512


class RedisEventSink(Sink):
    """Tracking events and counts to Redis (a secondary sink: it never counts as published)."""

    name = "events"

    def __init__(
        self,
        config: RedisConfig,
        url: str,
        maxlen_of: Callable[[str], int],
        retention_s: int = COUNTS_RETENTION_S,
        max_buffered: int = 50_000,
    ) -> None:
        self.config, self.maxlen_of = config, maxlen_of
        self.retention_s, self.max_buffered = retention_s, max_buffered
        self._client = redis.Redis.from_url(
            url,
            socket_timeout=config.socket_timeout_s,
            socket_connect_timeout=config.socket_timeout_s,
        )
        self._events: deque[tuple[str, dict[str, str]]] = deque()
        self._counts: Counter[CountKey] = Counter()
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._backoff = Backoff(0.2, 5.0, 2.0, 0.5)
        self._connected = True
        self._last_error: str | None = None
        self.published: Counter[str] = Counter()  # events written, by stream
        self.dropped: Counter[str] = Counter()  # events dropped (buffer full), by stream
        self.thread = threading.Thread(target=self._run, name="events-sink", daemon=True)

    def write(self, results: Sequence[FrameResult]) -> None:
        with self._cond:
            for r in results:
                sid = r.frame.stream_id
                for event in r.events:
                    self._events.append((sid, encode_event(sid, event)))
                if r.counts:
                    bucket = bucket_start(r.frame.capture_ts)
                    for label, metric in r.counts:
                        self._counts[(bucket, sid, label, metric)] += 1
            while len(self._events) > self.max_buffered:
                self.dropped[self._events.popleft()[0]] += 1
            if self._events or self._counts:
                self._cond.notify()

    @property
    def pending(self) -> int:
        return len(self._events)

    @property
    def connected(self) -> bool:
        return self._connected

    @property
    def last_error(self) -> str | None:
        return self._last_error

    def start(self) -> None:
        self.thread.start()

    def stop(self, flush_timeout: float = 5.0) -> None:
        self._stop.set()
        with self._cond:
            self._cond.notify()
        self.thread.join(timeout=flush_timeout + self.config.socket_timeout_s)
        self._client.close()

    def _take(self) -> tuple[list[tuple[str, dict[str, str]]], Counter[CountKey]]:
        with self._cond:
            if not self._events and not self._counts and not self._stop.is_set():
                self._cond.wait(timeout=0.25)
            n = min(len(self._events), MAX_EVENTS_PER_ROUND)
            events = [self._events.popleft() for _ in range(n)]
            counts, self._counts = self._counts, Counter()
            return events, counts

    def _put_back(
        self, events: list[tuple[str, dict[str, str]]], counts: Counter[CountKey]
    ) -> None:
        with self._cond:
            self._events.extendleft(reversed(events))
            self._counts.update(counts)

    def _run(self) -> None:
        while True:
            stopping = self._stop.is_set()
            events, counts = self._take()
            ok = self._flush(events, counts) if events or counts else True
            if stopping and not ok:  # unreachable at stop: what is left is lost, counted
                with self._cond:
                    for sid, _ in self._events:
                        self.dropped[sid] += 1
                return
            if stopping and not (self._events or self._counts):
                return
            if not ok:
                self._stop.wait(self._backoff.next_delay())

    def _flush(self, events: list[tuple[str, dict[str, str]]], counts: Counter[CountKey]) -> bool:
        try:
            pipe = self._client.pipeline(transaction=True)
            prefix = self.config.key_prefix
            for sid, fields in events:
                entry: dict[Any, Any] = dict(fields)
                pipe.xadd(
                    events_key(prefix, sid), entry, maxlen=self.maxlen_of(sid), approximate=True
                )
            if self.retention_s > 0:  # redis.counts_retention_s: 0 turns every count off
                add_counts(pipe, prefix, counts, self.retention_s)
            pipe.execute()
        except (redis.RedisError, OSError) as exc:
            self._put_back(events, counts)
            if self._connected:
                log.warning("events sink: Redis write failed: %s", redact_text(str(exc)))
            self._connected, self._last_error = False, redact_text(str(exc))
            return False
        self._connected, self._last_error = True, None
        self._backoff.reset()
        for sid, _ in events:
            self.published[sid] += 1
        return True
