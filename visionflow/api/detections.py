"""``GET /streams/{id}/detections``: entries of a detections stream, paged by entry id."""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from typing import Any

import redis

from visionflow.schema import Entry, detections_key, parse_entry

#: an entry id or epoch milliseconds, optionally exclusive ("(" first, as a ``next`` cursor)
BOUND = re.compile(r"^\(?\d{1,20}(-\d{1,20})?$")
SCAN_LIMIT = 10_000  # most entries looked at for one page when a label filter is given


@dataclass(frozen=True)
class Page:
    entries: list[dict[str, Any]]
    next: str | None  # pass as ``until`` (newest first) or ``since`` (oldest first)


def bad_bound(value: str | None) -> bool:
    return value is not None and not BOUND.match(value)


def read_page(
    client: redis.Redis,
    prefix: str,
    stream_id: str,
    *,
    since: str | None,
    until: str | None,
    limit: int,
    label: str | None,
    newest_first: bool = True,
) -> Page:
    """Up to ``limit`` entries between ``since`` and ``until`` (inclusive unless written
    ``(id``); with ``label``, only entries with such a detection (and only those
    detections), looking at no more than :data:`SCAN_LIMIT` entries for one page."""
    key = detections_key(prefix, stream_id)
    low, high = since or "-", until or "+"
    out: list[dict[str, Any]] = []
    scanned, chunk = 0, limit + 1 if label is None else max(2 * limit, 100)
    while True:
        if newest_first:
            rows = client.xrevrange(key, max=high, min=low, count=chunk)
        else:
            rows = client.xrange(key, min=low, max=high, count=chunk)
        rows = rows or []
        for entry_id, fields in rows:
            entry = parse_entry(entry_id, fields)  # type: ignore[arg-type]
            scanned += 1
            if len(out) == limit:
                return Page(out, _after(out[-1]["id"]))
            if label is None or any(d.get("label") == label for d in entry.detections):
                out.append(_public(entry, label))
            if scanned >= SCAN_LIMIT:
                return Page(out, _after(entry.entry_id))
        if len(rows) < chunk:
            return Page(out, None)
        last = _text(rows[-1][0])
        if newest_first:
            high = _after(last)
        else:
            low = _after(last)


def _after(entry_id: str) -> str:
    return f"({entry_id}"


def _public(entry: Entry, label: str | None) -> dict[str, Any]:
    data = asdict(entry)
    data["id"] = data.pop("entry_id")
    if label is not None:
        data["detections"] = [d for d in entry.detections if d.get("label") == label]
    return data


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
