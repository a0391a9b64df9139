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
truth counts it), instead of the id starting afresh with no side.  Zones do the same with
the point where it was last seen (``passages``, on by default): an object seen again (the next
frame, or with its id back after a gap) outside a zone, and outside it where last seen, whose
straight path between the two points goes through it passed through it unseen, and gets that
zone's enter and exit (``inferred``, timed and with the dwell of the path inside) in the frame
it is seen again; not from a sighting at a frame border (it may have been outside the frame)
nor over a path longer than one object can have walked (:data:`PATH_HEIGHTS_PER_S`).  Line
crossings nobody saw are inferred by :mod:`visionflow.tracking.unseen` (``infer_unseen_s``).
"""

from __future__ import annotations

import dataclasses
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
from visionflow.tracking.geometry import (
    Box,
    Polygon,
    anchor_of,
    at_border,
    line_length,
    segments_cross,
    signed_distance,
)
from visionflow.tracking.unseen import LineShape, UnseenCrossings

log = logging.getLogger("visionflow.tracking")
PATH_STEPS = 32  # a path between two sightings is tested for zones at 31 points between
_SHARES = np.linspace(0.0, 1.0, PATH_STEPS + 1)[1:-1]  # where on the path, 0..1
#: a path between two sightings longer than (1 + this x its seconds) object heights is not
#: taken (an id that jumped to another object, not one object walking there)
PATH_HEIGHTS_PER_S = 5.0


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


def anchor_point(box: Box, anchor: Anchor, size: tuple[float, float]) -> tuple[float, float]:
    """``anchor`` of ``box`` in a frame of ``size`` (:func:`anchor_of`)."""
    return anchor_of(box, anchor == "bottom_center", size)


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

    box: Box = field(init=False)  # the polygon's bounding box
    shape: Polygon = field(init=False)  # its edges, for the inside tests

    def __post_init__(self) -> None:
        lo, hi = self.polygon.min(axis=0), self.polygon.max(axis=0)
        self.box = (float(lo[0]), float(lo[1]), float(hi[0]), float(hi[1]))
        self.shape = Polygon.of(self.polygon)


@dataclass
class _Line:
    config: LineConfig
    start: tuple[float, float]
    end: tuple[float, float]
    margin_px: float
    sides: dict[int, _Side] = field(default_factory=dict)
    #: sides of tracks given up, with the track clock then, while their id may come back
    given_up: dict[int, tuple[_Side, float]] = field(default_factory=dict)
    length: float = field(init=False)

    def __post_init__(self) -> None:
        self.length = line_length(self.start, self.end)


@dataclass(frozen=True)
class _Before:
    """Where this frame's tracks were last seen (arrays aligned with the frame's tracks): a
    path since then that a zone passage may be read from (``usable``: seen before, in
    mid-frame, and not farther than one object can have walked)."""

    xy: npt.NDArray[np.float64]  # [N, 2]
    clock: npt.NDArray[np.float64]  # [N]
    usable: npt.NDArray[np.bool_]  # [N]


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
        #: per track, where it was last seen: anchor x, y, the clock, its box's height and
        #: whether the box touched a border (kept while its id may come back, as for lines)
        self._last: dict[int, tuple[float, float, float, float, bool]] = {}
        self._size = (width, height)
        self._sweep_at = 0.0
        self._unseen = (
            UnseenCrossings(
                [
                    LineShape(ln.config.id, ln.start, ln.end, ln.margin_px, ln.config.labels)
                    for ln in self.lines
                ],
                (width, height),
                config.infer_unseen_s,
                max(config.lost_track_s, config.appearance_s),  # a mid-frame id comes back
                config.edge,
            )
            if config.infer_unseen_s > 0 and self.lines
            else None
        )

    @property
    def waiting(self) -> bool:
        """Whether a frame with no track in it may still make events: tracks given up whose
        crossings are inferred once their ids can no longer come back."""
        return self._unseen is not None and self._unseen.waiting

    def step(self, frame: Frame) -> tuple[list[TrackEvent], list[tuple[str, str]]]:
        events: list[TrackEvent] = []
        labels = {s.track_id: s.label for s in frame.tracks}
        counts: list[tuple[str, str]] = [(labels[t], "tracks") for t in frame.born if t in labels]
        points = np.array(
            [anchor_point(s.box, self.config.anchor, self._size) for s in frame.tracks], np.float64
        ).reshape(-1, 2)
        before = self._before(frame, points) if self.zones else None
        for zone in self.zones:
            events += self._zone_step(zone, frame, points, before)
        for line in self.lines:
            events += self._line_step(line, frame, points)
        inferred, repeats = self._infer_unseen(frame, points, events)
        counted = [e for i, e in enumerate(events) if i not in repeats] + inferred
        if self.zones:
            self._remember(frame, points)
        return events + inferred, counts + self._count(counted, frame.ts)

    def _infer_unseen(
        self, frame: Frame, points: npt.NDArray[np.float64], events: list[TrackEvent]
    ) -> tuple[list[TrackEvent], set[int]]:
        """Crossings nobody saw (:mod:`visionflow.tracking.unseen`), and which of this
        frame's seen crossings (their index in ``events``) repeat one inferred before for
        another id of the object, not to be counted again; the seen ones are noted first, so
        an inferred one does not repeat them."""
        unseen = self._unseen
        if unseen is None:
            return [], set()
        repeats = {
            i
            for i, e in enumerate(events)
            if e.kind == "cross"
            and unseen.note(e, anchor_point(e.box, self.config.anchor, self._size), frame.clock)
        }
        at = (frame.clock, frame.ts, frame.seq)
        born = set(frame.born)
        out: list[TrackEvent] = []
        for seen, xy in zip(frame.tracks, points, strict=True):
            point = (float(xy[0]), float(xy[1]))
            out += unseen.seen(
                seen.track_id, seen.label, seen.box, point, at, seen.track_id in born
            )
        return out + unseen.step(*at), repeats

    def _remember(self, frame: Frame, points: npt.NDArray[np.float64]) -> None:
        """Keep each track's last point while the tracker may still give its id back (lost
        for up to ``lost_track_s``, then given up for up to the re-identification time)."""
        for seen, xy in zip(frame.tracks, points, strict=True):
            height = seen.box[3] - seen.box[1]
            border = at_border(seen.box, self._size, self.config.edge)
            self._last[seen.track_id] = (float(xy[0]), float(xy[1]), frame.clock, height, border)
        if frame.clock < self._sweep_at:
            return  # forgotten at most once a second
        self._sweep_at = frame.clock + 1.0
        late = frame.clock - self.config.lost_track_s - self._comeback_s
        for track_id in [t for t, last in self._last.items() if last[2] < late]:
            del self._last[track_id]

    def _before(self, frame: Frame, points: npt.NDArray[np.float64]) -> _Before:
        """Where this frame's tracks were last seen, and which paths since are usable."""
        unknown = (np.nan,) * 5
        rows = np.array(
            [self._last.get(seen.track_id, unknown) for seen in frame.tracks], np.float64
        ).reshape(-1, 5)
        xy, clock, height, border = rows[:, 0:2], rows[:, 2], rows[:, 3], rows[:, 4]
        # rows of NaN (never seen) compare False: not usable
        reach = height * (1.0 + PATH_HEIGHTS_PER_S * (frame.clock - clock))
        walked = np.hypot(points[:, 0] - xy[:, 0], points[:, 1] - xy[:, 1])
        return _Before(xy, clock, (border == 0) & (walked <= reach))

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
        self._last.clear()
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
        self,
        zone: _Zone,
        frame: Frame,
        points: npt.NDArray[np.float64],
        before: _Before | None,
    ) -> list[TrackEvent]:
        events: list[TrackEvent] = []
        cfg, t = zone.config, frame.clock
        inside = zone.shape.contains(points) if len(points) else np.zeros(0, bool)
        paths = self._paths_through(zone, frame, points, before, inside)
        for i, (seen, raw_inside) in enumerate(zip(frame.tracks, inside, strict=True)):
            if not _allowed(cfg.labels, seen.label):
                continue
            p = zone.presence.get(seen.track_id)
            if p is None:
                if not raw_inside:
                    if i in paths:
                        events += self._passed(zone, seen, frame, *paths[i])
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

    def _paths_through(
        self,
        zone: _Zone,
        frame: Frame,
        points: npt.NDArray[np.float64],
        before: _Before | None,
        inside: npt.NDArray[np.bool_],
    ) -> dict[int, tuple[float, npt.NDArray[np.bool_]]]:
        """Per track (index) outside ``zone`` now and where it was last seen, with no presence
        in it, whose usable path since goes through it: the time since then and which of the
        31 points on the straight path between are inside (paths whose bounding box misses
        the zone's are not sampled)."""
        if before is None or not len(points) or not zone.config.passages:
            return {}
        x_lo, y_lo, x_hi, y_hi = zone.box
        a, b = before.xy, points
        rows = np.flatnonzero(before.usable & ~inside)
        if not len(rows):
            return {}
        a, b = a[rows], b[rows]  # bounding boxes of the paths meeting the zone's:
        meets = (np.minimum(a[:, 0], b[:, 0]) <= x_hi) & (np.maximum(a[:, 0], b[:, 0]) >= x_lo)
        meets &= (np.minimum(a[:, 1], b[:, 1]) <= y_hi) & (np.maximum(a[:, 1], b[:, 1]) >= y_lo)
        rows = rows[meets]
        free = [frame.tracks[int(i)].track_id not in zone.presence for i in rows]
        rows = rows[np.array(free, bool)]
        if len(rows):  # and not inside where last seen (given up in it: it exited then)
            rows = rows[~zone.shape.contains(before.xy[rows])]
        if not len(rows):
            return {}
        start, end = before.xy[rows][:, None, :], points[rows][:, None, :]  # [K, 1, 2]
        samples = (start + (end - start) * _SHARES[None, :, None]).reshape(-1, 2)
        through = zone.shape.contains(samples).reshape(len(rows), -1)
        return {
            int(i): (frame.clock - float(before.clock[i]), hits)
            for i, hits in zip(rows, through, strict=True)
            if hits.any()
        }

    def _passed(
        self, zone: _Zone, seen: Seen, frame: Frame, gap: float, hits: npt.NDArray[np.bool_]
    ) -> list[TrackEvent]:
        """Enter and exit (``inferred``) of a track whose straight path since it was last
        seen, ``gap`` seconds ago, went through ``zone`` (``hits``: which of its points are
        inside), at the times of its first and last point inside (a point stands for a 32nd
        of the path), if that is at least ``min_dwell_s``."""
        at = np.flatnonzero(hits)
        step = gap / PATH_STEPS
        dwell = (at[-1] - at[0] + 1) * step
        if dwell < zone.config.min_dwell_s:
            return []
        entered = frame.ts - gap + (at[0] + 0.5) * step  # the point's 32nd of the path
        where = {"zone": zone.config.id, "inferred": True}
        return [
            dataclasses.replace(_event("enter", seen, frame, **where), ts=entered),
            dataclasses.replace(
                _event("exit", seen, frame, **where, dwell_s=round(dwell, 3)),
                ts=entered + dwell,
            ),
        ]

    def _line_step(
        self, line: _Line, frame: Frame, points: npt.NDArray[np.float64]
    ) -> list[TrackEvent]:
        events: list[TrackEvent] = []
        cfg = line.config
        for seen, xy in zip(frame.tracks, points, strict=True):
            if not _allowed(cfg.labels, seen.label):
                continue
            point = (float(xy[0]), float(xy[1]))
            distance = signed_distance(point, line.start, line.end, line.length)
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
