"""The Redis schema: what visionflow writes, and helpers to read it back.

Detections: one Redis Stream per camera, ``<prefix>:detections:<stream_id>``, trimmed with
``MAXLEN ~ <maxlen>``.  Each entry's fields (all strings, as Redis stores them):

=============  =====================================================================
stream_id      the camera's id
seq            per-stream frame sequence number (0, 1, 2, ... for every decoded frame;
               frames skipped or dropped leave gaps; never repeats within one run of the
               pipeline, also across an ingest restart; a restarted pipeline starts at 0)
pts            source presentation time in seconds ('' when the source has none)
capture_ts     wall-clock time (Unix seconds) the frame's data arrived
width, height  the original frame size; boxes are in these pixels
model_id       which model produced the detections
worker         inference worker id; batch_size: frames in its batch
detections     JSON list of {"label", "class_id", "score", "box": [x1, y1, x2, y2]}, plus
               "track_id" (int >= 1, unique per stream) on streams with ``tracking``
               (see below): the same object keeps its id from frame to frame; a box
               no track took (a low-score one) has none
latency_ms     JSON {"decode", "queue", "inference", "publish", "total"} in milliseconds:
               decode+letterbox, waiting to be batched, batch inference incl. pre/post-
               processing, waiting to be written, and capture -> written
=============  =====================================================================

Entries of one stream appear in ``seq`` order, even with several inference workers.

Status: hash ``<prefix>:status:<stream_id>`` with ``state``, ``state_since``, ``fps``,
``frames``, ``published``, ``drops`` (JSON ``{reason: count}``), ``last_error``,
``last_frame_ts``, ``width``, ``height``, ``decode`` (decoder/frame memory, e.g.
``nvdec/device``), ``url`` (password redacted), ``labels`` (JSON), ``latency_ms`` (JSON
``{stage: {"p50", "p99", "count", "sum", "buckets": [[le_ms, cumulative], ...]}}`` per stage
of the entries written, :mod:`visionflow.workers.latency`), ``updated_ts``; set
``<prefix>:streams`` lists the stream ids; hash ``<prefix>:worker:<id>`` (a fleet node's:
``<prefix>:worker:<node_id>:<id>``) holds each inference worker's ``state``, ``batches``,
``frames``, ``mean_batch``, ``inflight`` (batches queued on it), ``restarts``, ``backend``,
``device``, ``placement``, ``error``,
``batch_size_hist`` and ``inference_ms`` (JSON histograms of the frames per batch and of
the busy ms per batch, same form as one stage of ``latency_ms``; '' before its first
batch), ``updated_ts``; hash ``<prefix>:pipeline`` holds ``model_id``, ``uptime_s``,
``redis_connected``, ``redis_error``, ``redis_pending`` (entries not written yet, spool
included), ``publish_errors`` (failed Redis writes), ``spool_entries``, ``spool_bytes``,
``spool_replayed``, ``spool_overflow``, ``fenced`` (entries the write fence of a fleet node
refused), ``ledger_violations``, ``updated_ts``.

Tracking (streams with a ``tracking`` section, :mod:`visionflow.tracking`): track ids are
unique per stream, not small consecutive integers: a stream's tracker starts at the wall-clock
ms x 1000 of its creation (~1.8e15, below 2**53) and counts up, also across a tracker reset
(a reconnect at another resolution), a config change, a restart of the output process or a
fleet handover, so an id never names two objects.  A
track survives dropped frames (a ``seq`` gap) up to the stream's ``lost_track_s``.  Events go
to the Redis stream ``<prefix>:events:<stream_id>`` (``MAXLEN ~ events_maxlen``), one entry
per event, fields (strings):

=============  =====================================================================
kind           ``enter`` / ``exit`` (a zone), ``loiter`` (in a zone for ``loiter_s``),
               ``cross`` (a line)
stream_id      the camera's id
track_id       the object's track id (as on its detections)
label          the object's label
ts             capture time (Unix seconds) of the frame it happened in (inferred: the
               estimated time, before the frame it is written with); ``seq`` that
               frame's seq
box            JSON [x1, y1, x2, y2], the object's box in that frame (exit after the
               track was lost, or a crossing inferred after it: its last box)
zone, line     the zone's or line's id ('' for the other kind)
direction      cross: ``in`` (from the line's left to its right, looking from start
               to end) or ``out``; '' otherwise
dwell_s        exit and loiter: seconds inside the zone; '' otherwise
inferred       ``1``: nobody saw it happen: a zone's enter and exit read from the
               track's straight path between two sightings (the zone's ``passages``), or
               a line crossing inferred from its path before it was first or after it was
               last seen (``infer_unseen_s``, :mod:`visionflow.tracking.unseen`); ``0``
               otherwise.  Inferred events come with the frame they were inferred in, so
               a stream's events are not always in ``ts`` order, and their counts go to
               that frame's bucket
=============  =====================================================================

Counts of tracked streams (see the counts layout at the end of this module): ``tracks``
(new confirmed tracks), ``zone:<z>:enter``, ``zone:<z>:exit``, ``line:<l>:in``,
``line:<l>:out``, each counting a track at most once per bucket, so a bucket's numbers are
unique objects ("cars through the gate"), not boxes.

Each output process's events sink also keeps one string ``<prefix>:events:round-<uuid>``
(``EX 3600``): the number of its last write round applied, so a round resent after a lost
reply is not applied twice (:mod:`visionflow.tracking.sink`).  It is no events stream.

Reading them through a consumer group (at least once, XAUTOCLAIM, dead letters, and how
``MAXLEN`` trimming meets pending entries): :mod:`visionflow.consumer`, README "Consuming
detections".
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from visionflow.pipeline.frames import Detection, FrameResult, TrackEvent


def detections_key(prefix: str, stream_id: str) -> str:
    return f"{prefix}:detections:{stream_id}"


def status_key(prefix: str, stream_id: str) -> str:
    return f"{prefix}:status:{stream_id}"


def streams_key(prefix: str) -> str:
    return f"{prefix}:streams"


def worker_key(prefix: str, worker_id: int, node_id: str | None = None) -> str:
    """``<prefix>:worker:<id>``; a fleet node's: ``<prefix>:worker:<node_id>:<id>`` (node ids
    have no ':', so the two layouts never meet)."""
    if node_id is None:
        return f"{prefix}:worker:{worker_id}"
    return f"{prefix}:worker:{node_id}:{worker_id}"


def pipeline_key(prefix: str) -> str:
    """The pipeline-wide status hash (output stage, spool; PipelineStatus.redis_fields)."""
    return f"{prefix}:pipeline"


def entry_latency(result: FrameResult, publish_ts: float) -> dict[str, float]:
    """An entry's ``latency_ms`` (ms per stage, rounded) if it is written at ``publish_ts``."""
    frame = result.frame
    return {
        "decode": round(frame.decode_ms, 2),
        "queue": round(result.queue_ms, 2),
        "inference": round(result.inference_ms, 2),
        "publish": round(max(0.0, (publish_ts - result.done_ts) * 1000), 2),
        "total": round((publish_ts - frame.capture_ts) * 1000, 2),
    }


def encode_entry(
    result: FrameResult,
    model_id: str,
    publish_ts: float,
    latency: dict[str, float] | None = None,
) -> dict[str, str]:
    """The fields of one detections entry (``latency``: :func:`entry_latency`'s, when the
    caller has it already)."""
    frame = result.frame
    if latency is None:
        latency = entry_latency(result, publish_ts)
    return {
        "stream_id": frame.stream_id,
        "seq": str(frame.seq),
        "pts": "" if frame.pts is None else f"{frame.pts:.6f}",
        "capture_ts": f"{frame.capture_ts:.6f}",
        "width": str(frame.letterbox.src_w),
        "height": str(frame.letterbox.src_h),
        "model_id": model_id,
        "worker": str(result.worker_id),
        "batch_size": str(result.batch_size),
        "detections": detections_json(result.detections),
        "latency_ms": json.dumps(latency, separators=(",", ":")),
    }


_LABELS: dict[str, str] = {}  # label -> its JSON string (a model's class names: a few)
_DETECTION = '{"label":%s,"class_id":%s,"score":%s,"box":[%s,%s,%s,%s]%s}'


def detections_json(detections: Sequence[Detection]) -> str:
    """The ``detections`` field: ``json.dumps`` of each one's :func:`_detection` dict
    (compact), the same text written directly, without the dicts (the output stage's hottest
    loop: ~1.2x faster with 50 boxes, type checks included).  Only detections of the plain
    types the direct path spells as ``json`` does (:func:`_plain`) take it; anything else (a
    bool, None, NaN, a numpy scalar) takes ``json``'s own path, with its spelling or its
    error."""
    if not all([_plain(d) for d in detections]):
        return json.dumps([_detection(d) for d in detections], separators=(",", ":"))
    labels, text = _LABELS, _DETECTION
    parts = [
        text
        % (
            labels.get(d.label) or _label_json(d.label),
            d.class_id,
            d.score,
            d.x1,
            d.y1,
            d.x2,
            d.y2,
            "" if d.track_id is None else f',"track_id":{d.track_id}',
        )
        for d in detections
    ]
    return "[" + ",".join(parts) + "]"


def _plain(d: Detection) -> bool:
    """A str label, int ids and finite float/int numbers: the exact types (a bool is an int
    and a numpy float64 a float to ``isinstance``, but ``%s`` spells them otherwise)."""
    numbers = (d.score, d.x1, d.y1, d.x2, d.y2)
    return (
        type(d.label) is str
        and type(d.class_id) is int
        and (d.track_id is None or type(d.track_id) is int)
        and all([type(v) is float or type(v) is int for v in numbers])
        and math.isfinite(sum(numbers))
    )


def _label_json(label: str) -> str:
    text = json.dumps(label)
    if len(_LABELS) < 4096:
        _LABELS[label] = text
    return text


def _detection(d: Detection) -> dict[str, Any]:
    out: dict[str, Any] = {
        "label": d.label,
        "class_id": d.class_id,
        "score": d.score,
        "box": [d.x1, d.y1, d.x2, d.y2],
    }
    if d.track_id is not None:
        out["track_id"] = d.track_id
    return out


@dataclass(frozen=True)
class Entry:
    """A detections entry as a consumer reads it back."""

    entry_id: str
    stream_id: str
    seq: int
    pts: float | None
    capture_ts: float
    width: int
    height: int
    model_id: str
    worker: int
    batch_size: int
    detections: list[dict[str, Any]]
    latency_ms: dict[str, float]


def parse_entry(entry_id: str | bytes, fields: dict[Any, Any]) -> Entry:
    """Decode one XRANGE/XREAD entry (bytes or str fields)."""

    def text(value: Any) -> str:
        return value.decode() if isinstance(value, bytes) else str(value)

    f = {text(k): text(v) for k, v in fields.items()}
    return Entry(
        entry_id=text(entry_id),
        stream_id=f["stream_id"],
        seq=int(f["seq"]),
        pts=float(f["pts"]) if f["pts"] else None,
        capture_ts=float(f["capture_ts"]),
        width=int(f["width"]),
        height=int(f["height"]),
        model_id=f["model_id"],
        worker=int(f["worker"]),
        batch_size=int(f["batch_size"]),
        detections=json.loads(f["detections"]),
        latency_ms=json.loads(f["latency_ms"]),
    )


# ---------------------------------------------------------------------------- entry ids
StreamId = tuple[int, int]  # a Redis stream entry id, <ms>-<n>


def parse_stream_id(text: str | bytes) -> StreamId:
    """``b"1700000000123-42"`` -> ``(1700000000123, 42)``."""
    raw = text.decode() if isinstance(text, bytes) else text
    ms, _, n = raw.partition("-")
    return int(ms), int(n or 0)


def format_stream_id(entry_id: StreamId) -> str:
    return f"{entry_id[0]}-{entry_id[1]}"


def next_entry_id(capture_ts: float, seq: int, last: StreamId | None) -> StreamId:
    """The explicit id of a detections entry: ``<ms>-<seq>``, strictly after ``last``.

    ``ms`` is the capture time in milliseconds, raised to ``last``'s when the clock stepped
    back (``max(capture_ms, last_ms)``), and one past it when that alone would not be after
    ``last`` (same millisecond, and ``seq`` not above ``last``'s, e.g. after a restart that
    began counting ``seq`` from 0 again).  The second part is always the frame's ``seq``, so
    an id names its frame: a write of that id that Redis refuses as "equal or smaller" is a
    duplicate exactly when the entry stored under it has the same ``seq`` and
    ``capture_ts``.  A clock that stepped back costs at most 1 ms of drift per frame, caught
    up as soon as frames come slower than one per ms.
    """
    ms = max(0, int(capture_ts * 1000))
    if last is not None:
        if ms < last[0]:
            ms = last[0]
        if ms == last[0] and seq <= last[1]:
            ms += 1
    return ms, seq


# ---- keys shared by the output stage, the operator API and tracking -----------------------
# Counts: one hash per time bucket (a minute) for every stream, so a window of an hour for 100
# streams is 60 HGETALLs in one pipeline.  Key ``<prefix>:counts:<bucket_start_epoch_s>``,
# field ``<stream_id>|<label>|<metric>`` -> integer.  ``metric`` is ``boxes`` (detections seen,
# one per box per frame) or, with tracking, ``tracks`` (unique track ids first seen in the
# bucket), ``zone:<zone>:enter``, ``zone:<zone>:exit``, ``line:<line>:in``, ``line:<line>:out``.
# Stream ids and labels never contain '|'.  Buckets expire after the counts retention.
COUNT_BUCKET_S = 60


def counts_key(prefix: str, bucket_start: int) -> str:
    return f"{prefix}:counts:{bucket_start}"


def count_field(stream_id: str, label: str, metric: str = "boxes") -> str:
    return f"{stream_id}|{label}|{metric}"


def snapshot_key(prefix: str, stream_id: str) -> str:
    """Latest annotated JPEG of a stream (bytes, with a TTL)."""
    return f"{prefix}:snapshot:{stream_id}"


def registry_key(prefix: str) -> str:
    """Runtime stream registry: hash stream id -> JSON of its record (added entry, patch of a
    config file stream, or tombstone; :mod:`visionflow.streams.merge`, no password in it)."""
    return f"{prefix}:registry"


def registry_version_key(prefix: str) -> str:
    """Counter bumped by every registry write (a pipeline polls it with one GET)."""
    return f"{prefix}:registry:version"


def events_key(prefix: str, stream_id: str) -> str:
    """Tracking events (enter, exit, cross, loiter) of a stream: a Redis stream."""
    return f"{prefix}:events:{stream_id}"


def encode_event(stream_id: str, event: TrackEvent) -> dict[str, str]:
    """The fields of one tracking events entry."""
    return {
        "kind": event.kind,
        "stream_id": stream_id,
        "track_id": str(event.track_id),
        "label": event.label,
        "ts": f"{event.ts:.6f}",
        "seq": str(event.seq),
        "box": json.dumps([round(v, 2) for v in event.box], separators=(",", ":")),
        "zone": event.zone,
        "line": event.line,
        "direction": event.direction,
        "dwell_s": "" if event.dwell_s is None else f"{event.dwell_s:.3f}",
        "inferred": "1" if event.inferred else "0",
    }


# ---- fleet: nodes sharing the streams through leases (visionflow.fleet) --------------------
# Family ``fleet``: ``<prefix>:fleet:<kind>`` and ``<prefix>:fleet:<kind>:<id>``; a node or
# stream id has no ':' and is always the last segment, so these never collide.
def fleet_nodes_key(prefix: str) -> str:
    """Hash node id -> JSON of its last heartbeat (weight, capacity, labels, state, owned
    and running streams, heartbeat_ts); kept after the node died (alive: its alive key)."""
    return f"{prefix}:fleet:nodes"


def fleet_alive_key(prefix: str, node_id: str) -> str:
    """String with a TTL of one lease timeout, refreshed by every heartbeat of the node."""
    return f"{prefix}:fleet:alive:{node_id}"


def fleet_lease_key(prefix: str, stream_id: str) -> str:
    """The stream's lease: ``<node_id>/<fence>.<nonce>``, with a PX TTL (redis-py ``Lock``)."""
    return f"{prefix}:fleet:lease:{stream_id}"


def fleet_fence_key(prefix: str) -> str:
    """Counter: each lease taken gets the next value (a fencing token, in the lease value)."""
    return f"{prefix}:fleet:fence"


def fleet_seq_key(prefix: str) -> str:
    """Hash stream id -> JSON ``{"floor", "node", "fence", "released", "ts"}``: the lowest
    ``seq`` the stream's next owner may use, written by its owner with every renewal."""
    return f"{prefix}:fleet:seq"


def fleet_handovers_key(prefix: str) -> str:
    """Redis stream of ownership changes: ``stream_id``, ``from_node``, ``to_node``,
    ``cause`` (new|released|expired), ``last_seq`` (newest seq in the detections stream at
    takeover, -1 if none), ``first_seq`` (the new owner's first), ``ts``."""
    return f"{prefix}:fleet:handovers"


def fleet_drain_key(prefix: str, node_id: str) -> str:
    """Set (by ``POST /fleet/nodes/{id}/drain``): the node hands its streams over and takes
    none until the key is deleted (``DELETE`` of the same route)."""
    return f"{prefix}:fleet:drain:{node_id}"
