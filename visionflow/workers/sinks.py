"""Sinks: where the output stage sends results, behind one interface.

:class:`Sink` is what a new output implements (a webhook, a file, MQTT, ...).  The output
stage fans results out to every sink and isolates them: one sink that raises is counted and
logged, the others go on.  :class:`RedisStreamSink` is the first sink: results wait in a
bounded buffer; a thread writes them in pipelined batches (``XADD ... MAXLEN ~ n``).  When
Redis is unreachable the thread keeps the batch it could not write, retries with jittered
backoff, and the buffer drops its oldest entries beyond ``buffer_max_entries``, counting
each drop by stream (reason ``redis_unavailable``).  Nothing here raises into the pipeline.
"""

from __future__ import annotations

import abc
import logging
import threading
import time
from collections import Counter, deque
from collections.abc import Sequence

import redis

from visionflow.config import RedisConfig
from visionflow.pipeline.frames import FrameResult
from visionflow.schema import detections_key, encode_entry
from visionflow.streams.backoff import Backoff
from visionflow.streams.urls import redact_text, redact_url

log = logging.getLogger("visionflow.sinks")


class Sink(abc.ABC):
    """One output of the pipeline.  :meth:`write` must not block for long (buffer and
    write from a thread of your own); counters are read by the output stage's stats."""

    name: str = "sink"
    published: Counter[str]
    dropped: Counter[str]

    def start(self) -> None:  # noqa: B027 - optional hook
        """Start background work (connections, threads)."""

    @abc.abstractmethod
    def write(self, results: Sequence[FrameResult]) -> None:
        """Accept results, oldest first, every stream's in ``seq`` order."""

    @property
    def pending(self) -> int:
        return 0

    @property
    def connected(self) -> bool:
        return True

    @property
    def last_error(self) -> str | None:
        return None

    def stop(self, flush_timeout: float = 5.0) -> None:  # noqa: B027 - optional hook
        """Write what is buffered (up to ``flush_timeout``) and release resources."""


class RedisStreamSink(Sink):
    """Detections to one Redis Stream per camera, from a background thread."""

    name = "redis"

    def __init__(self, config: RedisConfig, url: str, model_id: str) -> None:
        self.config, self.model_id = config, model_id
        self.safe_url = redact_url(url)
        self._client = redis.Redis.from_url(
            url,
            socket_timeout=config.socket_timeout_s,
            socket_connect_timeout=config.socket_timeout_s,
            health_check_interval=0,
        )
        self._buffer: deque[FrameResult] = deque()
        self._writing: list[FrameResult] = []  # taken out of the buffer, being written
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._backoff = Backoff(0.2, 5.0, 2.0, 0.5)
        self._connected = False
        self._last_error: str | None = None
        self.published: Counter[str] = Counter()
        self.dropped: Counter[str] = Counter()
        self.thread = threading.Thread(target=self._run, name="redis-sink", daemon=True)

    # ---- producer side ------------------------------------------------------------
    def write(self, results: Sequence[FrameResult]) -> None:
        """Queue results for writing (never blocks; drops the oldest when full)."""
        with self._cond:
            self._buffer.extend(results)
            overflow = len(self._buffer) - self.config.buffer_max_entries
            for _ in range(max(0, overflow)):
                self.dropped[self._buffer.popleft().frame.stream_id] += 1
            self._cond.notify()

    @property
    def pending(self) -> int:
        return len(self._buffer) + len(self._writing)

    @property
    def connected(self) -> bool:
        return self._connected

    @property
    def last_error(self) -> str | None:
        return self._last_error

    def start(self) -> None:
        self.thread.start()

    def stop(self, flush_timeout: float = 5.0) -> None:
        """Write what is buffered (up to ``flush_timeout``), then stop the thread."""
        deadline = time.monotonic() + flush_timeout
        while self.pending and self.connected and time.monotonic() < deadline:
            time.sleep(0.02)
        self._stop.set()
        with self._cond:
            self._cond.notify()
        self.thread.join(timeout=flush_timeout + self.config.socket_timeout_s)
        self._client.close()

    # ---- writer thread -----------------------------------------------------------
    def _take(self) -> list[FrameResult]:
        """Move the next batch out of the buffer (overflow can no longer drop what is being
        written, nor make another entry count as written)."""
        with self._cond:
            if not self._buffer:
                self._cond.wait(timeout=self.config.status_interval_s / 2)
            n = min(len(self._buffer), self.config.pipeline_max_entries)
            self._writing = [self._buffer.popleft() for _ in range(n)]
            return self._writing

    def _commit(self, batch: list[FrameResult]) -> None:
        with self._cond:
            for result in batch:
                self.published[result.frame.stream_id] += 1
            self._writing = []

    def _put_back(self, batch: list[FrameResult]) -> None:
        """Not written: back to the front, oldest first; the cap still holds."""
        with self._cond:
            self._buffer.extendleft(reversed(batch))
            self._writing = []
            overflow = len(self._buffer) - self.config.buffer_max_entries
            for _ in range(max(0, overflow)):
                self.dropped[self._buffer.popleft().frame.stream_id] += 1

    def _run(self) -> None:
        while not self._stop.is_set():
            batch = self._take()
            try:
                if batch:
                    self._write(batch)
                    self._commit(batch)
                    self._set_connected(True, None)
                elif not self._connected:
                    self._client.ping()
                    self._set_connected(True, None)
            except (redis.RedisError, OSError) as exc:
                self._put_back(batch)
                self._set_connected(False, exc)
                self._stop.wait(self._backoff.next_delay())

    def _write(self, batch: list[FrameResult]) -> None:
        pipe = self._client.pipeline(transaction=False)
        now = time.time()
        prefix = self.config.key_prefix
        for result in batch:
            pipe.xadd(
                detections_key(prefix, result.frame.stream_id),
                encode_entry(result, self.model_id, now),  # type: ignore[arg-type]
                maxlen=self.config.maxlen,
                approximate=self.config.approximate_trim,
            )
        pipe.execute()

    def _set_connected(self, ok: bool, exc: BaseException | None) -> None:
        if ok and not self._connected:
            log.info("redis %s: connected", self.safe_url)
            self._backoff.reset()
        if not ok:
            message = redact_text(f"{type(exc).__name__}: {exc}")
            if self._connected or message != self._last_error:
                log.warning("redis %s: unavailable (%s); buffering", self.safe_url, message)
            self._last_error = message
        self._connected = ok
