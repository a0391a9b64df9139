"""The runtime registry's records and how they merge with the config file (pure, no I/O).

The registry holds at most one record per stream id:

- ``added``: a stream registered at run time (its whole entry);
- ``patched``: runtime changes (``enabled``, ``analysis_fps``, ``labels``) of a stream the
  config file defines, with the file's values of those fields when the patch was made;
- ``removed``: a tombstone: a stream of the config file removed at run time stays removed.

The desired set is the config file's streams with every record applied.  **Conflict rule:
the runtime registry wins** -- it is the later, explicit operator action and, with several
nodes, the one source of truth they share -- and every conflict is reported:

- ``file_changed_patched_field``: the file changed a field that a runtime patch also set
  since the patch was made (the runtime value is kept);
- ``added_id_in_file``: an id added at run time is (now) defined by the file too, with
  another entry than when it was added (the runtime entry is kept);
- ``file_changed_removed``: the file changed a stream removed at run time (it stays
  removed);
- ``patched_not_in_file``: the file no longer defines a stream with a runtime patch (the
  stream is gone; the patch is kept in case it comes back);
- ``unreadable``: a record cannot be used (an encrypted URL without the right key, an
  ``${ENV}`` reference not set where the pipeline runs, an entry no longer valid): the
  stream is left out.

``reset`` (forget the runtime record of a stream) settles a conflict in the file's favour.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import ValidationError

from visionflow.errors import ConfigError
from visionflow.streams.config import StreamConfig
from visionflow.streams.control import StreamPatch
from visionflow.streams.urls import redact_text

RecordKind = Literal["added", "patched", "removed"]
ConflictKind = Literal[
    "file_changed_patched_field",
    "added_id_in_file",
    "file_changed_removed",
    "patched_not_in_file",
    "unreadable",
]
PATCH_FIELDS: tuple[str, ...] = tuple(StreamPatch.model_fields)
NOTHING_TO_CHANGE = f"the patch sets none of {', '.join(PATCH_FIELDS)}"


@dataclass(frozen=True)
class Record:
    """One stream's runtime record (see the module docstring)."""

    kind: RecordKind
    ts: float  # when written (added: when added, which orders the runtime streams)
    stream: StreamConfig | None = None  # added: the entry (URL as added, ${ENV} unresolved)
    patch: Mapping[str, Any] = field(default_factory=dict)  # patched: the fields set
    base: Mapping[str, Any] = field(default_factory=dict)  # patched: the file's values then
    file_fp: str | None = None  # added/removed: fingerprint of the file's entry then


@dataclass(frozen=True)
class Conflict:
    """A disagreement between the config file and the runtime registry, and how it was
    settled."""

    stream_id: str
    kind: ConflictKind
    detail: str


@dataclass(frozen=True)
class Merged:
    """The desired set of streams and the conflicts met building it."""

    streams: tuple[StreamConfig, ...]
    conflicts: tuple[Conflict, ...]


def fingerprint(stream: StreamConfig) -> str:
    """A short digest of a file entry (its URL redacted: no password goes into it)."""
    data = stream.model_dump(mode="json")
    data["url"] = stream.safe_url
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


def apply_patch(stream: StreamConfig, patch: Mapping[str, Any]) -> StreamConfig:
    """``stream`` with ``patch``'s fields; ConfigError naming the stream when invalid."""
    try:
        return StreamConfig.model_validate({**stream.model_dump(), **patch})
    except ValidationError as exc:
        errors = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'])}: {redact_text(e['msg'])}" for e in exc.errors()
        )
        raise ConfigError(f"stream {stream.id!r}: {errors}") from None


def patch_fields(patch: StreamPatch) -> dict[str, Any]:
    """The fields a patch sets."""
    return patch.model_dump(exclude_none=True)


# ---- merging ---------------------------------------------------------------------------
def merge(file_streams: Sequence[StreamConfig], records: Mapping[str, Record]) -> Merged:
    """The config file's streams with the runtime records applied, in file order, then the
    runtime additions in the order they were added."""
    streams: list[StreamConfig] = []
    conflicts: list[Conflict] = []
    in_file = {s.id for s in file_streams}
    for stream in file_streams:
        merged = _merge_one(stream, records.get(stream.id), conflicts)
        if merged is not None:
            streams.append(merged)
    rest = sorted((r.ts, sid) for sid, r in records.items() if sid not in in_file)
    for _, sid in rest:
        record = records[sid]
        if record.kind == "added" and record.stream is not None:
            streams.append(record.stream)
        elif record.kind == "patched":
            detail = "the config file no longer defines it: the stream is gone (its runtime "
            detail += "patch is kept in case the file defines it again)"
            conflicts.append(Conflict(sid, "patched_not_in_file", detail))
    return Merged(tuple(streams), tuple(conflicts))


def _merge_one(
    stream: StreamConfig, record: Record | None, conflicts: list[Conflict]
) -> StreamConfig | None:
    sid = stream.id
    if record is None:
        return stream
    if record.kind == "removed":
        if record.file_fp != fingerprint(stream):
            detail = "removed at run time; the config file changed it since: it stays removed"
            conflicts.append(Conflict(sid, "file_changed_removed", detail))
        return None
    if record.kind == "added":
        if record.file_fp != fingerprint(stream):
            detail = "added at run time and defined by the config file too: the runtime entry "
            detail += "is used"
            conflicts.append(Conflict(sid, "added_id_in_file", detail))
        return record.stream
    for name, value in record.patch.items():
        base, now = record.base.get(name), getattr(stream, name)
        if base != now:
            detail = f"the config file changed {name} from {base!r} to {now!r} since the "
            detail += f"runtime patch set it to {value!r}: the runtime value is used"
            conflicts.append(Conflict(sid, "file_changed_patched_field", detail))
    try:
        return apply_patch(stream, record.patch)
    except ConfigError as exc:
        conflicts.append(Conflict(sid, "unreadable", f"runtime patch not applicable: {exc}"))
        return stream


# ---- writing: the new record for each operation (ConfigError: nothing changes) -------------
def registered(file_stream: StreamConfig | None, record: Record | None) -> bool:
    """Whether the id is in the desired set (file or runtime)."""
    if record is None or record.kind == "patched":
        return file_stream is not None
    return record.kind == "added"


def record_add(
    stream: StreamConfig, file_stream: StreamConfig | None, record: Record | None, now: float
) -> Record:
    if registered(file_stream, record):
        raise ConfigError(f"stream {stream.id!r} is already registered")
    fp = fingerprint(file_stream) if file_stream is not None else None
    return Record("added", now, stream=stream, file_fp=fp)


def record_update(
    stream_id: str,
    patch: StreamPatch,
    file_stream: StreamConfig | None,
    record: Record | None,
    now: float,
) -> tuple[Record, StreamConfig]:
    """The new record and the stream's new entry."""
    fields = patch_fields(patch)
    if not fields:
        raise ConfigError(f"stream {stream_id!r}: nothing to change: {NOTHING_TO_CHANGE}")
    if record is not None and record.kind == "added" and record.stream is not None:
        stream = apply_patch(record.stream, fields)
        return Record("added", record.ts, stream=stream, file_fp=record.file_fp), stream
    if file_stream is None or (record is not None and record.kind == "removed"):
        raise ConfigError(f"stream {stream_id!r} is not registered")
    old = record.patch if record is not None else {}
    base = dict(record.base) if record is not None else {}
    base.update({name: getattr(file_stream, name) for name in fields})  # seen and decided
    merged = {**old, **fields}
    stream = apply_patch(file_stream, merged)
    return Record("patched", now, patch=merged, base=base), stream


def record_remove(
    stream_id: str, file_stream: StreamConfig | None, record: Record | None, now: float
) -> Record | None:
    """The tombstone, or None where the record simply goes (a runtime-only stream)."""
    if not registered(file_stream, record):
        raise ConfigError(f"stream {stream_id!r} is not registered")
    if file_stream is None:
        return None
    return Record("removed", now, file_fp=fingerprint(file_stream))
