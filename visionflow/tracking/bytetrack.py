"""ByteTrack (Zhang et al., 2022) on scipy's linear_sum_assignment, time-based, per stream.

Per frame: every track is moved to the frame's time by a Kalman filter
(:mod:`visionflow.tracking.kalman`); high-score detections are matched to tracked and lost
tracks by IoU, then low-score detections to the tracked ones still unmatched (the "byte"
step that keeps a track through an occlusion where the detector is unsure), then the
remaining high-score detections to tracks born last frame (unconfirmed).  A track matched
again is confirmed; unmatched tracks are kept as lost for ``lost_track_s`` seconds (the
"lost-track buffer", in time rather than frames, so it survives a seq gap of that length),
then removed: a track last seen longer ago is removed before the frame's matching, so after
a longer gap every object starts a new track.  Detections match only tracks of the same class.

Two changes to the paper's ByteTrack, both measured on the synthetic scenes
(``bench/tracking.py``, README "Tracking"): detections and predicted boxes are matched with
their boxes grown by ``buffer`` (0.3) of their size on each side (C-BIoU, Yang et al. 2023),
so small fast objects at 10 frames/s still overlap their track from one frame to the next; and
the Kalman filter's velocity noise is a quarter of ByteTrack's (smoother motion, so two objects
passing each other keep their own predicted paths).  Not done: re-identifying an object that left
the frame and came back (no appearance features here; holding lost tracks at the frame edge
was tried and gave wrong ids to new objects entering there more often than right ones back).

Arrays, not objects: the state of all tracks lives in a few numpy arrays, so one frame with
100 objects costs a handful of vectorised operations plus three assignments.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt
from scipy.optimize import linear_sum_assignment  # type: ignore[import-untyped]

from visionflow.tracking import kalman

Array = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]
NEW, TRACKED, LOST = 0, 1, 2
_FAR = 1e6  # cost of a pair the gate forbids


IDS_PER_MS = 1000


def seed_id(now: float | None = None) -> int:
    """A first track id above every id an earlier tracker of this stream could have handed
    out: wall-clock milliseconds x :data:`IDS_PER_MS` (+1), so a tracker created later (a
    config change, a restart of the output process, another fleet node) starts above one
    created earlier unless that one handed out more than 1000 ids per millisecond it lived
    (or the clocks of two nodes differ by more than that tracker's lifetime).  Below 2**53
    until the year 2255, so JSON readers in any language read it exactly."""
    return int((time.time() if now is None else now) * 1000) * IDS_PER_MS + 1


@dataclass(frozen=True)
class TrackerParams:
    """ByteTrack's thresholds (defaults: the paper's MOT17 settings, buffer in seconds)."""

    high_thresh: float = 0.5
    low_thresh: float = 0.1
    new_track_thresh: float = 0.6
    match_iou: float = 0.2  # first association: IoU at least this (ByteTrack match_thresh 0.8)
    low_match_iou: float = 0.5  # second association (low-score detections)
    unconfirmed_match_iou: float = 0.3
    lost_track_s: float = 1.0
    buffer: float = 0.3  # boxes grown by this fraction of their size on each side for matching


@dataclass(frozen=True)
class FrameTracks:
    """What one update found, aligned with the detections given to it."""

    track_ids: IntArray  # per detection: its track id, or -1 (no track)
    confirmed: npt.NDArray[np.bool_]  # per detection: its track is confirmed
    born: list[int] = field(default_factory=list)  # tracks confirmed this frame
    removed: list[int] = field(default_factory=list)  # confirmed tracks given up this frame


def iou_matrix(a: Array, b: Array) -> Array:
    """IoU of every box of ``a`` ``[N, 4]`` with every box of ``b`` ``[M, 4]`` (xyxy)."""
    if len(a) == 0 or len(b) == 0:
        return np.zeros((len(a), len(b)))
    ix = np.clip(
        np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0]), 0, None
    )
    iy = np.clip(
        np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1]), 0, None
    )
    inter = ix * iy
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    union = area_a[:, None] + area_b[None, :] - inter
    out: Array = np.where(union > 0, inter / np.maximum(union, 1e-9), 0.0)
    return out


def grow(boxes: Array, buffer: float) -> Array:
    """Boxes enlarged by ``buffer`` x their width/height on every side (C-BIoU's buffer)."""
    if buffer <= 0 or len(boxes) == 0:
        return boxes
    w = (boxes[:, 2] - boxes[:, 0]) * buffer
    h = (boxes[:, 3] - boxes[:, 1]) * buffer
    out: Array = boxes + np.stack([-w, -h, w, h], axis=1)
    return out


def assign(
    overlap: Array, same_class: npt.NDArray[np.bool_], min_iou: float
) -> list[tuple[int, int]]:
    """Optimal one-to-one pairs (row, col) with IoU >= ``min_iou`` and the same class."""
    if overlap.size == 0:
        return []
    allowed = same_class & (overlap >= min_iou)
    cost = np.where(allowed, 1.0 - overlap, _FAR)
    rows, cols = linear_sum_assignment(cost)
    return [(int(r), int(c)) for r, c in zip(rows, cols, strict=True) if allowed[r, c]]


class ByteTracker:
    """One stream's tracks."""

    def __init__(self, params: TrackerParams | None = None, first_id: int = 1) -> None:
        self.params = params or TrackerParams()
        self.next_id = first_id
        self.reset()

    def reset(self) -> None:
        """Forget every track (ids keep counting up: an id never names two objects)."""
        self.mean: Array = np.zeros((0, 8))
        self.cov: Array = np.zeros((0, 8, 8))
        self.ids: IntArray = np.zeros(0, np.int64)
        self.cls: IntArray = np.zeros(0, np.int64)
        self.state: IntArray = np.zeros(0, np.int64)
        self.last_seen: Array = np.zeros(0)
        self.t: float | None = None

    def __len__(self) -> int:
        return len(self.ids)

    def idle(self, t: float) -> None:
        """A frame at time ``t`` with no detections while there is no track: what
        :meth:`update` would do then (the time moves on, nothing else), without its cost."""
        if len(self):  # tracks to age: the full update
            self.update(np.zeros((0, 4)), np.zeros(0), np.zeros(0, np.int64), t)
        self.t = t

    def update(self, boxes: Array, scores: Array, classes: IntArray, t: float) -> FrameTracks:
        """One frame at time ``t`` (seconds): ``boxes`` ``[N, 4]`` xyxy, scores, class ids."""
        p = self.params
        first_frame = self.t is None
        dt = 0.0 if self.t is None else max(0.0, t - self.t)
        self.t = t
        expired = t - self.last_seen > p.lost_track_s  # before matching: a gap longer than
        removed = [int(i) for i in self.ids[expired & (self.state != NEW)]]  # the buffer ends
        self._keep(~expired)  # every track, even one its object would match again
        self.mean, self.cov = kalman.predict(self.mean, self.cov, dt)
        predicted = kalman.xyah_to_xyxy(self.mean[:, :4]) if len(self) else np.zeros((0, 4))
        n = len(boxes)
        det_track = np.full(n, -1, np.int64)  # detection -> track row
        high = np.flatnonzero(scores >= p.high_thresh)
        low = np.flatnonzero((scores >= p.low_thresh) & (scores < p.high_thresh))

        grown_pred, grown_boxes = grow(predicted, p.buffer), grow(boxes, p.buffer)

        def match(rows: IntArray, dets: IntArray, min_iou: float) -> tuple[IntArray, IntArray]:
            pairs = assign(
                iou_matrix(grown_pred[rows], grown_boxes[dets]),
                self.cls[rows][:, None] == classes[dets][None, :],
                min_iou,
            )
            for r, c in pairs:
                det_track[dets[c]] = rows[r]
            used_r = {r for r, _ in pairs}
            used_c = {c for _, c in pairs}
            left_rows = np.array([x for i, x in enumerate(rows) if i not in used_r], np.int64)
            left_dets = np.array([x for i, x in enumerate(dets) if i not in used_c], np.int64)
            return left_rows, left_dets

        pool = np.flatnonzero(self.state != NEW)
        left_pool, left_high = match(pool, high, p.match_iou)
        still_tracked = left_pool[self.state[left_pool] == TRACKED]
        unmatched_tracked, _ = match(still_tracked, low, p.low_match_iou)
        unconfirmed = np.flatnonzero(self.state == NEW)
        unmatched_new, left_high = match(unconfirmed, left_high, p.unconfirmed_match_iou)

        matched = np.flatnonzero(det_track >= 0)
        rows = det_track[matched]
        born = [int(self.ids[r]) for r in rows if self.state[r] == NEW]
        if len(rows):
            m, c = kalman.update(
                self.mean[rows], self.cov[rows], kalman.xyxy_to_xyah(boxes[matched])
            )
            self.mean[rows], self.cov[rows] = m, c
            self.state[rows] = TRACKED
            self.last_seen[rows] = t
        self.state[unmatched_tracked] = LOST
        drop = np.zeros(len(self), bool)
        drop[unmatched_new] = True

        new_dets = (
            left_high[scores[left_high] >= p.new_track_thresh] if len(left_high) else left_high
        )
        track_ids = np.full(n, -1, np.int64)
        track_ids[matched] = self.ids[rows]
        confirmed = np.zeros(n, bool)
        confirmed[matched] = True
        self._keep(~drop)
        if len(new_dets):
            ids = np.arange(self.next_id, self.next_id + len(new_dets), dtype=np.int64)
            self.next_id += len(new_dets)
            self._add(boxes[new_dets], classes[new_dets], ids, t, TRACKED if first_frame else NEW)
            track_ids[new_dets] = ids
            confirmed[new_dets] = first_frame
            if first_frame:
                born += [int(i) for i in ids]
        return FrameTracks(track_ids, confirmed, born, removed)

    def _keep(self, keep: npt.NDArray[np.bool_]) -> None:
        self.mean, self.cov = self.mean[keep], self.cov[keep]
        self.ids, self.cls = self.ids[keep], self.cls[keep]
        self.state, self.last_seen = self.state[keep], self.last_seen[keep]

    def _add(self, boxes: Array, classes: IntArray, ids: IntArray, t: float, state: int) -> None:
        mean, cov = kalman.initiate(kalman.xyxy_to_xyah(boxes))
        self.mean = np.concatenate([self.mean, mean])
        self.cov = np.concatenate([self.cov, cov])
        self.ids = np.concatenate([self.ids, ids])
        self.cls = np.concatenate([self.cls, classes.astype(np.int64)])
        self.state = np.concatenate([self.state, np.full(len(ids), state, np.int64)])
        self.last_seen = np.concatenate([self.last_seen, np.full(len(ids), t)])
