"""Sinks: where the output stage sends results, behind one interface.

:class:`Sink` is what a new output implements (a webhook, a file, MQTT, ...).  The output
stage fans results out to every sink and isolates them: one sink that raises is counted and
logged, the others go on.  :class:`RedisStreamSink` is the first sink: results wait in a
bounded buffer; a thread writes them in pipelined batches (``XADD <key> MAXLEN ~ n <id>``)
with explicit, idempotent entry ids (:func:`visionflow.schema.next_entry_id`).  When Redis
is unreachable the thread keeps the batch it could not write and retries with jittered
backoff; after ``spool_after_s`` of outage, or once the buffer is more than half full during
one or while the spool is still being replayed (:func:`spill_due`), the buffer is spilled
to a durable on-disk spool (:mod:`visionflow.workers.spool`), replayed in
order before anything newer when Redis is back, also by the next sink started on the same
directory.  Without a spool (``spool_dir: ''``) the buffer drops its oldest entries beyond
``buffer_max_entries``, counting each drop by stream (reason ``redis_unavailable``); a full
spool drops its oldest segment, counted as ``spool_overflow`` (and, for this sink's own
entries, as ``redis_unavailable`` drops).  Nothing here raises into the pipeline.

Idempotence: an entry's id is fixed once, when it is first sent or spilled, and stays with it
through retries and the spool.  Redis refuses an ``XADD`` whose id is not above the stream's
last one ("equal or smaller than the target stream top item"); the sink then reads the entry
under that id: the same ``seq`` and ``capture_ts`` means an earlier attempt got there (the
reply or the cursor move was lost), counted ``duplicates_skipped`` and treated as written.
Anything else under or below that id (another writer, or the entry was trimmed/deleted before
the replay) gets a fresh id after the stream's last one, counted ``reassigned``.

Fencing (fleet nodes only, :mod:`visionflow.workers.fence`): each entry carries the lease
value its frame was read under (bound when the result enters the sink), and is written by
one Lua script that ``XADD`` s it only while the stream's lease still holds that value.  An
entry refused there (the lease expired or moved to another node) is not written, not re-ided
and not retried: it is counted in ``fenced`` and, for this sink's own entries, as a drop
(reason ``fenced``) of the stream's registration the value belongs to
(:meth:`RedisStreamSink.fenced_drops`); a spool replay acknowledges it like a written one, so
nothing waits behind it.  An entry the script finds already written under its id (a retry
whose first reply was lost) is counted ``duplicates_skipped`` and as written.  The script is
loaded (``SCRIPT LOAD``) on every connection and then sent by its SHA.  Without a fence book
(no ``fleet:`` section) the sink sends plain ``XADD`` s as before.
"""

from __future__ import annotations

import abc
import json
import logging
import os
import threading
import time
from collections import Counter, deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import redis
from redis.exceptions import NoPermissionError, NoScriptError

from visionflow.config import RedisConfig
from visionflow.errors import PublishError
from visionflow.pipeline.frames import FrameResult
from visionflow.redis_client import connect, denied, explain, fatal
from visionflow.schema import (
    StreamId,
    detections_key,
    encode_entry,
    entry_latency,
    fleet_lease_key,
    format_stream_id,
    next_entry_id,
    parse_stream_id,
)
from visionflow.streams.backoff import Backoff
from visionflow.streams.urls import redact_url
from visionflow.workers.fence import DUPLICATE, FENCED_XADD_LUA, Fence, FenceBook
from visionflow.workers.latency import LatencyBook
from visionflow.workers.spool import Spool, SpoolRecord
from visionflow.workers.status import PublishStats

log = logging.getLogger("visionflow.sinks")


class Sink(abc.ABC):
    """One output of the pipeline.  :meth:`write` must not block for long (buffer and
    write from a thread of your own); counters are read by the output stage's stats."""

    name: str = "sink"
    published: Counter[str]
    dropped: Counter[str]
    latency: LatencyBook | None = None  # per-stage latency of what it wrote (None: not kept)

    def start(self) -> None:  # noqa: B027 - optional hook
        """Start background work (connections, threads)."""

    @abc.abstractmethod
    def write(self, results: Sequence[FrameResult]) -> None:
        """Accept results, oldest first, every stream's in ``seq`` order."""

    @property
    def pending(self) -> int:
        return 0

    _connected: bool = True  # a sink with a connection keeps these two up to date
    _last_error: str | None = None

    @property
    def connected(self) -> bool:
        return self._connected

    @property
    def last_error(self) -> str | None:
        return self._last_error

    def publish_stats(self) -> PublishStats:
        """Failed writes and spool depth (a sink without either: zeros)."""
        return PublishStats()

    def drop_counts(self) -> list[tuple[str, str, int]]:
        """``(stream, reason, count)`` of the results this sink dropped: ``dropped`` is
        counted as ``redis_unavailable``."""
        return [(sid, "redis_unavailable", n) for sid, n in self.dropped.items() if n]

    def fenced_drops(self) -> list[tuple[str, int, int]]:
        """``(stream, registration generation, count)`` of its results the lease fence
        refused (a sink without a fence: none)."""
        return []

    def stop(self, flush_timeout: float = 5.0) -> None:  # noqa: B027 - optional hook
        """Write what is buffered (up to ``flush_timeout``) and release resources."""


def sink_client(config: RedisConfig, url: str) -> redis.Redis:
    """A client whose calls fail within ``socket_timeout_s`` (a sink thread must not hang)."""
    return connect(  # rediss:// with the configured CA / client certificate
        url,
        config,
        socket_timeout=config.socket_timeout_s,
        socket_connect_timeout=config.socket_timeout_s,
        health_check_interval=0,
    )


_TOO_SMALL = "equal or smaller"  # Redis: "The ID specified in XADD is equal or smaller ..."


@dataclass(frozen=True)
class _Entry:
    """A result on its way to Redis, with its fixed id (memory buffer, spool, retries)."""

    stream_id: str
    seq: int
    entry_id: StreamId
    fields: dict[str, str]  # latency_ms "publish" and "total" are set when it is written
    done_ts: float
    capture_ts: float
    own: bool = True  # this sink's result (counts as published), not one left by another
    spooled: bool = False  # read back from the spool
    fence: str | None = None  # the lease value it is written under (fleet; None: not known)
    generation: int = 0  # the stream's registration that value belongs to (fleet)
    # ``latency_ms`` of ``fields`` as a dict (None: read from ``fields`` when needed)
    stages: dict[str, float] | None = field(default=None, compare=False, repr=False)

    def to_record(self, run: str) -> tuple[str, bytes]:
        body: dict[str, Any] = {
            "id": format_stream_id(self.entry_id),
            "seq": self.seq,
            "f": self.fields,
            "done": self.done_ts,
            "cap": self.capture_ts,
            "run": run,
        }
        if self.fence is not None:
            body["fence"], body["gen"] = self.fence, self.generation
        return self.stream_id, json.dumps(body, separators=(",", ":")).encode()

    @staticmethod
    def from_record(record: SpoolRecord, run: str) -> _Entry:
        body = json.loads(record.data)
        return _Entry(
            stream_id=record.key,
            seq=int(body["seq"]),
            entry_id=parse_stream_id(body["id"]),
            fields={str(k): str(v) for k, v in body["f"].items()},
            done_ts=float(body["done"]),
            capture_ts=float(body["cap"]),
            own=body.get("run") == run,
            spooled=True,
            fence=body.get("fence"),
            generation=int(body.get("gen", 0)),
        )

    def latency(self, now: float) -> dict[str, float]:
        """``latency_ms`` as written at ``now`` (publish and total end then)."""
        stages = self.stages
        if stages is None:
            stages = json.loads(self.fields.get("latency_ms", "{}"))
        return {
            **stages,
            "publish": round(max(0.0, (now - self.done_ts) * 1000), 2),
            "total": round((now - self.capture_ts) * 1000, 2),
        }

    def final_fields(self, now: float) -> dict[str, str]:
        latency = json.dumps(self.latency(now), separators=(",", ":"))
        return {**self.fields, "latency_ms": latency}


def spill_due(
    buffered: int, buffer_max: int, down_for_s: float | None, spooled: int, spool_after_s: float
) -> bool:
    """Should the memory buffer (``buffered`` entries) go to the spool now?

    During an outage (``down_for_s``: seconds Redis has been unreachable), after
    ``spool_after_s`` or once the buffer is more than half full.  With Redis answering, only
    while the spool still holds entries (``spooled``) and the buffer is more than half full:
    the buffer must wait behind them anyway, and the spool keeps it from overflowing meanwhile.
    A backlog with Redis answering and the spool empty is written from memory: spilled, it
    would cost a disk write and read per entry for nothing (a SIGKILL loses a memory backlog
    below half the buffer either way).
    """
    half_full = buffered * 2 > buffer_max
    if down_for_s is not None:
        return half_full or down_for_s >= spool_after_s
    return half_full and spooled > 0


@dataclass(frozen=True)
class _Encoded:
    """A result as it entered the sink: its fields encoded at once (a backlog of strings costs
    the garbage collector nothing, one of detections a full collection of them all), its id
    not fixed yet, and (fleet) the lease value it was read under: a later lease of the
    stream never re-binds it."""

    stream_id: str
    seq: int
    fields: dict[str, str]
    done_ts: float
    capture_ts: float
    stages: dict[str, float]  # ``latency_ms`` of ``fields``, as a dict
    fence: Fence | None = None


_Buffered = _Encoded | _Entry


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class RedisStreamSink(Sink):
    """Detections to one Redis Stream per camera, from a background thread, at least once."""

    name = "redis"

    def __init__(
        self,
        config: RedisConfig,
        url: str,
        model_id: str,
        fences: FenceBook | None = None,
        run_id: str | None = None,
    ) -> None:
        """``fences``: a fleet node's lease values; each write is then fenced by them.
        ``run_id``: tags this sink's spool records (the pipeline's run: an output process
        restarted in the same run takes its predecessor's records as its own; random
        without one)."""
        self.config, self.model_id, self.fences = config, model_id, fences
        self.safe_url = redact_url(url)
        self._client = sink_client(config, url)
        self._fenced_xadd = (
            None if fences is None else self._client.register_script(FENCED_XADD_LUA)
        )
        self._script_loaded = False  # SCRIPT LOAD done on this connection
        self._buffer: deque[_Buffered] = deque()
        self._writing: list[_Buffered] = []  # taken out of the buffer, being written
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._backoff = Backoff(0.2, 5.0, 2.0, 0.5)
        self._connected = False
        self._down_since: float | None = None
        self._retry_at = 0.0
        self._last_error: str | None = None
        self._run_id = run_id or os.urandom(8).hex()  # tags this sink's records in the spool
        self._last_id: dict[str, StreamId] = {}  # per stream: the newest id given out
        self._synced: set[str] = set()  # streams whose last id was read from Redis
        self.spool: Spool | None = None
        self.published: Counter[str] = Counter()
        self.dropped: Counter[str] = Counter()
        self.spooled: Counter[str] = Counter()  # entries spilled to the spool
        self.replayed: Counter[str] = Counter()  # spool entries written (or found there)
        self.spool_overflow: Counter[str] = Counter()  # unwritten entries a full spool dropped
        self.duplicates_skipped: Counter[str] = Counter()  # already in Redis: not re-added
        self.reassigned: Counter[str] = Counter()  # id taken by another entry: given a new one
        self.fenced: Counter[str] = Counter()  # refused by the lease fence (any run's entries)
        # this sink's own among them, by (stream, registration generation): drops
        self.dropped_fenced: Counter[tuple[str, int]] = Counter()
        self.accepted = 0  # results handed to write()
        self.write_errors = 0  # batches Redis did not take (kept and retried, or spooled)
        self._spool_depth = (0, 0)  # (entries, bytes) waiting, noted by the writer thread
        self._latency = self.latency = LatencyBook()  # latency_ms of own entries, once written
        self.thread = threading.Thread(target=self._run, name="redis-sink", daemon=True)

    # ---- producer side ------------------------------------------------------------
    def write(self, results: Sequence[FrameResult]) -> None:
        """Queue results for writing (never blocks; drops the oldest when full)."""
        items, failed = [], 0
        for result in results:
            try:
                items.append(self._encode(result))
            except Exception:  # counted as dropped, as a batch the writer cannot write
                failed += 1
                if failed == 1:
                    log.exception("redis sink: a result could not be encoded; dropped")
                with self._cond:
                    self.dropped[result.frame.stream_id] += 1
        with self._cond:
            self.accepted += len(results)
            self._buffer.extend(items)
            self._trim()
            self._cond.notify()

    def _trim(self) -> None:
        overflow = len(self._buffer) - self.config.buffer_max_entries
        for _ in range(max(0, overflow)):
            item = self._buffer.popleft()
            if not isinstance(item, _Entry) or item.own:
                self.dropped[item.stream_id] += 1

    @property
    def pending(self) -> int:
        spooled = self.spool.pending if self.spool is not None else 0
        return len(self._buffer) + len(self._writing) + spooled

    def publish_stats(self) -> PublishStats:
        entries, size = self._spool_depth
        return PublishStats(
            errors=self.write_errors,
            spool_entries=entries,
            spool_bytes=size,
            replayed=sum(self.replayed.values()),
            overflow=sum(self.spool_overflow.values()),
            fenced=sum(self.fenced.values()),
            accepted=self.accepted,
            published=sum(self.published.values()),
            duplicates=sum(self.duplicates_skipped.values()),
        )

    def fenced_drops(self) -> list[tuple[str, int, int]]:
        return [(sid, gen, n) for (sid, gen), n in self.dropped_fenced.items() if n]

    def _note_spool(self) -> None:
        """The spool's depth, read where the spool lives (the writer thread)."""
        if self.spool is not None:
            self._spool_depth = (self.spool.pending, self.spool.pending_bytes)

    def start(self) -> None:
        """Open the spool (replaying what an earlier sink left there) and start writing."""
        path = self.config.spool_path()
        if path is not None:
            try:
                self.spool = Spool(
                    path,
                    max_bytes=max(1, int(self.config.spool_max_mb * (1 << 20))),
                    fsync=self.config.spool_fsync,
                    fsync_interval_ms=self.config.spool_fsync_interval_ms,
                )
            except PublishError as exc:
                log.error("%s; going on without a spool (memory buffer only)", exc)
            else:
                self._recover_ids()
                self._note_spool()
        self.thread.start()

    def _recover_ids(self) -> None:
        """Ids of spooled entries are taken: new ones must come after them."""
        assert self.spool is not None
        records = self.spool.peek(self.spool.pending)
        for record in records:
            entry = _Entry.from_record(record, self._run_id)
            last = self._last_id.get(entry.stream_id)
            if last is None or entry.entry_id > last:
                self._last_id[entry.stream_id] = entry.entry_id
        if records:
            log.info(
                "spool %s: %d entr%s left by an earlier run, replayed when Redis is reachable",
                self.spool.directory,
                len(records),
                "y" if len(records) == 1 else "ies",
            )

    def stop(self, flush_timeout: float = 5.0) -> None:
        """Write what is buffered (up to ``flush_timeout``), then stop the thread; what is
        still unwritten goes to the spool."""
        deadline = time.monotonic() + flush_timeout
        while self.pending and self.connected and time.monotonic() < deadline:
            time.sleep(0.02)
        self._stop.set()
        with self._cond:
            self._cond.notify()
        self.thread.join(timeout=flush_timeout + self.config.socket_timeout_s)
        if self.spool is not None and not self.thread.is_alive():
            self._spill(force=True)
            self._note_spool()
            self.spool.close(remove_if_empty=True)
        self._client.close()

    # ---- writer thread -----------------------------------------------------------
    def _take(self) -> list[_Buffered]:
        """Move the next batch out of the buffer (overflow can no longer drop what is being
        written, nor make another entry count as written)."""
        with self._cond:
            if not self._buffer:
                self._cond.wait(timeout=self.config.status_interval_s / 2)
            n = min(len(self._buffer), self.config.pipeline_max_entries)
            self._writing = [self._buffer.popleft() for _ in range(n)]
            return self._writing

    def _put_back(self, batch: Sequence[_Buffered]) -> None:
        """Not written: back to the front, oldest first; the cap still holds."""
        with self._cond:
            self._buffer.extendleft(reversed(batch))
            self._writing = []
            self._trim()

    def _spill_due(self) -> bool:
        if self.spool is None or not self._buffer:
            return False
        down = self._down_since
        return spill_due(
            len(self._buffer),
            self.config.buffer_max_entries,
            None if down is None else time.monotonic() - down,
            self.spool.pending,
            self.config.spool_after_s,
        )

    def _spill(self, force: bool = False) -> None:
        """Move the whole memory buffer to the end of the spool (so it stays after what is
        there already, and every stream's order holds)."""
        if self.spool is None or not (force or self._spill_due()):
            return
        with self._cond:
            items = list(self._writing) + list(self._buffer)
            self._buffer.clear()
            self._writing = []
        if not items:
            return
        entries = [self._entry(item) for item in items]
        try:
            dropped = self.spool.append([e.to_record(self._run_id) for e in entries])
        except OSError as exc:
            log.error("spool %s: append failed (%s); kept in memory", self.spool.directory, exc)
            self._put_back(entries)
            return
        for entry in entries:
            self.spooled[entry.stream_id] += 1
        for record in dropped:
            entry = _Entry.from_record(record, self._run_id)
            self.spool_overflow[entry.stream_id] += 1
            if entry.own:
                self.dropped[entry.stream_id] += 1

    def _encode(self, result: FrameResult) -> _Encoded:
        frame = result.frame
        stages = entry_latency(result, result.done_ts)  # kept as a dict: never parsed back
        fences = self.fences  # bound now: a lease taken later does not apply to it
        return _Encoded(
            stream_id=frame.stream_id,
            seq=frame.seq,
            fields=encode_entry(result, self.model_id, result.done_ts, stages),
            done_ts=result.done_ts,
            capture_ts=frame.capture_ts,
            stages=stages,
            fence=fences.lookup(frame.stream_id, frame.seq) if fences is not None else None,
        )

    def _entry(self, item: _Buffered) -> _Entry:
        """Fix a result's id (once: an entry keeps the one it has)."""
        if isinstance(item, _Entry):
            return item
        sid, fence = item.stream_id, item.fence
        entry_id = next_entry_id(item.capture_ts, item.seq, self._last_id.get(sid))
        self._last_id[sid] = entry_id
        return _Entry(
            stream_id=sid,
            seq=item.seq,
            entry_id=entry_id,
            fields=item.fields,
            done_ts=item.done_ts,
            capture_ts=item.capture_ts,
            fence=fence.token if fence is not None else None,
            generation=fence.generation if fence is not None else 0,
            stages=item.stages,
        )

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._step()
                self._note_spool()
            except Exception:  # a bug must not end the writer thread (nothing would restart it)
                self._drop_writing()
                log.exception("redis sink: step failed; the batch in hand is dropped and counted")
                self._stop.wait(0.5)

    def _drop_writing(self) -> None:
        with self._cond:
            for item in self._writing:
                self.dropped[item.stream_id] += 1
            self._writing = []

    def _step(self) -> None:
        self._spill()
        if self.spool is not None:
            self.spool.tick()
        wait = self._retry_at - time.monotonic()
        if wait > 0:
            with self._cond:  # a write may make a spill due: wake for it
                self._cond.wait(timeout=min(wait, self.config.status_interval_s / 2))
            return
        from_spool = self.spool is not None and self.spool.pending > 0
        records: list[SpoolRecord] = []
        batch: list[_Buffered]
        if from_spool:
            assert self.spool is not None
            records = self.spool.peek(self.config.pipeline_max_entries)
            batch = [_Entry.from_record(r, self._run_id) for r in records]
        else:
            batch = self._take()
        try:
            if batch:
                entries, refused, written_at = self._write(batch)
                if records:  # refused ones too: they are dropped, never retried
                    assert self.spool is not None
                    self.spool.ack(records[-1].end, len(records))
                self._commit(entries, refused, written_at)
            elif not self._connected:
                self._client.ping()
            self._set_connected(True, None)
        except (redis.RedisError, OSError) as exc:
            if batch:
                self.write_errors += 1
            if not from_spool:
                self._put_back(self._writing)
            self._set_connected(False, exc)
            self._retry_at = time.monotonic() + self._backoff.next_delay()

    def _commit(self, entries: list[_Entry], refused: list[_Entry], now: float) -> None:
        with self._cond:
            for entry in refused:
                self.fenced[entry.stream_id] += 1
                if entry.own:
                    self.dropped_fenced[(entry.stream_id, entry.generation)] += 1
            for entry in entries:
                if entry.own:
                    self.published[entry.stream_id] += 1
                    self._latency.observe(entry.stream_id, entry.latency(now))
                if entry.spooled:
                    self.replayed[entry.stream_id] += 1
            self._writing = []

    def _sync_ids(self, streams: set[str]) -> None:
        """Read each stream's last id from Redis (once per stream and connection), so that
        new ids come after what an earlier run wrote even if the clock stepped back."""
        todo = sorted(streams - self._synced)
        if not todo:
            return
        pipe = self._client.pipeline(transaction=False)
        for sid in todo:
            pipe.xinfo_stream(detections_key(self.config.key_prefix, sid))
        for sid, info in zip(todo, pipe.execute(raise_on_error=False), strict=True):
            key = detections_key(self.config.key_prefix, sid)
            if isinstance(info, NoPermissionError):
                raise denied(info, "XINFO STREAM", key)
            if isinstance(info, redis.ResponseError):  # no such key: nothing written yet
                pass
            elif isinstance(info, Exception):
                raise info
            else:
                self._raise_last_id(sid, parse_stream_id(_text(info["last-generated-id"])))
            self._synced.add(sid)

    def _raise_last_id(self, sid: str, entry_id: StreamId) -> None:
        last = self._last_id.get(sid)
        if last is None or entry_id > last:
            self._last_id[sid] = entry_id

    def _write(self, batch: Sequence[_Buffered]) -> tuple[list[_Entry], list[_Entry], float]:
        """XADD every entry (pipelined); returns the entries Redis holds, ids fixed, those
        the fence refused (fleet), and the time their latency_ms was stamped with."""
        self._sync_ids({item.stream_id for item in batch if not isinstance(item, _Entry)})
        self._load_script()
        entries = [self._entry(item) for item in batch]
        with self._cond:
            if batch is self._writing:  # from memory: a failure puts them back with their ids
                self._writing = list(entries)
        pipe = self._client.pipeline(transaction=False)
        now = time.time()
        sent: list[_Entry] = []
        refused: list[_Entry] = []
        for entry in entries:
            (sent if self._send(pipe, entry, now) else refused).append(entry)
        replies = self._load_and_resend(sent, pipe.execute(raise_on_error=False), now)
        for entry, reply in zip(sent, replies, strict=True):
            if reply is None and self.fences is not None:
                refused.append(entry)  # the lease holds another value, or none
            elif self.fences is not None and _text(reply) == DUPLICATE:
                self.duplicates_skipped[entry.stream_id] += 1  # there already: written
            elif isinstance(reply, redis.ResponseError) and _TOO_SMALL in str(reply):
                if not self._settle_conflict(entry, now):
                    refused.append(entry)
            elif isinstance(reply, Exception):
                key = detections_key(self.config.key_prefix, entry.stream_id)
                raise denied(reply, self._command, key)
        if refused:
            self._log_refused(refused)
        gone = {id(e) for e in refused}
        return [e for e in entries if id(e) not in gone], refused, now

    @property
    def _command(self) -> str:
        return "XADD" if self.fences is None else "EVALSHA (fenced XADD)"

    def _load_script(self) -> None:
        """Fleet: load the fenced write's script once per connection (it is sent by its
        SHA; without this the first batch after every start met NOSCRIPT)."""
        if self.fences is not None and not self._script_loaded:
            self._client.script_load(FENCED_XADD_LUA)
            self._script_loaded = True

    def _send(self, pipe: Any, entry: _Entry, now: float, entry_id: StreamId | None = None) -> bool:
        """Queue the entry's write on ``pipe``: a plain XADD, or (fleet) the fenced one; False
        when no lease value is bound to it (refused: nothing queued)."""
        if self.fences is None:
            self._xadd(pipe, entry, now, entry_id)
            return True
        token = entry.fence
        if token is None:
            return False
        assert self._fenced_xadd is not None
        prefix = self.config.key_prefix
        fields = [item for pair in entry.final_fields(now).items() for item in pair]
        pipe.evalsha(
            self._fenced_xadd.sha,
            2,
            fleet_lease_key(prefix, entry.stream_id),
            detections_key(prefix, entry.stream_id),
            token,
            format_stream_id(entry_id or entry.entry_id),
            self.config.maxlen,
            "~" if self.config.approximate_trim else "=",
            *fields,
        )
        return True

    def _load_and_resend(self, sent: list[_Entry], replies: list[Any], now: float) -> list[Any]:
        """Fleet: the script is sent by its SHA (no SCRIPT EXISTS per batch); entries that
        met NOSCRIPT (Redis restarted, scripts flushed) are sent again once it is loaded."""
        missing = [i for i, reply in enumerate(replies) if isinstance(reply, NoScriptError)]
        if not missing:
            return replies
        self._client.script_load(FENCED_XADD_LUA)
        self._script_loaded = True
        pipe = self._client.pipeline(transaction=False)
        out = list(replies)
        resent = []
        for i in missing:
            if self._send(pipe, sent[i], now):
                resent.append(i)
            else:  # nothing queued for it (no lease value): refused, like a nil reply
                out[i] = None
        if resent:
            for i, reply in zip(resent, pipe.execute(raise_on_error=False), strict=True):
                out[i] = reply
        return out

    def _log_refused(self, refused: list[_Entry]) -> None:
        by_stream = Counter(e.stream_id for e in refused)
        log.warning(
            "redis: %s refused by the lease fence (the lease expired or moved to another "
            "node): dropped, counted as fenced",
            ", ".join(
                f"{n} entr{'y' if n == 1 else 'ies'} of {sid}" for sid, n in by_stream.items()
            ),
        )

    def _xadd(self, pipe: Any, entry: _Entry, now: float, entry_id: StreamId | None = None) -> None:
        pipe.xadd(
            detections_key(self.config.key_prefix, entry.stream_id),
            entry.final_fields(now),  # type: ignore[arg-type]
            id=format_stream_id(entry_id or entry.entry_id),
            maxlen=self.config.maxlen,
            approximate=self.config.approximate_trim,
        )

    def _settle_conflict(self, entry: _Entry, now: float) -> bool:
        """Redis holds an id at or above this entry's: is it this very entry?  False when
        the entry, given a fresh id, was refused by the fence (fleet)."""
        key = detections_key(self.config.key_prefix, entry.stream_id)
        text = format_stream_id(entry.entry_id)
        found = self._client.xrange(key, min=text, max=text, count=1)
        if found:
            fields = {_text(k): _text(v) for k, v in (found[0][1] or {}).items()}
            if fields.get("seq") == entry.fields["seq"] and fields.get(
                "capture_ts"
            ) == entry.fields.get("capture_ts"):
                self.duplicates_skipped[entry.stream_id] += 1
                return True
        info = self._client.xinfo_stream(key)
        top = parse_stream_id(_text(info["last-generated-id"]))
        self._raise_last_id(entry.stream_id, top)
        fresh = next_entry_id(entry.capture_ts, entry.seq, self._last_id[entry.stream_id])
        self._last_id[entry.stream_id] = fresh
        pipe = self._client.pipeline(transaction=False)
        if not self._send(pipe, entry, now, fresh):
            return False  # no lease value: refused
        reply = pipe.execute()[0]
        if reply is None:
            return False  # fenced: the lease is no longer the entry's
        if self.fences is not None and _text(reply) == DUPLICATE:
            self.duplicates_skipped[entry.stream_id] += 1
            return True
        log.warning(
            "redis: %s id %s is taken or below the stream's top %s (another writer, or trimmed "
            "before a replay); written as %s",
            key,
            text,
            format_stream_id(top),
            format_stream_id(fresh),
        )
        self.reassigned[entry.stream_id] += 1
        return True

    def _set_connected(self, ok: bool, exc: BaseException | None) -> None:
        if ok and not self._connected:
            log.info("redis %s: connected", self.safe_url)
            self._backoff.reset()
        if ok:
            self._down_since = None
            self._retry_at = 0.0
        if not ok:
            assert exc is not None
            message = explain(exc)
            if self._connected or message != self._last_error:
                level = logging.ERROR if fatal(exc) else logging.WARNING
                log.log(level, "redis %s: unavailable (%s); buffering", self.safe_url, message)
            self._last_error = message
            if self._down_since is None:
                self._down_since = time.monotonic()
            self._synced.clear()  # the server may come back with other data
            self._script_loaded = False  # ... and without the script
        self._connected = ok
