"""Line crossings nobody saw, inferred from how a track moved before or after.

A detector misses an object hidden behind another, or one it does not make out in front of
something, for a second or more; when that happens as the object crosses a line, no track
crosses it and the count is short.  Two cases are inferred (``infer_unseen_s``, off by
default), each along a straight path at the track's speed for at most ``infer_unseen_s``
seconds, never beyond the frame and never back to before the stream's tracking began:

- *first seen beyond it*: a new track (not an id given back) first seen in mid-frame, not at
  a border (it did not just come in), looks back along the speed it had over its first
  :data:`AGE_S` (or its first :data:`SIGHTINGS` sightings, at a low frame rate): a line that
  path crosses was crossed before it was seen;
- *last seen before it*: a track lost in mid-frame, not at a border, whose id never came
  back looks ahead along the speed of its last :data:`RECENT_S` (at least its last
  :data:`SIGHTINGS` sightings): a line that path crosses was crossed after it was lost.  It
  is decided once the id can no longer come back (``keep_s``: ``lost_track_s`` or the
  re-identification by appearance's ``appearance_s``, whichever is longer) and at least
  :data:`MATCH_S` after the estimated crossing, so a crossing seen meanwhile is known.

Both need :data:`SIGHTINGS` sightings for the speed (a box flickering between two objects, or
a track of three frames, has no speed worth following).  One object can be both (lost before
the line and found beyond it under a new id), or be seen crossing under another id before or
after: an inferred crossing is left out where another track crossed the same line the same
way (seen or inferred, same label) within an object height along the line and within
:data:`MATCH_S` plus the time between the two tracks (the object may have waited, hidden),
unless the two tracks were ever seen at the same time (then they are two objects: the one
that hid this one, say); and a crossing seen after such an inferred one is an event but not
counted again (:meth:`UnseenCrossings.note`).  An inferred crossing is a ``cross`` event with
``inferred`` set, its ``ts`` the estimated time of the crossing, its ``seq`` that of the frame
it was inferred in and its box the track's last (looking ahead) or current (looking back)
one; it is counted in the bucket of the frame it was inferred in.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field

from visionflow.pipeline.frames import TrackEvent
from visionflow.tracking.geometry import Box, Point, at_border, segments_cross, signed_distance

AGE_S = 0.5  # a new track's speed: over its first this many seconds (and SIGHTINGS)
RECENT_S = 1.0  # a lost track's speed: over its last this many seconds (and SIGHTINGS)
GIVE_UP_S = 2.0  # a new track with fewer than SIGHTINGS sightings this long after: no look back
MATCH_S = 1.0  # crossings of one line and direction this close in time may be one object
SIGHTINGS = 4  # a speed needs at least this many sightings


@dataclass(frozen=True)
class LineShape:
    """What the inference needs of a line (pixels)."""

    id: str
    start: Point
    end: Point
    margin_px: float
    labels: Sequence[str] | None

    def along(self, point: Point) -> float:
        """Where ``point`` lies along the line: px from its start, projected."""
        dx, dy = self.end[0] - self.start[0], self.end[1] - self.start[1]
        length = math.hypot(dx, dy) or 1.0
        return ((point[0] - self.start[0]) * dx + (point[1] - self.start[1]) * dy) / length


@dataclass(frozen=True)
class Crossing:
    """A crossing, seen or inferred, remembered so an inferred one does not repeat it."""

    line: str
    direction: str
    label: str
    ts: float
    along: float  # where on the line, px from its start
    height: float  # of the object's box
    track_id: int
    first_seen: float  # the track's clock when first and last seen (as of this crossing):
    last_seen: float  # its span, once the track is forgotten
    inferred: bool = False


@dataclass
class _Path:
    label: str
    born: bool  # a new id (not one given back)
    first: tuple[float, Point, Box, float]  # clock, anchor, box, ts when first seen
    recent: deque[tuple[float, Point]] = field(default_factory=deque)  # clock, anchor
    last_box: Box = (0.0, 0.0, 0.0, 0.0)
    last_ts: float = 0.0
    sightings: int = 0  # over its first AGE_S
    looked_back: bool = False


class UnseenCrossings:
    """The inferred crossings of one stream's lines (see the module's docstring)."""

    def __init__(
        self,
        lines: Sequence[LineShape],
        size: tuple[int, int],
        infer_s: float,
        keep_s: float,
        edge: float,
    ) -> None:
        self.lines = {line.id: line for line in lines}
        self.size, self.infer_s, self.edge = size, infer_s, edge
        #: a path is decided this long after it was last seen: its id can no longer come
        #: back, and a crossing seen up to MATCH_S after the estimated one is known
        self.keep_s = max(keep_s, infer_s + MATCH_S)
        self.start: float | None = None  # the clock when tracking began
        self.paths: dict[int, _Path] = {}
        #: crossings (with the clock when noted), kept while an inference may repeat them
        self.crossings: deque[tuple[float, Crossing]] = deque()
        #: when each track was first and last seen, while its crossings are kept
        self.spans: dict[int, tuple[float, float]] = {}

    def note(self, event: TrackEvent, point: Point, clock: float) -> bool:
        """A crossing seen (``event``, its anchor ``point``); whether it repeats a crossing
        inferred for another track (the same object, found again: not to be counted)."""
        line = self.lines[event.line]
        first = self.spans.get(event.track_id, (clock, clock))[0]
        crossing = Crossing(
            event.line,
            event.direction,
            event.label,
            event.ts,
            line.along(point),
            event.box[3] - event.box[1],
            event.track_id,
            first,
            clock,
        )
        repeats = self._repeats(crossing, only_inferred=True)
        self.crossings.append((clock, crossing))
        return repeats

    def seen(
        self,
        track_id: int,
        label: str,
        box: Box,
        point: Point,
        at: tuple[float, float, int],
        born: bool,
    ) -> list[TrackEvent]:
        """A track seen now (``at``: clock, ts, seq; ``born``: a new id): its path, and the
        crossings inferred from the speed of its first :data:`AGE_S`."""
        clock, ts, _ = at
        if self.start is None:
            self.start = clock
        path = self.paths.get(track_id)
        if path is None:
            path = self.paths[track_id] = _Path(label, born, (clock, point, box, ts))
        path.recent.append((clock, point))
        while len(path.recent) > SIGHTINGS and path.recent[0][0] < clock - RECENT_S:
            path.recent.popleft()
        path.last_box, path.last_ts = box, ts
        t0, p0, box0, ts0 = path.first
        self.spans[track_id] = (t0, clock)
        if not path.born or path.looked_back:
            return []
        path.sightings += 1
        if clock - t0 < AGE_S or (path.sightings < SIGHTINGS and clock - t0 < GIVE_UP_S):
            return []
        path.looked_back = True
        if self._at_border(box0) or path.sightings < SIGHTINGS:
            return []
        back = ((p0[0] - point[0]) / (clock - t0), (p0[1] - point[1]) / (clock - t0))
        since_start = t0 - self.start  # never back to before tracking began
        return self._infer(track_id, path, (p0, back, ts0, -1.0), box, at, since_start)

    def step(self, clock: float, ts: float, seq: int) -> list[TrackEvent]:
        """Once a frame, after :meth:`seen`: crossings inferred ahead of the tracks given up for
        good (not seen for ``keep_s``), which are then forgotten, as is what is kept of
        crossings and tracks no inference can match any more."""
        if self.start is None:
            self.start = clock
        out: list[TrackEvent] = []
        for track_id in [t for t, p in self.paths.items() if p.recent[-1][0] < clock - self.keep_s]:
            path = self.paths.pop(track_id)
            (t0, p0), (t1, p1) = path.recent[0], path.recent[-1]
            if not self._may_look_ahead(path):
                continue
            ahead = ((p1[0] - p0[0]) / (t1 - t0), (p1[1] - p0[1]) / (t1 - t0))
            out += self._infer(
                track_id, path, (p1, ahead, path.last_ts, 1.0), path.last_box, (clock, ts, seq)
            )
        late = clock - 2 * self.keep_s - 2 * MATCH_S
        while self.crossings and self.crossings[0][0] < late:
            self.crossings.popleft()
        for track_id in [t for t, (_, last) in self.spans.items() if last < late]:
            del self.spans[track_id]
        return out

    def _infer(
        self,
        track_id: int,
        path: _Path,
        motion: tuple[Point, Point, float, float],
        box: Box,
        at: tuple[float, float, int],
        limit: float = math.inf,
    ) -> list[TrackEvent]:
        """Crossings of the straight path from a point along a velocity (px/s) for up to
        ``infer_s`` (and ``limit``), inside the frame; ``motion``: point, velocity, its ts,
        and the direction of time (-1: walked back from when the track was first seen)."""
        point, velocity, ts, sign = motion
        horizon = min(self.infer_s, limit, self._time_in_frame(point, velocity))
        if horizon <= 0:
            return []
        end = (point[0] + velocity[0] * horizon, point[1] + velocity[1] * horizon)
        events = []
        for line in self.lines.values():
            if line.labels is not None and path.label not in line.labels:
                continue
            d0 = signed_distance(point, line.start, line.end)
            d1 = signed_distance(end, line.start, line.end)
            if min(abs(d0), abs(d1)) < line.margin_px or (d0 > 0) == (d1 > 0):
                continue
            if not segments_cross(point, end, line.start, line.end):
                continue
            direction = "in" if (d0 if sign < 0 else d1) > 0 else "out"  # the side it went to
            share = abs(d0) / (abs(d0) + abs(d1))
            where = (point[0] + (end[0] - point[0]) * share, point[1] + (end[1] - point[1]) * share)
            crossing = Crossing(
                line.id,
                direction,
                path.label,
                ts + sign * share * horizon,
                line.along(where),
                box[3] - box[1],
                track_id,
                path.first[0],
                path.recent[-1][0],
                inferred=True,
            )
            if self._repeats(crossing):
                continue
            self.crossings.append((at[0], crossing))
            events.append(
                TrackEvent(
                    "cross",
                    track_id,
                    path.label,
                    crossing.ts,
                    at[2],
                    box,
                    line=line.id,
                    direction=direction,
                    inferred=True,
                )
            )
        return events

    def _repeats(self, c: Crossing, only_inferred: bool = False) -> bool:
        """Whether another track's kept crossing (``only_inferred``: an inferred one) may be
        this one's object's (see the module's docstring)."""
        span = self._span(c)
        for _, o in self.crossings:
            if o.track_id == c.track_id or (only_inferred and not o.inferred):
                continue
            if (o.line, o.direction, o.label) != (c.line, c.direction, c.label):
                continue
            other = self._span(o)
            if _overlap(span, other) or abs(o.along - c.along) > max(o.height, c.height):
                continue
            between = max(0.0, span[0] - other[1], other[0] - span[1])  # both unseen
            if abs(o.ts - c.ts) <= MATCH_S + between:
                return True
        return False

    def _span(self, c: Crossing) -> tuple[float, float]:
        """When the crossing's track was first and last seen (a forgotten one: as of the
        crossing)."""
        return self.spans.get(c.track_id, (c.first_seen, c.last_seen))

    def _may_look_ahead(self, path: _Path) -> bool:
        (t0, _), (t1, _) = path.recent[0], path.recent[-1]
        return len(path.recent) >= SIGHTINGS and t1 > t0 and not self._at_border(path.last_box)

    @property
    def waiting(self) -> bool:
        """Whether a path given up may still make an inferred crossing."""
        return any(self._may_look_ahead(p) for p in self.paths.values())

    def _at_border(self, box: Box) -> bool:
        return at_border(box, self.size, self.edge)

    def _time_in_frame(self, point: Point, velocity: Point) -> float:
        """Seconds until ``point`` moving at ``velocity`` leaves the frame (inf: not moving)."""
        out = math.inf
        for p, v, size in zip(point, velocity, self.size, strict=True):
            if v > 0:
                out = min(out, (size - p) / v)
            elif v < 0:
                out = min(out, -p / v)
        return max(0.0, out)


def _overlap(a: tuple[float, float], b: tuple[float, float]) -> bool:
    return a[0] <= b[1] and b[0] <= a[1]
