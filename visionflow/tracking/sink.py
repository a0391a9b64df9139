"""The events-and-counts sink: tracking's output to Redis, beside the detections sink.

Takes the events and count increments the tracking processor put on each result and writes
them from a background thread in rounds.  A round is one Lua script (one ``EVALSHA``): it
checks the sink's round marker ``<prefix>:events:round-<sink uuid>`` (a string holding the
number of the last round applied, ``EX 3600``) and, only when this round's number is above
it, stores the number and does the round's ``XADD`` s (to ``<prefix>:events:<stream_id>``
with ``MAXLEN ~``) and its ``HINCRBY`` + ``EXPIRE`` on the counts buckets (the writes of
:func:`visionflow.counts.count_writes`).  A round that fails, or whose reply never came (the
script may have run), is resent unchanged with the same number, so it is applied at most
once: an event is not added twice and a count is not applied twice.  While Redis is
unreachable the unsent round waits, new events wait behind it in a bounded buffer (the oldest
dropped and counted beyond it) and counts add up in memory.

The thread starts with the first result that carries an event or a count, so an output
process where no stream tracks holds no thread and opens no connection for it (tracking can
still be turned on for a stream at run time).
"""

from __future__ import annotations

import json
import logging
import threading
import uuid
from collections import Counter, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import redis

from visionflow.config import RedisConfig
from visionflow.counts import COUNTS_RETENTION_S, CountKey, bucket_start, count_writes
from visionflow.pipeline.frames import FrameResult
from visionflow.redis_client import connect
from visionflow.schema import encode_event, events_key
from visionflow.streams.backoff import Backoff
from visionflow.streams.urls import redact_text
from visionflow.workers.sinks import Sink

log = logging.getLogger("visionflow.tracking")
MAX_EVENTS_PER_ROUND = 512
ROUND_MARKER_TTL_S = 3600

# KEYS[1]: the round marker; KEYS[2..]: every key the round writes.  ARGV: round number,
# marker TTL, counts retention, the round as JSON {events: [[key#, maxlen, [f, v, ...]]],
# incr: [[key#, field, n]], expire: [key#]} (key# indexes KEYS).
_ROUND_LUA = """
local round = tonumber(ARGV[1])
if tonumber(redis.call('GET', KEYS[1]) or '0') >= round then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
local ops = cjson.decode(ARGV[4])
for _, e in ipairs(ops.events) do
  redis.call('XADD', KEYS[e[1]], 'MAXLEN', '~', e[2], '*', unpack(e[3]))
end
for _, c in ipairs(ops.incr) do redis.call('HINCRBY', KEYS[c[1]], c[2], c[3]) end
for _, k in ipairs(ops.expire) do redis.call('EXPIRE', KEYS[k], ARGV[3]) end
return 1
"""

Event = tuple[str, dict[str, str]]  # (stream id, encoded event)


@dataclass(frozen=True)
class _Round:
    number: int
    events: list[Event]
    counts: Counter[CountKey]


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
        self._client = connect(  # connects on its first command, not here
            url,
            config,
            socket_timeout=config.socket_timeout_s,
            socket_connect_timeout=config.socket_timeout_s,
        )
        self._script = self._client.register_script(_ROUND_LUA)
        self.marker = events_key(config.key_prefix, f"round-{uuid.uuid4().hex}")
        self._rounds = 0
        self._unsent: _Round | None = None  # the round to (re)send, same number each time
        self._events: deque[Event] = deque()
        self._counts: Counter[CountKey] = Counter()
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._started = False
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
                if self._started and self.thread.ident is None and not self._stop.is_set():
                    self.thread.start()  # the first event or count of this process
                self._cond.notify()

    @property
    def pending(self) -> int:
        unsent = self._unsent
        return len(self._events) + (len(unsent.events) if unsent is not None else 0)

    def start(self) -> None:
        with self._cond:
            self._started = True
            if (self._events or self._counts) and self.thread.ident is None:
                self.thread.start()

    def stop(self, flush_timeout: float = 5.0) -> None:
        self._stop.set()
        with self._cond:
            self._cond.notify()
        if self.thread.ident is not None:
            self.thread.join(timeout=flush_timeout + self.config.socket_timeout_s)
        self._client.close()

    def _take(self) -> _Round | None:
        with self._cond:
            if self._unsent is not None:
                return self._unsent
            if not self._events and not self._counts and not self._stop.is_set():
                self._cond.wait(timeout=0.25)
            if not self._events and not self._counts:
                return None
            n = min(len(self._events), MAX_EVENTS_PER_ROUND)
            events = [self._events.popleft() for _ in range(n)]
            counts, self._counts = self._counts, Counter()
            self._rounds += 1
            self._unsent = _Round(self._rounds, events, counts)
            return self._unsent

    def _run(self) -> None:
        while True:
            stopping = self._stop.is_set()
            work = self._take()
            ok = self._flush(work) if work is not None else True
            if stopping and not ok:  # unreachable at stop: what is left is lost, counted
                with self._cond:
                    lost = list(self._events) + (self._unsent.events if self._unsent else [])
                    self.dropped.update(sid for sid, _ in lost)
                return
            if stopping and not (self._events or self._counts):
                return
            if not ok:
                self._stop.wait(self._backoff.next_delay())

    def _payload(self, work: _Round) -> tuple[list[str], str]:
        keys: dict[str, int] = {self.marker: 1}

        def index(key: str) -> int:
            return keys.setdefault(key, len(keys) + 1)

        prefix = self.config.key_prefix
        events = [
            [index(events_key(prefix, sid)), self.maxlen_of(sid), _flat(fields)]
            for sid, fields in work.events
        ]
        incr: list[list[object]] = []
        expire: list[int] = []
        if self.retention_s > 0:  # redis.counts_retention_s: 0 turns every count off
            incrs, buckets = count_writes(prefix, work.counts)
            incr = [[index(key), field, n] for key, field, n in incrs]
            expire = [index(key) for key in buckets]
        body = json.dumps({"events": events, "incr": incr, "expire": expire})
        return list(keys), body

    def _flush(self, work: _Round) -> bool:
        keys, body = self._payload(work)
        try:
            self._script(keys=keys, args=[work.number, ROUND_MARKER_TTL_S, self.retention_s, body])
        except (redis.RedisError, OSError) as exc:
            if self._connected:
                log.warning("events sink: Redis write failed: %s", redact_text(str(exc)))
            self._connected, self._last_error = False, redact_text(str(exc))
            return False
        with self._cond:
            self._unsent = None
        self._connected, self._last_error = True, None
        self._backoff.reset()
        for sid, _ in work.events:
            self.published[sid] += 1
        return True


def _flat(fields: dict[str, str]) -> list[str]:
    return [item for pair in fields.items() for item in pair]
