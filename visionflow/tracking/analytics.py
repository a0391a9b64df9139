"""Zones and lines of one stream: which tracked objects are where, and what they did.

:class:`StreamAnalytics` takes each frame's confirmed tracks (id, label, box) in order and
returns :class:`~visionflow.pipeline.frames.TrackEvent` s (enter, exit, loiter, cross) and
count increments ``(label, metric)``: ``tracks`` once per new track, ``zone:<z>:enter``,
``zone:<z>:exit``, ``line:<l>:in``, ``line:<l>:out`` once per track and bucket, so the
counts in :data:`visionflow.schema.COUNT_BUCKET_S` buckets are unique tracks.

A track the tracker gives up keeps its side of each line aside while the tracker may still
give its id back (``reid_s`` / ``appearance_s``: an object that left and came back, or was
hidden longer than ``lost_track_s``); when the id comes back it takes that side again, so a
line the object crossed while unseen is counted when it is seen on the other side (as the
truth counts it), instead of the id starting afresh with no side.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from visionflow.pipeline.frames import TrackEvent
from visionflow.schema import COUNT_BUCKET_S
from visionflow.tracking.config import Anchor, LineConfig, TrackingConfig, ZoneConfig
from visionflow.tracking.geometry import points_in_polygon, segments_cross, signed_distance

log = logging.getLogger("visionflow.tracking")
Box = tuple[float, float, float, float]


@dataclass(frozen=True)
class Seen:
    """A confirmed track in one frame."""

    track_id: int
    label: str
    box: Box


@dataclass(frozen=True)
class Frame:
    """What the analytics need of one frame."""

    seq: int
    ts: float  # capture time, for events and count buckets
    clock: float  # the stream's track clock (seconds), for dwell times
    tracks: Sequence[Seen]
    born: Sequence[int] = ()
    removed: Sequence[int] = ()


def anchor_point(box: Box, anchor: Anchor) -> tuple[float, float]:
    x1, y1, x2, y2 = box
    return ((x1 + x2) / 2, y2 if anchor == "bottom_center" else (y1 + y2) / 2)


def _allowed(labels: list[str] | None, label: str) -> bool:
    return labels is None or label in labels


def count_metric(event: TrackEvent) -> str:
    """The counts metric an event adds to ('' for loiter, which is not counted)."""
    if event.kind in ("enter", "exit"):
        return f"zone:{event.zone}:{event.kind}"
    if event.kind == "cross":
        return f"line:{event.line}:{event.direction}"
    return ""


def _event(kind: str, seen: Seen, frame: Frame, **where: Any) -> TrackEvent:
    return TrackEvent(kind, seen.track_id, seen.label, frame.ts, frame.seq, seen.box, **where)


@dataclass
class _Presence:
    inside: bool = False
    pending_since: float | None = None
    entered_at: float = 0.0
    loitered: bool = False
    label: str = ""
    box: Box = (0.0, 0.0, 0.0, 0.0)


@dataclass
class _Side:
    side: int = 0  # -1 left, +1 right, 0 not yet known
    point: tuple[float, float] = (0.0, 0.0)


@dataclass
class _Zone:
    config: ZoneConfig
    polygon: npt.NDArray[np.float64]
    presence: dict[int, _Presence] = field(default_factory=dict)


@dataclass
class _Line:
    config: LineConfig
    start: tuple[float, float]
    end: tuple[float, float]
    margin_px: float
    sides: dict[int, _Side] = field(default_factory=dict)
    #: sides of tracks given up, with the track clock then, while their id may come back
    given_up: dict[int, tuple[_Side, float]] = field(default_factory=dict)


class StreamAnalytics:
    """Zone and line state of one stream at one resolution."""

    def __init__(
        self, config: TrackingConfig, width: int, height: int, stream_id: str = ""
    ) -> None:
        self.config = config
        diagonal = math.hypot(width, height)

        def scale(point: tuple[float, float], units: str) -> tuple[float, float]:
            return (point[0] * width, point[1] * height) if units == "fraction" else point

        self.zones = [
            _Zone(z, np.array([scale(p, z.units) for p in z.points], np.float64))
            for z in config.zones
        ]
        self.lines = [
            _Line(ln, scale(ln.start, ln.units), scale(ln.end, ln.units), ln.margin * diagonal)
            for ln in config.lines
        ]
        for zone in self.zones:
            if zone.config.units == "px" and (
                zone.polygon[:, 0].max() > width or zone.polygon[:, 1].max() > height
            ):
                log.warning(
                    "stream %r: zone %r reaches outside the %dx%d frame",
                    stream_id,
                    zone.config.id,
                    width,
                    height,
                )
        self._bucket = -1
        self._counted: set[tuple[int, str]] = set()
        #: how long the tracker may give a removed track's id back (re-identification)
        self._comeback_s = max(config.reid_s, config.appearance_s)

    def step(self, frame: Frame) -> tuple[list[TrackEvent], list[tuple[str, str]]]:
        events: list[TrackEvent] = []
        labels = {s.track_id: s.label for s in frame.tracks}
        counts: list[tuple[str, str]] = [(labels[t], "tracks") for t in frame.born if t in labels]
        points = np.array(
            [anchor_point(s.box, self.config.anchor) for s in frame.tracks], np.float64
        ).reshape(-1, 2)
        for zone in self.zones:
            events += self._zone_step(zone, frame, points)
        for line in self.lines:
            events += self._line_step(line, frame, points)
        return events, counts + self._count(events, frame.ts)

    def _count(self, events: Sequence[TrackEvent], ts: float) -> list[tuple[str, str]]:
        """Count increments of ``events`` at time ``ts``: each track and metric once per bucket."""
        counts: list[tuple[str, str]] = []
        bucket = int(ts // COUNT_BUCKET_S) * COUNT_BUCKET_S
        if bucket != self._bucket:
            self._bucket, self._counted = bucket, set()
        for event in events:
            metric = count_metric(event)
            if metric and (event.track_id, metric) not in self._counted:
                self._counted.add((event.track_id, metric))
                counts.append((event.label, metric))
        return counts

    def close(self, frame: Frame) -> tuple[list[TrackEvent], list[tuple[str, str]]]:
        """Every open zone presence ends (the tracker was reset): exit events and their
        counts (under the same once per track and bucket rule as :meth:`step`)."""
        events = []
        for zone in self.zones:
            for track_id, p in zone.presence.items():
                if p.inside:
                    events.append(self._exit(zone, track_id, p, frame, frame.clock - p.entered_at))
            zone.presence.clear()
        for line in self.lines:
            line.sides.clear()
            line.given_up.clear()
        return events, self._count(events, frame.ts)

    def _exit(
        self, zone: _Zone, track_id: int, p: _Presence, frame: Frame, dwell: float
    ) -> TrackEvent:
        return TrackEvent(
            "exit",
            track_id,
            p.label,
            frame.ts,
            frame.seq,
            p.box,
            zone=zone.config.id,
            dwell_s=round(max(0.0, dwell), 3),
        )

    def _zone_step(
        self, zone: _Zone, frame: Frame, points: npt.NDArray[np.float64]
    ) -> list[TrackEvent]:
        events: list[TrackEvent] = []
        cfg, t = zone.config, frame.clock
        inside = points_in_polygon(points, zone.polygon) if len(points) else np.zeros(0, bool)
        for seen, raw_inside in zip(frame.tracks, inside, strict=True):
            if not _allowed(cfg.labels, seen.label):
                continue
            p = zone.presence.get(seen.track_id)
            if p is None:
                if not raw_inside:
                    continue
                p = zone.presence[seen.track_id] = _Presence()
            p.label, p.box = seen.label, seen.box
            if bool(raw_inside) == p.inside:
                p.pending_since = None
            else:
                if p.pending_since is None:
                    p.pending_since = t
                if t - p.pending_since >= cfg.min_dwell_s:
                    since, p.pending_since = p.pending_since, None
                    if raw_inside:
                        p.inside, p.entered_at, p.loitered = True, since, False
                        events.append(_event("enter", seen, frame, zone=cfg.id))
                    else:
                        p.inside = False
                        events.append(
                            self._exit(zone, seen.track_id, p, frame, since - p.entered_at)
                        )
            if (
                p.inside
                and cfg.loiter_s is not None
                and not p.loitered
                and t - p.entered_at >= cfg.loiter_s
            ):
                p.loitered = True
                dwell = round(t - p.entered_at, 3)
                events.append(_event("loiter", seen, frame, zone=cfg.id, dwell_s=dwell))
            if not p.inside and p.pending_since is None:
                del zone.presence[seen.track_id]
        for track_id in frame.removed:
            gone = zone.presence.pop(track_id, None)
            if gone is not None and gone.inside:
                events.append(self._exit(zone, track_id, gone, frame, t - gone.entered_at))
        return events

    def _line_step(
        self, line: _Line, frame: Frame, points: npt.NDArray[np.float64]
    ) -> list[TrackEvent]:
        events: list[TrackEvent] = []
        cfg = line.config
        for seen, xy in zip(frame.tracks, points, strict=True):
            if not _allowed(cfg.labels, seen.label):
                continue
            point = (float(xy[0]), float(xy[1]))
            distance = signed_distance(point, line.start, line.end)
            if abs(distance) < max(line.margin_px, 1e-9):
                continue
            side = 1 if distance > 0 else -1
            state = line.sides.get(seen.track_id)
            if state is None:  # a new track, or an id given up and re-identified: its side back
                kept = line.given_up.pop(seen.track_id, None)
                state = line.sides[seen.track_id] = kept[0] if kept else _Side()
            if (
                state.side
                and side != state.side
                and segments_cross(state.point, point, line.start, line.end)
            ):
                direction = "in" if side > 0 else "out"
                events.append(_event("cross", seen, frame, line=cfg.id, direction=direction))
            state.side, state.point = side, point
        for track_id in frame.removed:
            gone = line.sides.pop(track_id, None)
            if gone is not None and gone.side and self._comeback_s > 0:
                line.given_up[track_id] = (gone, frame.clock)
        late = frame.clock - self._comeback_s
        while line.given_up:  # forget those whose id can no longer come back (oldest first:
            oldest = next(iter(line.given_up))  # kept in the order given up, clock rising)
            if line.given_up[oldest][1] >= late:
                break
            del line.given_up[oldest]
        return events
