"""Scoring tracks against a scene's truth: MOT metrics and zone/line counts.

:func:`score_tracks` feeds ``motmetrics`` (the py-motmetrics package, a test/bench
dependency, imported only here) with every frame's truth and predicted tracks, IoU >= 0.5
as a match, and returns IDF1, MOTA and ID switches.  Truth boxes a detector cannot be held
to (less than half visible: :attr:`~visionflow.scenes.generator.TruthBox.ignorable`) are
left out, and so are the predictions that match them, as MOTChallenge does with its
distractors.

:func:`truth_counts` counts zone entries/exits and line crossings of the truth trajectories
(each object its own track), written apart from :mod:`visionflow.tracking.analytics`, so the
counts a pipeline wrote can be compared with what really happened.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from visionflow.counts import bucket_start
from visionflow.scenes.generator import TruthBox
from visionflow.tracking.bytetrack import iou_matrix
from visionflow.tracking.config import TrackingConfig
from visionflow.tracking.geometry import Polygon, anchor_of, cross, segments_cross

Box = tuple[float, float, float, float]


@dataclass(frozen=True)
class Predicted:
    """A tracked box of one frame."""

    track_id: int
    class_id: int
    box: Box


@dataclass(frozen=True)
class TrackScore:
    idf1: float
    mota: float
    switches: int
    frames: int
    objects: int  # distinct truth objects

    def as_dict(self) -> dict[str, float | int]:
        return {
            "idf1": round(self.idf1, 4),
            "mota": round(self.mota, 4),
            "id_switches": self.switches,
            "frames": self.frames,
            "objects": self.objects,
        }


def _boxes(items: Sequence[Any]) -> np.ndarray[Any, np.dtype[np.float64]]:
    return np.array([[b.x1, b.y1, b.x2, b.y2] for b in items], np.float64).reshape(-1, 4)


def score_tracks(
    frames: Iterable[tuple[Sequence[TruthBox], Sequence[Predicted]]], iou_threshold: float = 0.5
) -> TrackScore:
    """MOT metrics over ``(truth, predictions)`` per frame, in frame order."""
    import motmetrics  # type: ignore[import-untyped]

    acc = motmetrics.MOTAccumulator(auto_id=True)
    objects: set[int] = set()
    for truth, preds in frames:
        keep = [t for t in truth if not t.ignorable]
        hidden = [t for t in truth if t.ignorable]
        pred_boxes = np.array([p.box for p in preds], np.float64).reshape(-1, 4)
        if hidden and len(preds):
            to_hidden = iou_matrix(pred_boxes, _boxes(hidden)).max(axis=1)
            to_kept = iou_matrix(pred_boxes, _boxes(keep)).max(axis=1) if keep else 0 * to_hidden
            shown = (to_hidden < iou_threshold) | (to_kept >= to_hidden)
            preds = [p for p, s in zip(preds, shown, strict=True) if s]
            pred_boxes = pred_boxes[shown]
        overlap = iou_matrix(_boxes(keep), pred_boxes)
        classes_match = np.array([[t.class_id == p.class_id for p in preds] for t in keep], bool)
        ok = (overlap >= iou_threshold) & classes_match.reshape(overlap.shape)
        distance = np.where(ok, 1.0 - overlap, np.nan)
        acc.update([t.object_id for t in keep], [p.track_id for p in preds], distance)
        objects.update(t.object_id for t in keep)
    summary = motmetrics.metrics.create().compute(
        acc, metrics=["idf1", "mota", "num_switches", "num_frames"], name="all"
    )
    row = summary.loc["all"]
    return TrackScore(
        idf1=float(row["idf1"]),
        mota=float(row["mota"]),
        switches=int(row["num_switches"]),
        frames=int(row["num_frames"]),
        objects=len(objects),
    )


def truth_counts(
    frames: Iterable[tuple[int, float, Sequence[TruthBox]]],
    config: TrackingConfig,
    width: int,
    height: int,
    fps: float,
    visible_only: bool = False,
) -> Counter[tuple[str, str]]:
    """Zone/line counts ``(label, metric) -> n`` of the truth, frames as ``(seq, ts, truth)``.

    Written apart from :mod:`visionflow.tracking.analytics` (only the geometry is shared), so
    a bug there is not repeated here: every truth box counts (also a mostly hidden one: the
    object is really there); an object is in a zone when its anchor (taken inside the frame,
    :func:`~visionflow.tracking.geometry.anchor_of`) is inside the polygon,
    and leaves it when its anchor is outside or it has been gone for ``lost_track_s``; it
    crosses a line when its anchor, beyond the line's margin, is on the other side than the
    last time it was beyond the margin, and the path between the two meets the segment
    (``in``: to the right of start -> end).  Each object counts once per metric and bucket.
    Zones' ``min_dwell_s`` and label filters are not modelled (the truth test uses none).
    With ``visible_only`` an event counts only where the object was at least half visible in
    its frame or the one before (not :attr:`~visionflow.scenes.generator.TruthBox.ignorable`,
    the rule :func:`score_tracks` follows; "the one before" is the frame fed in before, and an
    exit because the object was gone goes by its last two sightings): the counts no camera
    could be held to are left out, so between these and the full counts lies what a counter
    may fairly report.  They are never above the full counts (the same events, each object
    once per metric and bucket, only fewer).
    """
    diagonal = float(np.hypot(width, height))

    def px(point: tuple[float, float], units: str) -> tuple[float, float]:
        return (point[0] * width, point[1] * height) if units == "fraction" else point

    zones = [(z.id, Polygon.of(np.array([px(p, z.units) for p in z.points]))) for z in config.zones]
    lines = [
        (ln.id, px(ln.start, ln.units), px(ln.end, ln.units), ln.margin * diagonal)
        for ln in config.lines
    ]
    counts: Counter[tuple[str, str]] = Counter()
    counted: set[tuple[int, int, str]] = set()
    inside: dict[tuple[str, int], str] = {}  # (zone, object) -> label, while inside
    side: dict[tuple[str, int], tuple[int, tuple[float, float]]] = {}
    last_seen: dict[int, float] = {}
    seen_well: dict[int, tuple[bool, bool]] = {}  # object -> (half visible now, the frame before)

    def count(obj: int, label: str, ts: float, metric: str) -> None:
        if visible_only and not any(seen_well.get(obj, (True, True))):
            return
        key = (bucket_start(ts), obj, metric)
        if key not in counted:
            counted.add(key)
            counts[(label, metric)] += 1

    for seq, ts, truth in frames:
        clock = seq / fps
        for obj in [o for o, t in last_seen.items() if clock - t > config.lost_track_s]:
            del last_seen[obj]
            for zone_id, _ in zones:
                label = inside.pop((zone_id, obj), None)
                if label is not None:
                    count(obj, label, ts, f"zone:{zone_id}:exit")
            seen_well.pop(obj, None)  # back later: seen afresh, not by its old sightings
        for t in truth:
            last_seen[t.object_id] = clock
            seen_well[t.object_id] = (not t.ignorable, seen_well.get(t.object_id, (False,))[0])
            box = (t.x1, t.y1, t.x2, t.y2)
            x, y = anchor_of(box, config.anchor == "bottom_center", (width, height))
            for zone_id, polygon in zones:
                now_in = bool(polygon.contains(np.array([[x, y]]))[0])
                was_in = (zone_id, t.object_id) in inside
                if now_in and not was_in:
                    inside[(zone_id, t.object_id)] = t.label
                    count(t.object_id, t.label, ts, f"zone:{zone_id}:enter")
                elif was_in and not now_in:
                    del inside[(zone_id, t.object_id)]
                    count(t.object_id, t.label, ts, f"zone:{zone_id}:exit")
            for line_id, start, end, margin in lines:
                distance = cross(start, end, (x, y)) / float(
                    np.hypot(end[0] - start[0], end[1] - start[1])
                )
                if abs(distance) < max(margin, 1e-9):
                    continue
                now = 1 if distance > 0 else -1
                before = side.get((line_id, t.object_id))
                if before and before[0] != now and segments_cross(before[1], (x, y), start, end):
                    count(t.object_id, t.label, ts, f"line:{line_id}:{'in' if now > 0 else 'out'}")
                side[(line_id, t.object_id)] = (now, (x, y))
    return counts


def fair_count_diff(
    full: Counter[tuple[str, str]],
    visible: Counter[tuple[str, str]],
    got: Counter[tuple[str, str]],
    keys: Iterable[tuple[str, str]],
) -> int:
    """How far the counts ``got`` are, summed over ``keys``, from lying between the truth's
    ``visible`` counts (``truth_counts(..., visible_only=True)``) and its ``full`` ones: an
    event of an object less than half visible is neither owed nor held against a counter."""
    total = 0
    for key in keys:
        low, high = visible[key], full[key]  # low <= high: visible counts are a subset
        total += max(low - got[key], got[key] - high, 0)
    return total
