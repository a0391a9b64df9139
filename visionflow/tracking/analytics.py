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
the point where it was last seen: an object seen again (the next frame, or with its id back
after a gap) on the far side of a zone that the straight path between the two points goes
through passed through it unseen, and gets that zone's enter and exit (with the dwell the
path spent inside) in the frame it is seen again.
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
    points_in_polygon,
    segments_cross,
    signed_distance,
)
from visionflow.tracking.unseen import LineShape, UnseenCrossings

log = logging.getLogger("visionflow.tracking")
PATH_STEPS = 32  # a path between two sightings is tested for zones at this many points


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

    box: Box = (0.0, 0.0, 0.0, 0.0)  # the polygon's bounding box

    def __post_init__(self) -> None:
        lo, hi = self.polygon.min(axis=0), self.polygon.max(axis=0)
        self.box = (float(lo[0]), float(lo[1]), float(hi[0]), float(hi[1]))


@dataclass
class _Line:
    config: LineConfig
    start: tuple[float, float]
    end: tuple[float, float]
    margin_px: float
    sides: dict[int, _Side] = field(default_factory=dict)
    #: sides of tracks given up, with the track clock then, while their id may come back
    given_up: dict[int, tuple[_Side, float]] = field(default_factory=dict)


def _meets(box: Box, a: tuple[float, float], b: tuple[float, float]) -> bool:
    """Whether the bounding box of segment a-b meets ``box``."""
    return (
        min(a[0], b[0]) <= box[2]
        and max(a[0], b[0]) >= box[0]
        and min(a[1], b[1]) <= box[3]
        and max(a[1], b[1]) >= box[1]
    )


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
        #: where each track's anchor was last seen, and the clock then (kept for tracks given
        #: up while their id may come back, as for lines)
        self._last: dict[int, tuple[tuple[float, float], float]] = {}
        self._sweep_at = 0.0
        self._unseen = (
            UnseenCrossings(
                [
                    LineShape(ln.config.id, ln.start, ln.end, ln.margin_px, ln.config.labels)
                    for ln in self.lines
                ],
                (width, height),
                config.infer_unseen_s,
                config.lost_track_s + self._comeback_s,
                config.edge,
            )
            if config.infer_unseen_s > 0 and self.lines
            else None
        )
        self._frames = 0

    @property
    def waiting(self) -> bool:
        """Whether a frame with no track in it may still make events: tracks given up whose
        crossings are inferred once their ids can no longer come back."""
        return self._unseen is not None and bool(self._unseen.paths)

    def step(self, frame: Frame) -> tuple[list[TrackEvent], list[tuple[str, str]]]:
        events: list[TrackEvent] = []
        labels = {s.track_id: s.label for s in frame.tracks}
        counts: list[tuple[str, str]] = [(labels[t], "tracks") for t in frame.born if t in labels]
        points = np.array(
            [anchor_point(s.box, self.config.anchor) for s in frame.tracks], np.float64
        ).reshape(-1, 2)
        before = [self._last.get(s.track_id) for s in frame.tracks] if self.zones else []
        for zone in self.zones:
            events += self._zone_step(zone, frame, points, before)
        for line in self.lines:
            events += self._line_step(line, frame, points)
        if self._unseen is not None:
            events += self._infer_unseen(frame, points, events)
        if self.zones:
            self._remember(frame, points)
        self._frames += 1
        return events, counts + self._count(events, frame.ts)

    def _infer_unseen(
        self, frame: Frame, points: npt.NDArray[np.float64], events: list[TrackEvent]
    ) -> list[TrackEvent]:
        """Crossings nobody saw (:mod:`visionflow.tracking.unseen`); this frame's seen
        crossings are noted first, so an inferred one does not repeat them."""
        unseen = self._unseen
        assert unseen is not None
        for event in events:
            if event.kind == "cross":
                unseen.note(event, anchor_point(event.box, self.config.anchor), frame.clock)
        born = set(frame.born) if self._frames else set()  # not those on screen at the start
        at = (frame.clock, frame.ts, frame.seq)
        out: list[TrackEvent] = []
        for seen, xy in zip(frame.tracks, points, strict=True):
            point = (float(xy[0]), float(xy[1]))
            out += unseen.seen(
                seen.track_id, seen.label, seen.box, point, at, seen.track_id in born
            )
        return out + unseen.step(*at)

    def _remember(self, frame: Frame, points: npt.NDArray[np.float64]) -> None:
        """Keep each track's last point while the tracker may still give its id back (lost
        for up to ``lost_track_s``, then given up for up to the re-identification time)."""
        for seen, xy in zip(frame.tracks, points, strict=True):
            self._last[seen.track_id] = ((float(xy[0]), float(xy[1])), frame.clock)
        if frame.clock < self._sweep_at:
            return  # forgotten at most once a second
        self._sweep_at = frame.clock + 1.0
        late = frame.clock - self.config.lost_track_s - self._comeback_s
        for track_id in [t for t, (_, clock) in self._last.items() if clock < late]:
            del self._last[track_id]

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
        before: Sequence[tuple[tuple[float, float], float] | None],
    ) -> list[TrackEvent]:
        events: list[TrackEvent] = []
        cfg, t = zone.config, frame.clock
        inside = points_in_polygon(points, zone.polygon) if len(points) else np.zeros(0, bool)
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
        before: Sequence[tuple[tuple[float, float], float] | None],
        inside: npt.NDArray[np.bool_],
    ) -> dict[int, tuple[float, npt.NDArray[np.bool_]]]:
        """Per track (index) outside ``zone``, not in it before and seen before: the time
        since then and which of :data:`PATH_STEPS` points on the straight path between are
        inside it, for the paths whose bounding box meets the zone's (all in one test)."""
        rows, starts = [], []
        for i, last in enumerate(before):  # plain floats: most frames have no candidate
            if last is None or inside[i] or frame.tracks[i].track_id in zone.presence:
                continue
            if _meets(zone.box, last[0], (float(points[i, 0]), float(points[i, 1]))):
                rows.append(i)
                starts.append(last[0])
        if not rows:
            return {}
        s = np.linspace(0.0, 1.0, PATH_STEPS + 1)[1:-1, None]  # [S, 1]
        a, b = np.array(starts)[:, None, :], points[rows][:, None, :]  # [K, 1, 2]
        samples = (a + (b - a) * s[None]).reshape(-1, 2)
        through = points_in_polygon(samples, zone.polygon).reshape(len(rows), -1)
        return {
            i: (frame.clock - last[1], hits)
            for i, hits in zip(rows, through, strict=True)
            if hits.any() and (last := before[i]) is not None
        }

    def _passed(
        self, zone: _Zone, seen: Seen, frame: Frame, gap: float, hits: npt.NDArray[np.bool_]
    ) -> list[TrackEvent]:
        """Enter and exit (``inferred``, at the times the path was inside: its first and last
        point in the zone) of a track whose straight path since it was last seen, ``gap``
        seconds ago, went through ``zone`` (``hits``: which of its points are inside), the
        time inside at least ``min_dwell_s``."""
        dwell = float(hits.mean()) * gap
        if dwell < zone.config.min_dwell_s:
            return []
        at = np.flatnonzero(hits)
        share = np.linspace(0.0, 1.0, PATH_STEPS + 1)[1:-1][[at[0], at[-1]]]
        ago = (1.0 - share) * gap  # before this frame
        where = {"zone": zone.config.id, "inferred": True}
        enter = _event("enter", seen, frame, **where)
        exit_ = _event("exit", seen, frame, **where, dwell_s=round(dwell, 3))
        return [
            dataclasses.replace(enter, ts=frame.ts - float(ago[0])),
            dataclasses.replace(exit_, ts=frame.ts - float(ago[1])),
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
