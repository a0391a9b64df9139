"""Writing detections and status to Redis, surviving Redis going away.

Results wait in a bounded buffer; a thread writes them in pipelined batches
(``XADD ... MAXLEN ~ n``).  When Redis is unreachable the thread keeps the batch it could
not write, retries with jittered backoff, and the buffer drops its oldest entries beyond
``buffer_max_entries``, counting each drop by stream (reason ``redis_unavailable``).
Nothing here raises into the pipeline.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Mapping

import redis

from visionflow.config import RedisConfig
from visionflow.pipeline.frames import FrameResult
from visionflow.schema import detections_key, encode_entry
from visionflow.streams.backoff import Backoff
from visionflow.streams.urls import redact_text, redact_url

log = logging.getLogger("visionflow.publisher")
StatusSource = Callable[[], Mapping[str, Mapping[str, str]]]


class RedisPublisher:
    """A background thread that owns the Redis connection."""

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
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._status_source: StatusSource | None = None
        self._backoff = Backoff(0.2, 5.0, 2.0, 0.5)
        self.connected = False
        self.last_error: str | None = None
        self.published: Counter[str] = Counter()
        self.dropped: Counter[str] = Counter()
        self.thread = threading.Thread(target=self._run, name="redis-publisher", daemon=True)

    # ---- producer side ------------------------------------------------------------
    def submit(self, results: list[FrameResult]) -> None:
        """Queue results for writing (never blocks; drops the oldest when full)."""
        with self._cond:
            self._buffer.extend(results)
            overflow = len(self._buffer) - self.config.buffer_max_entries
            for _ in range(max(0, overflow)):
                self.dropped[self._buffer.popleft().frame.stream_id] += 1
            self._cond.notify()

    def set_status_source(self, source: StatusSource) -> None:
        """A callable returning ``{redis key: hash fields}`` written every status interval."""
        self._status_source = source

    @property
    def pending(self) -> int:
        return len(self._buffer)

    def start(self) -> None:
        self.thread.start()

    def stop(self, flush_timeout: float = 5.0) -> None:
        """Write what is buffered (up to ``flush_timeout``), then stop the thread."""
        deadline = time.monotonic() + flush_timeout
        while self._buffer and self.connected and time.monotonic() < deadline:
            time.sleep(0.02)
        self._stop.set()
        with self._cond:
            self._cond.notify()
        self.thread.join(timeout=flush_timeout + self.config.socket_timeout_s)
        if self.connected:  # leave the final states (stopped) behind for operators
            try:
                self._write_status()
            except (redis.RedisError, OSError) as exc:
                log.warning("redis %s: final status not written: %s", self.safe_url, exc)
        self._client.close()

    # ---- writer thread -----------------------------------------------------------
    def _take(self) -> list[FrameResult]:
        with self._cond:
            if not self._buffer:
                self._cond.wait(timeout=self.config.status_interval_s / 2)
            n = min(len(self._buffer), self.config.pipeline_max_entries)
            return [self._buffer[i] for i in range(n)]

    def _commit(self, count: int) -> None:
        with self._cond:
            for _ in range(count):
                if not self._buffer:
                    break
                self.published[self._buffer.popleft().frame.stream_id] += 1

    def _run(self) -> None:
        next_status = 0.0
        while not self._stop.is_set():
            batch = self._take()
            try:
                if batch:
                    self._write(batch)
                    self._commit(len(batch))
                if time.monotonic() >= next_status:
                    self._write_status()
                    next_status = time.monotonic() + self.config.status_interval_s
                self._set_connected(True, None)
            except (redis.RedisError, OSError) as exc:
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

    def _write_status(self) -> None:
        if self._status_source is None:
            return
        status = self._status_source()
        if not status:
            return
        pipe = self._client.pipeline(transaction=False)
        for key, fields in status.items():
            if key.endswith(":streams"):
                pipe.delete(key)
                if fields:
                    pipe.sadd(key, *fields.keys())
            else:
                pipe.hset(key, mapping=dict(fields))  # type: ignore[arg-type]
        pipe.execute()

    def _set_connected(self, ok: bool, exc: BaseException | None) -> None:
        if ok and not self.connected:
            log.info("redis %s: connected", self.safe_url)
            self._backoff.reset()
        if not ok:
            message = redact_text(f"{type(exc).__name__}: {exc}")
            if self.connected or message != self.last_error:
                log.warning("redis %s: unavailable (%s); buffering", self.safe_url, message)
            self.last_error = message
        self.connected = ok
