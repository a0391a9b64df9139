"""Scoring tracks against a scene's truth: MOT metrics and zone/line counts.

:func:`score_tracks` feeds ``motmetrics`` (the py-motmetrics package, a test/bench
dependency, imported only here) with every frame's truth and predicted tracks, IoU >= 0.5
as a match, and returns IDF1, MOTA and ID switches.  Truth boxes a detector cannot be held
to (less than half visible: :attr:`~visionflow.scenes.generator.TruthBox.ignorable`) are
left out, and so are the predictions that match them, as MOTChallenge does with its
distractors.

:func:`truth_counts` runs the very zone/line rules of :mod:`visionflow.tracking.analytics`
on the truth trajectories (each object its own track), so the counts a pipeline wrote can be
compared with what really crossed.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from visionflow.scenes.generator import TruthBox
from visionflow.tracking.analytics import Frame, Seen, StreamAnalytics
from visionflow.tracking.bytetrack import iou_matrix
from visionflow.tracking.config import TrackingConfig

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
) -> Counter[tuple[str, str]]:
    """Zone/line counts ``(label, metric) -> n`` of the truth, frames as ``(seq, ts, truth)``.

    Every truth box counts (also mostly hidden ones: the object is really there); an object
    is removed (a zone exit) once it has been absent for longer than ``lost_track_s``, as a
    track would be."""
    analytics = StreamAnalytics(config, width, height)
    counts: Counter[tuple[str, str]] = Counter()
    last_seen: dict[int, float] = {}
    for seq, ts, truth in frames:
        clock = seq / fps
        gone = [i for i, t in last_seen.items() if clock - t > config.lost_track_s]
        for i in gone:
            del last_seen[i]
        seen = [Seen(t.object_id, t.label, (t.x1, t.y1, t.x2, t.y2)) for t in truth]
        born = [t.object_id for t in truth if t.object_id not in last_seen]
        for t in truth:
            last_seen[t.object_id] = clock
        _, increments = analytics.step(Frame(seq, ts, clock, seen, born, gone))
        counts.update(c for c in increments if c[1] != "tracks")
    return counts
