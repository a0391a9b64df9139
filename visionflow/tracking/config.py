"""Per-stream tracking settings: the tracker, zones (polygons) and directed lines.

A stream tracks when its config has a ``tracking`` section (off by default)::

    tracking:
      lost_track_s: 1.0
      zones:
        - {id: door, points: [[0.1, 0.5], [0.4, 0.5], [0.4, 1.0], [0.1, 1.0]], loiter_s: 10}
      lines:
        - {id: gate, start: [0.5, 0], end: [0.5, 1], labels: [car]}

Coordinates are fractions of the frame (``units: fraction``, the default) or pixels of the
original frame (``units: px``).  A line's ``in`` direction is a crossing from its left to
its right as seen looking from ``start`` to ``end`` on the image (y grows downwards): the
line ``[0, 0.5] -> [1, 0.5]`` counts objects moving down as ``in``.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from visionflow.tracking.bytetrack import TrackerParams
from visionflow.tracking.geometry import polygon_area, segments_cross

Point = tuple[float, float]
ShapeId = Annotated[
    str,
    Field(
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}$",
        description="1-64 ASCII letters, digits, '_', '.', '-' (no ':' or '|', so it fits "
        "the counts field <stream>|<label>|zone:<id>:enter).",
    ),
]
Units = Literal["fraction", "px"]
Anchor = Literal["bottom_center", "center"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _check_point(where: str, index: int, point: Point, units: Units) -> None:
    x, y = point
    if units == "fraction" and not (0 <= x <= 1 and 0 <= y <= 1):
        raise ValueError(
            f"{where} {index} {[x, y]} is outside the frame: with units 'fraction' both "
            "coordinates must be within 0..1 (use units: px for pixels)"
        )
    if units == "px" and (x < 0 or y < 0):
        raise ValueError(f"{where} {index} {[x, y]} is negative (pixels start at 0)")


class _Shape(_Strict):
    id: ShapeId = Field(description="Id, unique among the stream's zones (lines).")
    units: Units = Field(default="fraction", description="fraction (0..1 of the frame) or px.")
    labels: list[str] | None = Field(
        default=None,
        description="Only objects with these labels; absent, null or []: every label.",
    )

    @field_validator("labels")
    @classmethod
    def _empty_is_every_label(cls, labels: list[str] | None) -> list[str] | None:
        return labels or None  # [] would otherwise match nothing


class ZoneConfig(_Shape):
    """A polygon; an object is in it when its anchor point is."""

    points: list[Point] = Field(
        min_length=3, description="Polygon corners [x, y] in order (at least 3, no crossing edges)."
    )
    min_dwell_s: float = Field(
        default=0.0,
        ge=0,
        le=3600,
        description="Inertia: an object must be inside this long before it counts as entered "
        "(and outside as long before it counts as gone), so a box flickering on the edge "
        "makes no events.",
    )
    loiter_s: float | None = Field(
        default=None,
        gt=0,
        le=86400,
        description="A 'loiter' event when an object has stayed this long; empty: none.",
    )
    passages: bool = Field(
        default=True,
        description="An object seen on both sides of the zone, not in it (unseen in "
        "between, or fast), whose straight path between the two sightings went through it "
        "gets its enter and exit, marked inferred (no loiter event; not for a path from a "
        "frame border or one longer than it can have walked); false: only sightings inside "
        "count.",
    )

    @field_validator("points")
    @classmethod
    def _valid_polygon(cls, points: list[Point]) -> list[Point]:
        for i, point in enumerate(points):
            if not all(abs(v) < 1e6 for v in point):
                raise ValueError(f"point {i} {list(point)} is not a finite coordinate")
        if len(set(points)) != len(points):
            dup = next(i for i, p in enumerate(points) if points.index(p) != i)
            raise ValueError(f"point {dup} {list(points[dup])} repeats an earlier point")
        n = len(points)
        for i in range(n):
            for j in range(i + 2, n):
                if i == 0 and j == n - 1:
                    continue  # adjacent through the closing edge
                a, b = points[i], points[(i + 1) % n]
                c, d = points[j], points[(j + 1) % n]
                if segments_cross(a, b, c, d):
                    raise ValueError(
                        f"edges {i}-{(i + 1) % n} and {j}-{(j + 1) % n} cross: the polygon "
                        "must not intersect itself (list the corners in order around it)"
                    )
        if polygon_area(points) <= 1e-9:
            raise ValueError("the polygon has no area (its points are on one line)")
        return points

    @model_validator(mode="after")
    def _in_units(self) -> ZoneConfig:
        for i, point in enumerate(self.points):
            _check_point("point", i, point, self.units)
        return self


class LineConfig(_Shape):
    """A directed segment; an object crossing it is counted ``in`` or ``out``."""

    start: Point = Field(description="First end [x, y].")
    end: Point = Field(description="Second end [x, y]; 'in' is crossing from its left to right.")
    margin: float = Field(
        default=0.01,
        ge=0,
        le=0.5,
        description="Hysteresis as a fraction of the frame diagonal: an object's side of the "
        "line changes only once its anchor is this far past it, so jitter on the line makes "
        "no extra crossings.",
    )

    @model_validator(mode="after")
    def _valid_line(self) -> LineConfig:
        _check_point("start", 0, self.start, self.units)
        _check_point("end", 0, self.end, self.units)
        if self.start == self.end:
            raise ValueError(f"start and end are the same point {list(self.start)}")
        return self


def _unique_ids(kind: str, ids: list[str]) -> None:
    for i, shape_id in enumerate(ids):
        if shape_id in ids[:i]:
            raise ValueError(f"{kind}s[{i}]: duplicate {kind} id {shape_id!r}")


class TrackingConfig(_Strict):
    """ByteTrack settings of one stream, its zones and lines."""

    high_thresh: float = Field(
        default=0.5, gt=0, lt=1, description="Detections scoring at least this start/keep tracks."
    )
    low_thresh: float = Field(
        default=0.1,
        gt=0,
        lt=1,
        description="Detections between this and high_thresh only keep existing tracks alive "
        "(ByteTrack's second association, through occlusions).",
    )
    new_track_thresh: float = Field(
        default=0.6,
        gt=0,
        le=1,
        description="Least score of a detection that starts a new track (at least high_thresh).",
    )
    match_iou: float = Field(
        default=0.2,
        gt=0,
        le=1,
        description="Least IoU of a detection with a track's predicted box.",
    )
    lost_track_s: float = Field(
        default=1.0,
        gt=0,
        le=600,
        description="A track unseen this long (also across dropped frames) is given up; until "
        "then it keeps its id when its object is found again.",
    )
    reid_s: float = Field(
        default=0.0,
        ge=0,
        le=600,
        description="Re-identification at the frame edge: a track lost at an edge keeps its id "
        "this long after it was last seen, and a new object appearing at the same edge with "
        "the same label, a similar size and place along the edge takes that id back (an "
        "object that left and came back); 0: off (the default: with geometry alone, a new "
        "object entering where a similar one just left would take its id; turn it on where "
        "objects do come back, e.g. 3 s).",
    )
    infer_unseen_s: float = Field(
        default=0.0,
        ge=0,
        le=10,
        description="Infer line crossings nobody saw (objects hidden or missed as they "
        "crossed): a new track first seen in mid-frame looks back, and a track lost in "
        "mid-frame whose id never came back looks ahead, this many seconds along its speed "
        "(from its first or last 4 sightings); a line that straight path crosses counts, as a "
        "cross event with inferred '1', unless another track crossed it the same way close "
        "by. Not where objects appear or vanish in mid-frame (doors, parking spaces, tunnel "
        "mouths) near a line: it would invent crossings there. 0: off.",
    )
    edge: float = Field(
        default=0.02,
        ge=0,
        le=0.25,
        description="A box this close to a border of the frame (fraction of the frame's width "
        "or height) is at that edge: for re-identification, and an object last or first seen "
        "there may have been outside the frame (no zone passage or inferred crossing).",
    )
    reid_size: float = Field(
        default=0.2,
        gt=0,
        le=1,
        description="Re-identification: the most the size of the object coming back may differ "
        "from the one that left (|difference| / the larger; the height at a left or right "
        "edge, the width at the top or bottom).",
    )
    size_tolerance: float = Field(
        default=0.3,
        gt=0,
        le=1,
        description="Recovery of lost tracks by position: the most the height may differ "
        "(|difference| / the larger), also the most the foot line may move, in heights.",
    )
    reid_offset: float = Field(
        default=0.25,
        ge=0,
        le=5,
        description="Re-identification: the most an object may come back shifted along the "
        "edge it left by, in its heights (widths at the top or bottom edge).",
    )
    recover_dist: float = Field(
        default=0.0,
        ge=0,
        le=10,
        description="A detection that would start a new track goes to a lost track of its "
        "label whose predicted centre is at most this many of the track's sizes away (with a "
        "similar height and foot line), e.g. an object coming out from behind a pillar where "
        "its predicted box does not overlap it; 0: off (the default; 1 turns it on).",
    )
    appearance_s: float = Field(
        default=0.0,
        ge=0,
        le=600,
        description="Re-identification by appearance: a track lost or given up keeps its id "
        "this long after it was last seen, and a detection that would start a new track takes "
        "it back when it has the same label, a similar height (appearance_size) and colours "
        "within appearance_dist (a colour histogram of the box with its surroundings taken "
        "out, computed by the inference worker for this stream only), where it can have got to "
        "(appearance_reach), except that a track last seen at one border of the frame is not taken "
        "by a detection at another border (objects come back by the border they left by); "
        "the edge re-identification and the recovery by position then also need the looks "
        "to agree (within appearance_gate).  0: off (the default: "
        "colour alone cannot tell a look-alike entering anywhere while another object is "
        "lost); e.g. 3 where objects leave and come back.",
    )
    appearance_dist: float = Field(
        default=0.2,
        gt=0,
        le=1,
        description="Re-identification by appearance: the largest cosine distance between "
        "the track's descriptor (a moving average of its detections') and the detection's; "
        "the descriptors are square-rooted colour histograms (no negative bin), so the "
        "distance is 0..1.  0.2 was chosen (0.1-0.3 tried) for the descriptor before this "
        "one (mean colours of 4 bands) and not re-tuned for the histogram.",
    )
    appearance_size: float = Field(
        default=0.3,
        gt=0,
        le=1,
        description="Re-identification by appearance: the most the height may differ "
        "(|difference| / the larger) from the height of the box the track was last seen in "
        "or from its smoothed height (the last box of an object leaving through a border or "
        "going behind something is often cut short).",
    )
    appearance_gate: float = Field(
        default=0.3,
        ge=0,
        le=1,
        description="With appearance_s: a detection may not continue a track whose "
        "descriptor is farther than this (cosine distance, 0..1 for these histograms) in the "
        "IoU matching either, so two overlapping objects of unlike colours do not swap ids; "
        "also the most the looks may differ where the geometry already agrees in the edge "
        "re-identification (reid_s) and the recovery by position (recover_dist; the larger "
        "of this and appearance_dist); 0: off (those then use appearance_dist).",
    )
    appearance_reach: float = Field(
        default=1.0,
        ge=0,
        le=100,
        description="Re-identification by appearance: the detection's centre must be within "
        "this many x (the track's height (its last box's or its smoothed height, the larger) "
        "+ its speed, at least 2 heights a second, x the time it has been gone) of where the "
        "track would be: its predicted centre, or where it was last seen if that was at a "
        "border of the frame (it comes back through that border, maybe the other way); so a "
        "look-alike far from where the lost object can be does not take its id (an object "
        "that turns back while hidden in mid-frame is found only near where it was last "
        "seen).  0: anywhere in the frame (as before this setting).",
    )
    merged_cover: float = Field(
        default=0.75,
        ge=0,
        le=1,
        description="A new box this much covered by the union of the boxes of two or more "
        "objects of its label tracked in the same frame (each covering a sixth of it or more) "
        "may be one box over those objects, a detector's error where objects overlap: its "
        "track is confirmed (gets events and counts) only once it has been seen for "
        "merged_hold_s; such boxes last a frame or two and would otherwise count a zone visit "
        "or a crossing nobody made.  0: off.",
    )
    merged_hold_s: float = Field(
        default=0.5,
        ge=0,
        le=60,
        description="How long a track started from a box that may lie over two objects "
        "(merged_cover) must be seen, in every frame, before it is confirmed.",
    )
    anchor: Anchor = Field(
        default="bottom_center",
        description="The point of a box that is in a zone or crosses a line: bottom_center "
        "(the feet, for ground-plane zones) or center.  Taken inside the frame: the feet of a "
        "box cut by the frame's bottom edge count from the last row of pixels, so a zone "
        "drawn to that edge holds them.",
    )
    zones: list[ZoneConfig] = Field(default_factory=list, description="Zones of this stream.")
    lines: list[LineConfig] = Field(default_factory=list, description="Lines of this stream.")
    events_maxlen: int = Field(
        default=10_000, ge=1, description="Trim the stream's events stream to about this many."
    )

    @model_validator(mode="after")
    def _consistent(self) -> TrackingConfig:
        if self.low_thresh > self.high_thresh:
            raise ValueError(
                f"low_thresh {self.low_thresh} is above high_thresh {self.high_thresh}"
            )
        if self.new_track_thresh < self.high_thresh:
            raise ValueError(
                f"new_track_thresh {self.new_track_thresh} is below high_thresh "
                f"{self.high_thresh}: only detections scoring at least high_thresh can start a "
                "track, so a lower new_track_thresh would not apply; set it >= high_thresh"
            )
        _unique_ids("zone", [z.id for z in self.zones])
        _unique_ids("line", [ln.id for ln in self.lines])
        return self

    def params(self) -> TrackerParams:
        return TrackerParams(
            high_thresh=self.high_thresh,
            low_thresh=self.low_thresh,
            new_track_thresh=self.new_track_thresh,
            match_iou=self.match_iou,
            lost_track_s=self.lost_track_s,
            reid_s=self.reid_s,
            edge=self.edge,
            reid_size=self.reid_size,
            size_tolerance=self.size_tolerance,
            reid_offset=self.reid_offset,
            recover_dist=self.recover_dist,
            appearance_s=self.appearance_s,
            appearance_reach=self.appearance_reach,
            appearance_dist=self.appearance_dist,
            appearance_size=self.appearance_size,
            appearance_gate=self.appearance_gate,
            merged_cover=self.merged_cover,
            merged_hold_s=self.merged_hold_s,
        )
