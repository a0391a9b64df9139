"""The reference consumer: read detections through a Redis consumer group, at least once.

Every stream ``<prefix>:detections:<stream_id>`` gets the consumer group ``group`` (created
with ``MKSTREAM`` when missing; another consumer creating it first is fine).  A consumer

1. reads its own pending entries once at start (``XREADGROUP ... 0``: what it was given
   before a restart under the same name),
2. then new entries (``XREADGROUP ... >``, blocking ``block_ms``),
3. and every ``claim_interval_ms`` takes over entries pending for ``claim_idle_ms`` or more,
   whichever consumer holds them (``XAUTOCLAIM``): those of a consumer that died, and its own
   that a handler failed on.

An entry is acknowledged (``XACK``) only after the handler returned; one whose handler
raised stays pending and comes back through step 3.  Each delivery raises the entry's
delivery count; one delivered more than ``max_deliveries`` times is copied to the
dead-letter stream and acknowledged, in one ``MULTI``.  An entry trimmed away by ``MAXLEN``
while pending (``XAUTOCLAIM`` lists its id as deleted; a history read returns it without
fields) is counted as ``trimmed_while_pending`` and dropped from the pending list.

    consumer = DetectionConsumer(ConsumerConfig(redis_url=url, group="alerts"))
    consumer.run(lambda d: print(d.stream_id, d.entry.seq), stop_event)
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Literal

import redis
from pydantic import ConfigDict, Field, field_validator
from redis.typing import EncodableT, FieldT

from visionflow.errors import ConfigError, ConsumerError
from visionflow.redis_client import RedisTls, connect, explain
from visionflow.schema import Entry, detections_key, parse_entry, streams_key
from visionflow.streams.urls import redact_url

# redis-py's TimeoutError is not a ConnectionError: a paused or failing-over server raises it
_UNREACHABLE = (redis.ConnectionError, redis.TimeoutError)
log = logging.getLogger(__name__)

DEAD_LETTER_FIELDS = ("dl_stream", "dl_id", "dl_deliveries", "dl_group", "dl_consumer", "dl_ts")
"""Fields a dead-letter entry has besides the original entry's own."""


def default_consumer_name() -> str:
    """``<hostname>-<pid>``: unique per process, recognisable in ``XINFO CONSUMERS``."""
    return f"{socket.gethostname()}-{os.getpid()}"


class ConsumerConfig(RedisTls):
    """Where to read detections and how a consumer group treats them."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    redis_url: str = Field(description="redis:// or rediss:// URL of the Redis visionflow writes.")
    key_prefix: str = Field(
        default="visionflow",
        pattern=r"^[A-Za-z0-9_.\-:]{1,64}$",
        description="The pipeline's redis.key_prefix: streams are <prefix>:detections:<id>.",
    )
    group: str = Field(
        default="visionflow-consumers",
        min_length=1,
        description="Consumer group name; consumers of one group share the entries.",
    )
    consumer: str = Field(
        default_factory=default_consumer_name,
        min_length=1,
        description="This consumer's name in the group (default <hostname>-<pid>). Reusing a "
        "name after a restart picks up that consumer's pending entries at once.",
    )
    streams: list[str] = Field(
        default_factory=list,
        description="Stream ids to read; empty: every id in the <prefix>:streams set, "
        "re-read every claim_interval_ms so that streams added later are picked up.",
    )
    block_ms: int = Field(
        default=1000, ge=1, description="Longest wait for new entries in one XREADGROUP call."
    )
    count: int = Field(
        default=100, ge=1, description="Most entries per stream in one XREADGROUP/XAUTOCLAIM."
    )
    claim_idle_ms: int = Field(
        default=30_000,
        ge=1,
        description="An entry pending this long (its consumer died or its handler failed) is "
        "taken over by XAUTOCLAIM. Make it longer than one whole round (count x streams x the "
        "slowest handler call), or live consumers lose entries to each other.",
    )
    claim_interval_ms: int = Field(
        default=5_000, ge=1, description="How often to run XAUTOCLAIM over every stream."
    )
    max_deliveries: int = Field(
        default=5,
        ge=1,
        description="An entry delivered more often than this goes to the dead-letter stream "
        "(and is acknowledged) instead of to the handler again.",
    )
    dead_letter_key: str = Field(
        default="{prefix}:deadletter:{stream_id}",
        description="Dead-letter stream per source stream; {prefix} and {stream_id} are filled in.",
    )
    dead_letter_maxlen: int = Field(
        default=100_000, ge=1, description="Trim each dead-letter stream to about this many."
    )
    start_id: Literal["$", "0"] = Field(
        default="$",
        description="Where a group created by this consumer starts: '$' new entries only, "
        "'0' every entry still in the stream. An existing group keeps its position.",
    )
    socket_timeout_s: float = Field(
        default=5.0, gt=0, description="Redis connect/read timeout on top of block_ms."
    )

    @field_validator("dead_letter_key")
    @classmethod
    def _known_placeholders(cls, value: str) -> str:
        try:
            value.format(prefix="p", stream_id="s")
        except (KeyError, IndexError, ValueError) as exc:
            raise ValueError(
                f"dead_letter_key {value!r}: only {{prefix}} and {{stream_id}} may be used ({exc})"
            ) from None
        return value


@dataclass(frozen=True)
class Delivery:
    """One entry handed to a consumer: the parsed entry and where it came from."""

    key: str
    """The Redis stream key, ``<prefix>:detections:<stream_id>``."""
    stream_id: str
    entry: Entry
    delivery_count: int
    """1 on first delivery; higher when redelivered (after a failure or a dead consumer)."""

    @property
    def entry_id(self) -> str:
        return self.entry.entry_id


@dataclass(frozen=True)
class ConsumerCounters:
    """What one consumer did since it was created."""

    consumed: int = 0
    """Entries handed out (a redelivered entry counts again)."""
    acked: int = 0
    failed: int = 0
    """Handler calls that raised, and entries that could not be parsed (left pending)."""
    claimed: int = 0
    """Entries taken over by XAUTOCLAIM (from a dead consumer or after a failure)."""
    dead_lettered: int = 0
    trimmed_while_pending: int = 0
    """Pending entries that MAXLEN trimming deleted before they were acknowledged."""
    redis_errors: int = 0


Handler = Callable[[Delivery], None]


class DetectionConsumer:
    """A member of a consumer group over visionflow's detection streams (not thread-safe)."""

    def __init__(self, config: ConsumerConfig, client: redis.Redis | None = None) -> None:
        """``client``: an existing ``redis.Redis`` with ``decode_responses=True`` (RESP2);
        by default one is made from ``config.redis_url``."""
        if client is not None and not client.connection_pool.connection_kwargs.get(
            "decode_responses"
        ):
            raise ConfigError("DetectionConsumer needs a client with decode_responses=True")
        self.config = config
        self._client = client or connect(
            config.redis_url,
            config,
            decode_responses=True,
            socket_connect_timeout=config.socket_timeout_s,
            socket_timeout=config.block_ms / 1000 + config.socket_timeout_s,
        )
        self._prefix = detections_key(config.key_prefix, "")
        self._keys: list[str] = []
        self._history: dict[str, str] = {}  # key -> where the history read goes on
        self._cursors: dict[str, str] = {}  # key -> XAUTOCLAIM cursor
        self._next_claim = 0.0
        self._backoff = 0.0
        self._counts: dict[str, int] = dict.fromkeys(ConsumerCounters.__dataclass_fields__, 0)

    # ------------------------------------------------------------------ public
    @property
    def counters(self) -> ConsumerCounters:
        return ConsumerCounters(**self._counts)

    @property
    def keys(self) -> list[str]:
        """The stream keys this consumer reads (after :meth:`refresh_streams`)."""
        return list(self._keys)

    def refresh_streams(self) -> list[str]:
        """Find the streams to read and make sure each has the group; returns their keys."""
        ids = self.config.streams or sorted(self._smembers(streams_key(self.config.key_prefix)))
        keys = [detections_key(self.config.key_prefix, i) for i in ids]
        for key in keys:
            if key not in self._keys:
                self._create_group(key)
        self._keys = keys
        return keys

    def poll(self, stop: threading.Event | None = None, limit: int | None = None) -> list[Delivery]:
        """One round: claim idle entries when due, else read pending history or new entries.

        Waits at most ``block_ms`` for new entries.  ``limit`` caps the entries read per
        stream.  A Redis outage is logged and waited out (backoff, cut short by ``stop``).
        """
        stop = stop or threading.Event()
        try:
            batch = self._poll(stop, min(self.config.count, limit or self.config.count))
        except _UNREACHABLE as exc:  # refused, reset, or timed out (a paused server)
            self._counts["redis_errors"] += 1
            self._backoff = min(self._backoff * 2, 10.0) if self._backoff else 0.5
            log.warning("redis unavailable (%s); retrying in %.1fs", _safe(exc), self._backoff)
            stop.wait(self._backoff)
            return []
        self._backoff = 0.0
        self._counts["consumed"] += len(batch)
        return batch

    def deliveries(self, stop: threading.Event | None = None) -> Iterator[Delivery]:
        """Yield entries until ``stop`` is set; the caller acknowledges with :meth:`ack`.

        An entry not acknowledged stays pending and is delivered again after
        ``claim_idle_ms`` (to this consumer or another one of the group).
        """
        stop = stop or threading.Event()
        while not stop.is_set():
            yield from self.poll(stop)

    def ack(self, delivery: Delivery) -> None:
        """Acknowledge a processed entry (``XACK``)."""
        self._client.xack(delivery.key, self.config.group, delivery.entry_id)
        self._counts["acked"] += 1

    def fail(self, delivery: Delivery, error: BaseException | None = None) -> None:
        """Count a failed entry; it stays pending and is redelivered after ``claim_idle_ms``."""
        self._counts["failed"] += 1
        log.warning(
            "handler failed on %s %s (delivery %d of %d): %r",
            delivery.key,
            delivery.entry_id,
            delivery.delivery_count,
            self.config.max_deliveries,
            error,
        )

    def run(
        self, handler: Handler, stop: threading.Event, max_entries: int | None = None
    ) -> ConsumerCounters:
        """Hand entries to ``handler`` until ``stop`` is set or ``max_entries`` were acked.

        ``XACK`` follows only a handler call that returned; one that raised (``Exception``)
        leaves the entry pending.  A round's entries are all handled before ``stop`` is
        looked at again.  With ``max_entries`` each read asks for at most the number still
        wanted per stream; entries read beyond it (several streams) stay pending.  An XACK
        lost to a Redis outage leaves the handled entry pending: it is delivered again.
        """
        done = 0
        while not stop.is_set():
            remaining = None if max_entries is None else max_entries - done
            if remaining is not None and remaining <= 0:
                break
            for delivery in self.poll(stop, remaining):
                if stop.is_set() or (max_entries is not None and done >= max_entries):
                    break  # the rest of the round stays pending: never acked unhandled
                try:
                    handler(delivery)
                except Exception as exc:
                    self.fail(delivery, exc)
                    continue
                try:
                    self.ack(delivery)
                except _UNREACHABLE as exc:
                    # handled but not acknowledged: it comes back after claim_idle_ms
                    self._counts["redis_errors"] += 1
                    log.warning("XACK of %s failed (%s)", delivery.entry_id, _safe(exc))
                    continue
                done += 1
        return self.counters

    def dead_letter_key(self, stream_id: str) -> str:
        return self.config.dead_letter_key.format(
            prefix=self.config.key_prefix, stream_id=stream_id
        )

    def close(self) -> None:
        self._client.close()

    # ------------------------------------------------------------------ one round
    def _poll(self, stop: threading.Event, count: int) -> list[Delivery]:
        now = time.monotonic()
        out: list[Delivery] = []
        if now >= self._next_claim:
            self.refresh_streams()
            more = False
            for key in self._keys:
                out += self._claim(key, count)
                more = more or self._cursors.get(key, "0-0") != "0-0"
            # a cursor that did not come back to 0-0: more idle entries, claim again at once
            self._next_claim = now if more else now + self.config.claim_interval_ms / 1000
        for key in [k for k in self._keys if k in self._history]:
            out += self._read_history(key, count)
        if out:
            return out
        if not self._keys:  # no stream registered yet
            stop.wait(min(self.config.block_ms, self.config.claim_interval_ms) / 1000)
            return []
        return self._read_new(count)

    def _read_new(self, count: int) -> list[Delivery]:
        try:
            reply = self._client.xreadgroup(
                self.config.group,
                self.config.consumer,
                dict.fromkeys(self._keys, ">"),
                count=count,
                block=min(self.config.block_ms, self.config.claim_interval_ms),
            )
        except redis.ResponseError as exc:
            if "NOGROUP" not in str(exc):
                raise
            # a stream key was deleted, and its group with it: create both again
            log.info("consumer group missing (%s); recreating", exc)
            self._keys = []
            self._next_claim = 0.0
            return []
        out: list[Delivery] = []
        for key, entries in _stream_replies(reply):
            for entry_id, fields in entries:
                delivery = self._delivery(key, entry_id, fields, 1)
                if delivery is not None:
                    out.append(delivery)
        return out

    def _read_history(self, key: str, count: int) -> list[Delivery]:
        """The next page of this consumer's own pending entries of ``key``."""
        reply = self._client.xreadgroup(
            self.config.group, self.config.consumer, {key: self._history[key]}, count=count
        )
        entries = [e for _, es in _stream_replies(reply) for e in es]
        if not entries:
            del self._history[key]
            return []
        self._history[key] = str(entries[-1][0])
        trimmed = [str(entry_id) for entry_id, fields in entries if not fields]
        if trimmed:
            # still in the pending list, but the entry itself is gone: nothing to redeliver
            self._client.xack(key, self.config.group, *trimmed)
            self._count_trimmed(key, trimmed)
        return self._with_counts(key, [(i, f) for i, f in entries if f])

    def _claim(self, key: str, count: int) -> list[Delivery]:
        try:
            reply = self._client.xautoclaim(
                key,
                self.config.group,
                self.config.consumer,
                self.config.claim_idle_ms,
                start_id=self._cursors.get(key, "0-0"),
                count=count,
            )
        except redis.ResponseError as exc:
            if "NOGROUP" not in str(exc):
                raise
            self._create_group(key)
            return []
        cursor, claimed = str(reply[0]), list(reply[1])
        deleted = [str(i) for i in reply[2]] if len(reply) > 2 else []  # Redis >= 7
        self._cursors[key] = cursor
        # Redis 6.2 lists a deleted entry among the claimed ones, without fields
        deleted += [str(i) for i, f in claimed if i is not None and not f]
        if deleted:
            self._count_trimmed(key, deleted)
        present = [(i, f) for i, f in claimed if i is not None and f]
        if not present:
            return []
        self._counts["claimed"] += len(present)
        log.info("claimed %d idle entries of %s", len(present), key)
        return self._with_counts(key, present)

    # ------------------------------------------------------------------ helpers
    def _with_counts(self, key: str, entries: list[tuple[Any, Any]]) -> list[Delivery]:
        """Attach delivery counts (XPENDING); dead-letter those past ``max_deliveries``."""
        if not entries:
            return []
        counts = self._delivery_counts(key, [str(i) for i, _ in entries])
        out: list[Delivery] = []
        for entry_id, fields in entries:
            count = counts.get(str(entry_id))
            if count is None:  # no longer ours (acknowledged or claimed meanwhile)
                continue
            if count > self.config.max_deliveries:
                self._dead_letter(key, str(entry_id), fields, count)
                continue
            delivery = self._delivery(key, entry_id, fields, count)
            if delivery is not None:
                out.append(delivery)
        return out

    def _delivery_counts(self, key: str, ids: list[str]) -> dict[str, int]:
        """``{id: times delivered}`` for those of ``ids`` pending with this consumer."""

        def pending(low: str, high: str, n: int) -> dict[str, int]:
            rows = self._client.xpending_range(
                key, self.config.group, min=low, max=high, count=n,
                consumername=self.config.consumer,
            )  # fmt: skip
            return {str(r["message_id"]): int(r["times_delivered"]) for r in rows}

        counts = pending(ids[0], ids[-1], 4 * len(ids))
        for entry_id in ids:  # other pending entries between them crowded some out
            if entry_id not in counts:
                counts.update(pending(entry_id, entry_id, 1))
        return counts

    def _delivery(self, key: str, entry_id: Any, fields: Any, count: int) -> Delivery | None:
        stream_id = key[len(self._prefix) :]
        try:
            entry = parse_entry(entry_id, fields)
        except (KeyError, ValueError, TypeError) as exc:
            # left pending: redelivered after claim_idle_ms, dead-lettered in the end
            self._counts["failed"] += 1
            log.warning("unreadable entry %s %s: %r", key, entry_id, exc)
            return None
        return Delivery(key=key, stream_id=stream_id, entry=entry, delivery_count=count)

    def _dead_letter(self, key: str, entry_id: str, fields: dict[Any, Any], count: int) -> None:
        stream_id = key[len(self._prefix) :]
        target = self.dead_letter_key(stream_id)
        record: dict[FieldT, EncodableT] = {
            **fields,
            "dl_stream": key,
            "dl_id": entry_id,
            "dl_deliveries": str(count),
            "dl_group": self.config.group,
            "dl_consumer": self.config.consumer,
            "dl_ts": f"{time.time():.6f}",
        }
        pipe = self._client.pipeline(transaction=True)
        pipe.xadd(target, record, maxlen=self.config.dead_letter_maxlen, approximate=True)
        pipe.xack(key, self.config.group, entry_id)
        pipe.execute()
        self._counts["dead_lettered"] += 1
        log.warning(
            "%s %s delivered %d times (max %d): moved to %s",
            key,
            entry_id,
            count,
            self.config.max_deliveries,
            target,
        )

    def _count_trimmed(self, key: str, ids: list[str]) -> None:
        self._counts["trimmed_while_pending"] += len(ids)
        log.warning(
            "%d pending entries of %s were trimmed (MAXLEN) before being acknowledged: %s",
            len(ids),
            key,
            ", ".join(ids[:5]) + (" ..." if len(ids) > 5 else ""),
        )

    def _create_group(self, key: str) -> None:
        try:
            self._client.xgroup_create(
                key, self.config.group, id=self.config.start_id, mkstream=True
            )
            log.info(
                "created consumer group %s on %s at %s",
                self.config.group,
                key,
                self.config.start_id,
            )
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise ConsumerError(
                    f"cannot create group {self.config.group} on {key}: {explain(exc)}"
                ) from None
        self._history[key] = "0"
        self._cursors.pop(key, None)

    def _smembers(self, key: str) -> set[str]:
        return {str(m) for m in self._client.smembers(key)}


def _stream_replies(reply: Any) -> list[tuple[str, list[tuple[Any, Any]]]]:
    """XREADGROUP's reply (RESP2, as this module's client speaks) as ``[(key, entries)]``."""
    return [(str(key), list(entries)) for key, entries in reply or []]


def _safe(exc: BaseException) -> str:
    return explain(exc)


def describe(config: ConsumerConfig) -> str:
    """One line naming the server (password redacted), group and consumer."""
    return f"{redact_url(config.redis_url)} group {config.group} consumer {config.consumer}"


def check_url(url: str | None) -> str:
    """The Redis URL to consume from, or a ConfigError saying why there is none."""
    if not url:
        raise ConfigError(
            "redis.url is empty: the pipeline writes to a private Redis then; set redis.url "
            "(or pass --redis-url) to consume"
        )
    return url
