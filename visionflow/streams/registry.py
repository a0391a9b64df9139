"""The runtime stream registry in Redis: :class:`StreamRegistry` implements
:class:`~visionflow.streams.control.StreamControl`.

Layout: hash ``<prefix>:registry`` maps a stream id to the JSON of its record
(:mod:`visionflow.streams.merge`: ``added``, ``patched`` or ``removed``); string
``<prefix>:registry:version`` counts the writes, so a pipeline polls one GET to know whether
anything changed.  Every write is one WATCH/MULTI transaction over the hash (read the
record, check, write it and bump the version): two API processes changing streams at once
never lose each other's changes -- the one that lost the race re-reads and re-checks.

The desired set is the config file's streams merged with the records (conflict rule and
reports: :mod:`visionflow.streams.merge`).  URLs with inline passwords are stored only
encrypted (:mod:`visionflow.streams.secrets`).  Each method raises
:class:`~visionflow.errors.ConfigError` naming what was wrong and then changes nothing;
an unreachable Redis raises ``redis.RedisError``.
"""

from __future__ import annotations

import builtins
import json
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import redis

from visionflow.config import AppConfig, substitute_env
from visionflow.errors import ConfigError
from visionflow.redis_client import connect
from visionflow.schema import registry_key, registry_version_key
from visionflow.streams.config import StreamConfig
from visionflow.streams.control import StreamPatch
from visionflow.streams.merge import (
    Conflict,
    Merged,
    Record,
    merge,
    record_add,
    record_remove,
    record_update,
)
from visionflow.streams.secrets import UrlSealer, check_runtime_url, load_key
from visionflow.streams.urls import redact_text

log = logging.getLogger("visionflow.registry")
#: ``change(file_stream, record, now) -> (new record or None to delete it, result)``
Change = Callable[
    [StreamConfig | None, Record | None, float], tuple[Record | None, StreamConfig | None]
]


@dataclass(frozen=True)
class Desired:
    """What the pipeline should run: the registry's version it was read at, the streams
    (``${ENV}`` references resolved) and the conflicts."""

    version: int
    streams: tuple[StreamConfig, ...]
    conflicts: tuple[Conflict, ...]


# ---- records <-> JSON ----------------------------------------------------------------------
def encode_record(record: Record, sealer: UrlSealer) -> str:
    data: dict[str, Any] = {"kind": record.kind, "ts": record.ts}
    if record.stream is not None:
        entry = record.stream.model_dump(mode="json")
        entry["url"], token = sealer.seal(record.stream.id, record.stream.url)
        data["stream"] = entry
        if token is not None:
            data["url_sealed"] = token
    if record.patch:
        data["patch"], data["base"] = dict(record.patch), dict(record.base)
    if record.file_fp is not None:
        data["file_fp"] = record.file_fp
    return json.dumps(data, separators=(",", ":"), sort_keys=True)


def decode_record(stream_id: str, raw: str | bytes, sealer: UrlSealer) -> Record:
    """ConfigError when the stored JSON is not a record, or its URL cannot be opened."""
    try:
        data = json.loads(raw)
        kind = data["kind"]
        if kind not in ("added", "patched", "removed"):
            raise ValueError(f"unknown kind {kind!r}")
        stream = None
        if kind == "added":
            entry = dict(data["stream"])
            entry["url"] = sealer.open(stream_id, entry["url"], data.get("url_sealed"))
            stream = StreamConfig.model_validate(entry)
        return Record(
            kind,
            float(data["ts"]),
            stream=stream,
            patch=dict(data.get("patch", {})),
            base=dict(data.get("base", {})),
            file_fp=data.get("file_fp"),
        )
    except ConfigError:
        raise
    except Exception as exc:  # JSON, missing keys, a StreamConfig no longer valid
        raise ConfigError(
            f"stream {stream_id!r}: registry record unreadable: {redact_text(str(exc))[:300]}"
        ) from None


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value


class StreamRegistry:
    """Runtime stream registration kept in Redis, merged with the config file's streams."""

    def __init__(
        self,
        client: redis.Redis,
        prefix: str,
        file_streams: Sequence[StreamConfig],
        *,
        allowed_schemes: Sequence[str] = ("rtsp", "rtsps"),
        sealer: UrlSealer | None = None,
    ) -> None:
        self.client, self.prefix = client, prefix
        self.key, self.version_key = registry_key(prefix), registry_version_key(prefix)
        self.allowed_schemes = tuple(allowed_schemes)
        self.sealer = sealer or UrlSealer(None)
        self._file: dict[str, StreamConfig] = {}
        self._file_order: tuple[StreamConfig, ...] = ()
        self._lock = threading.Lock()
        self._reported: set[Conflict] = set()
        self.set_file_streams(file_streams)

    @classmethod
    def from_config(
        cls, config: AppConfig, redis_url: str, timeout: float | None = None
    ) -> StreamRegistry:
        """The registry of ``config``'s deployment (key prefix, file streams, schemes and
        the URL key of ``registry.secret_key_file`` / the environment); its Redis calls
        time out after ``timeout`` (default ``redis.socket_timeout_s``)."""
        timeout = timeout or config.redis.socket_timeout_s
        client = connect(
            redis_url, config.redis, socket_timeout=timeout, socket_connect_timeout=timeout
        )
        return cls(
            client,
            config.redis.key_prefix,
            config.streams,
            allowed_schemes=config.source.allowed_schemes,
            sealer=UrlSealer(load_key(config.registry.secret_key_file)),
        )

    def close(self) -> None:
        self.client.close()

    def set_file_streams(self, streams: Sequence[StreamConfig]) -> None:
        """The config file's streams (after a hot reload)."""
        with self._lock:
            self._file_order = tuple(streams)
            self._file = {s.id: s for s in streams}

    # ---- reading ---------------------------------------------------------------------
    def version(self) -> int:
        """The write counter (0: never written); one GET."""
        raw = self.client.get(self.version_key)
        return int(_text(raw)) if raw is not None else 0  # type: ignore[arg-type]

    def _records(self, raw: dict[Any, Any]) -> tuple[dict[str, Record], list[Conflict]]:
        records: dict[str, Record] = {}
        unreadable: list[Conflict] = []
        for key, value in raw.items():
            sid = _text(key)
            try:
                records[sid] = decode_record(sid, value, self.sealer)
            except ConfigError as exc:
                unreadable.append(Conflict(sid, "unreadable", f"{exc}; the stream is left out"))
        return records, unreadable

    def _read(self) -> tuple[int, Merged]:
        pipe = self.client.pipeline(transaction=True)
        pipe.get(self.version_key)
        pipe.hgetall(self.key)
        version, raw = pipe.execute()
        records, unreadable = self._records(raw)
        with self._lock:
            file_streams = self._file_order
        merged = merge(file_streams, records)
        conflicts = merged.conflicts + tuple(unreadable)
        self._report(conflicts)
        return int(_text(version)) if version is not None else 0, Merged(merged.streams, conflicts)

    def _report(self, conflicts: Sequence[Conflict]) -> None:
        """Log each conflict once (per process)."""
        with self._lock:
            new = [c for c in conflicts if c not in self._reported]
            self._reported.update(new)
        for c in new:
            log.warning("stream registry: stream %r: %s (%s)", c.stream_id, c.detail, c.kind)

    def list(self) -> list[StreamConfig]:
        """Every registered stream, the config file's merged with the runtime registry's
        (URLs as added: ``${ENV}`` references unresolved; show them with ``safe_url``)."""
        return list(self._read()[1].streams)

    def get(self, stream_id: str) -> StreamConfig:
        """One registered stream; ConfigError when the id is not registered."""
        for stream in self.list():
            if stream.id == stream_id:
                return stream
        raise ConfigError(f"stream {stream_id!r} is not registered")

    def conflicts(self) -> builtins.list[Conflict]:
        """The conflicts between the config file and the registry now, including streams left
        out because an ``${ENV}`` reference is not set here (each is also logged once when
        first seen)."""
        return list(self.desired().conflicts)

    def desired(self) -> Desired:
        """What the pipeline should run: ``${ENV}`` references resolved (a stream whose
        variable is not set, or whose runtime URL breaks ``check_runtime_url``, is left out
        and reported as ``unreadable``)."""
        version, merged = self._read()
        streams: builtins.list[StreamConfig] = []
        conflicts = [*merged.conflicts]
        for stream in merged.streams:
            try:
                if not self._from_file(stream):  # also a record written before the rule
                    check_runtime_url(stream.id, stream.url)
                url = substitute_env(stream.url, f"stream {stream.id!r} url")
            except ConfigError as exc:
                conflicts.append(Conflict(stream.id, "unreadable", f"{exc}; left out"))
                continue
            streams.append(stream if url == stream.url else stream.model_copy(update={"url": url}))
        self._report(conflicts)
        return Desired(version, tuple(streams), tuple(conflicts))

    def _from_file(self, stream: StreamConfig) -> bool:
        """Whether the stream's URL is the config file's (full ``${ENV}`` support there;
        a runtime URL follows ``check_runtime_url``)."""
        with self._lock:
            file_stream = self._file.get(stream.id)
        return file_stream is not None and file_stream.url == stream.url

    # ---- writing ---------------------------------------------------------------------
    def add(self, stream: StreamConfig) -> None:
        """Register a new stream (kept across restarts)."""
        if stream.scheme not in self.allowed_schemes:
            raise ConfigError(
                f"stream {stream.id!r}: URL scheme {stream.scheme!r} is not in "
                f"source.allowed_schemes {list(self.allowed_schemes)}"
            )
        check_runtime_url(stream.id, stream.url)
        self.sealer.seal(stream.id, stream.url)  # refuse an inline password without a key
        self._write(stream.id, lambda f, r, now: (record_add(stream, f, r, now), None))
        log.info("stream registry: added %s (%s)", stream.id, stream.safe_url)

    def update(self, stream_id: str, patch: StreamPatch) -> StreamConfig:
        """Apply ``patch`` and return the stream's new entry."""
        result = self._write(
            stream_id, lambda f, r, now: record_update(stream_id, patch, f, r, now)
        )
        assert result is not None
        log.info("stream registry: %s patched %s", stream_id, patch.model_dump(exclude_none=True))
        return result

    def remove(self, stream_id: str) -> None:
        """Unregister a stream (a config file stream stays removed across restarts)."""
        self._write(stream_id, lambda f, r, now: (record_remove(stream_id, f, r, now), None))
        log.info("stream registry: removed %s", stream_id)

    def reset(self, stream_id: str) -> None:
        """Forget the runtime record of a stream, so that the config file's entry applies
        again (settles a conflict in the file's favour; a stream only added at run time is
        removed; an unreadable record goes too).  ConfigError when there is no record."""

        def transaction(pipe: Any) -> None:
            if pipe.hget(self.key, stream_id) is None:
                raise ConfigError(f"stream {stream_id!r} has no runtime record to reset")
            pipe.multi()
            pipe.hdel(self.key, stream_id)
            pipe.incr(self.version_key)

        self.client.transaction(transaction, self.key)
        log.info("stream registry: %s reset to the config file", stream_id)

    def _write(self, stream_id: str, change: Change) -> StreamConfig | None:
        """One transaction: read the stream's record, ``change(file_stream, record, now)``
        -> ``(new record or None to delete, result)``, write it and bump the version."""
        with self._lock:
            file_stream = self._file.get(stream_id)
        out: list[StreamConfig | None] = []

        def transaction(pipe: Any) -> None:
            raw = pipe.hget(self.key, stream_id)
            record = decode_record(stream_id, raw, self.sealer) if raw is not None else None
            new, result = change(file_stream, record, time.time())
            payload = None if new is None else encode_record(new, self.sealer)
            pipe.multi()
            if payload is None:
                pipe.hdel(self.key, stream_id)
            else:
                pipe.hset(self.key, stream_id, payload)
            pipe.incr(self.version_key)
            out[:] = [result]

        self.client.transaction(transaction, self.key)
        return out[0]
