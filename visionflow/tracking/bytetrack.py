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

Changes to the paper's ByteTrack, all measured on the synthetic scenes (``bench/tracking.py``,
README "Tracking"):

- detections and predicted boxes are matched with their boxes grown by ``buffer`` (0.3) of
  their size on each side (C-BIoU, Yang et al. 2023), so small fast objects at 10 frames/s
  still overlap their track from one frame to the next; and the Kalman filter's velocity noise
  is a quarter of ByteTrack's (smoother motion, so two objects passing each other keep their
  own predicted paths);
- *re-identification at the frame edge* (``reid_s``, off by default: on held-out crossing
  scenes it gave a new object entering where another had just left, alike in class, size and
  foot line, the old id in about one 20 s scene of three, and one wrong merge costs more IDF1
  than one missed return; turn it on where objects do come back, e.g. a shop door): a track
  whose last box touched an edge of the frame (within ``edge`` of the frame's size) and was
  lost there is kept ``reid_s`` seconds after it was last seen (past ``lost_track_s``:
  reported removed then, as before, but its id kept aside); a detection that would start a
  new track at the same edge, of the same class, with a similar size (``reid_size``) and at
  about the same place along that edge
  (``reid_offset``) takes the old id back instead, with its motion started afresh (the
  object may come back the other way).  Geometry, class, size and time only (the output
  stage has no pixels: appearance comes with the detections, below);
- *recovery of lost tracks by position* (``recover_dist``, off by default: on held-out scenes
  it was +0.00-0.05 IDF1 on most and -0.03 on two): a detection left over after the
  IoU stages that would start a new track is given to a lost track of its class whose
  predicted centre is within ``recover_dist`` of the track's size, with a similar height and
  foot line; this keeps an object walking behind a pillar on its track when its predicted
  box no longer overlaps the detection where it comes out (its box shrank as it went in,
  which slowed the filter down);
- *re-identification by appearance* (``appearance_s``, off by default): with each detection
  comes a colour descriptor (:mod:`visionflow.pipeline.appearance`: the box's colour
  histogram with its surroundings taken out, computed by the inference worker for the streams
  that ask), and each track keeps an exponential moving average of its detections'
  (``appearance_momentum``).  A lost track, or one given up less than ``appearance_s`` ago,
  gives its id to a detection that would start a new track if it is of its class, of a
  similar height (``appearance_size``, against the height of the box it was last seen in or
  its smoothed height: the last box of an object leaving through a border or going behind
  something is often cut short) and looks alike (cosine distance at most
  ``appearance_dist``), one to one by least distance, but not a track last seen at one border
  of the frame to a detection at another (an object comes back through the border it left by;
  a look-alike entering elsewhere does not take its id), nor to a detection farther than it
  can have got (``appearance_reach`` x (its height + its speed, at least 2 heights a second,
  x the time it has been gone) from its predicted centre, or from where it was last seen if
  that was at a border: on the held-out seed 601 a bicycle track last seen at x 367 going
  right had been given to a bicycle at x 47 2.6 s later, which counted a line crossing nobody
  made); this runs before the edge re-identification and the recovery, which then also need
  the looks to agree, within ``appearance_gate`` (their geometry already agrees, as in the
  IoU stages); and in the IoU stages a detection may not continue a track whose look is
  farther than ``appearance_gate`` (0.3, tuned on seeds 11-18), so two overlapping objects of
  unlike colours do not swap ids.
  On held-out scenes (``bench/tracking.py``, 4 seeds a kind) it gives mean IDF1 0.952 /
  0.853 / 0.880 (crossing / occlusion / re-entering) against 0.901 / 0.813 / 0.563 without; off by
  default because the inference worker then describes every box of the stream (tens to a few
  hundred us of CPU a frame) and a look-alike can still take a lost object's id;
- *a box over two objects is held unconfirmed* (``merged_cover`` 0.75, ``merged_hold_s`` 0.5 s,
  on): where two objects of one class overlap, the detector sometimes adds a box spanning
  both beside their own. A new track whose first box lies, by ``merged_cover`` of its area or
  more, inside the union of the boxes of this frame's tracked detections, two or more of its
  class each holding at least a sixth of it, is confirmed only once it has been matched in
  every frame for ``merged_hold_s``: such boxes last a frame or two (and would count a zone
  visit or a line crossing nobody made); a real object standing between two others stays and
  is confirmed then.  Limits: the hold is a time, so at 2 frames/s or fewer it is one frame
  (no hold); held, the track matches only high-score boxes (as any new track), so one frame
  under ``high_thresh`` drops it and a later box starts the hold again; a held track's id is
  on its detections (as any unconfirmed track's) but it makes no events until confirmed, so
  a crossing made during the hold counts only where ``infer_unseen_s`` infers it.

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
NEW, TRACKED, LOST, EXITED = 0, 1, 2, 3  # EXITED: given up at an edge, id kept for reid
_FAR = 1e6  # cost of a pair the gate forbids
HEIGHT_MOMENTUM = 0.8  # a track's smoothed height: this x old + (1 - this) x new


IDS_PER_MS = 1000


def seed_id(now: float | None = None) -> int:
    """A first track id above every id an earlier tracker of this stream could have handed
    out: wall-clock milliseconds x :data:`IDS_PER_MS` (+1), so a tracker created later (a
    config change, a restart of the output process, another fleet node) starts above one
    created earlier unless that one handed out more than 1000 ids per millisecond it lived
    (or the clocks of two nodes differ by more than that tracker's lifetime).  Below 2**53
    until the year 2255, so JSON readers in any language read it exactly."""
    return int((time.time() if now is None else now) * 1000) * IDS_PER_MS + 1


#: the least share of a new box one tracked box must hold to count towards ``merged_cover``
MERGED_PART = 1 / 6


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
    reid_s: float = 0.0  # re-identify at the frame edge a track last seen this long ago; 0: off
    edge: float = 0.02  # a box this close to a border (fraction of the frame) is at that edge
    size_tolerance: float = 0.3  # recovery: |size difference| / larger size, at most
    reid_size: float = 0.2  # reid: |size difference| / larger size, at most
    reid_offset: float = 0.25  # reid: shift along the edge, in object heights (widths), at most
    recover_dist: float = 0.0  # recovery: centre distance in track sizes, at most; 0: off
    appearance_s: float = 0.0  # re-identify by appearance a track last seen this long ago; 0: off
    appearance_dist: float = 0.2  # appearance: cosine distance of the descriptors, at most
    appearance_size: float = 0.3  # appearance re-id: |height difference| / larger, at most
    appearance_gate: float = 0.3  # IoU stages: no pair farther apart in appearance; 0: off
    appearance_momentum: float = 0.8  # a track's descriptor: this x old + (1 - this) x new
    appearance_reach: float = 1.0  # appearance re-id: how far it may reappear; 0: anywhere
    merged_cover: float = 0.75  # a new box this much inside 2+ tracked boxes of its class ...
    merged_hold_s: float = 0.5  # ... is confirmed only once matched this long


@dataclass(frozen=True)
class FrameTracks:
    """What one update found, aligned with the detections given to it."""

    track_ids: IntArray  # per detection: its track id, or -1 (no track)
    confirmed: npt.NDArray[np.bool_]  # per detection: its track is confirmed
    born: list[int] = field(default_factory=list)  # tracks confirmed this frame
    removed: list[int] = field(default_factory=list)  # confirmed tracks given up this frame


def intersections(a: Array, b: Array) -> Array:
    """Intersection areas ``[N, M]`` of every box of ``a`` ``[N, 4]`` with every box of ``b``."""
    # np.maximum(x, 0), not np.clip(x, 0, None): the same numbers without clip's wrapper
    ix = np.maximum(
        np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0]), 0.0
    )
    iy = np.maximum(
        np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1]), 0.0
    )
    inter: Array = ix * iy
    return inter


def iou_matrix(a: Array, b: Array) -> Array:
    """IoU of every box of ``a`` ``[N, 4]`` with every box of ``b`` ``[M, 4]`` (xyxy)."""
    if len(a) == 0 or len(b) == 0:
        return np.zeros((len(a), len(b)))
    inter = intersections(a, b)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    union = area_a[:, None] + area_b[None, :] - inter
    out: Array = np.where(union > 0, inter / np.maximum(union, 1e-9), 0.0)
    return out


def _where(mask: npt.NDArray[np.bool_]) -> IntArray:
    """Indices where a 1-D mask is true (``np.flatnonzero``, without its ravel)."""
    out: IntArray = mask.nonzero()[0]
    return out


def grow(boxes: Array, buffer: float) -> Array:
    """Boxes enlarged by ``buffer`` x their width/height on every side (C-BIoU's buffer)."""
    if buffer <= 0 or len(boxes) == 0:
        return boxes
    w = (boxes[:, 2] - boxes[:, 0]) * buffer
    h = (boxes[:, 3] - boxes[:, 1]) * buffer
    out: Array = boxes.astype(np.result_type(boxes, w))  # a copy, of boxes + w's type
    out[:, 0] -= w
    out[:, 1] -= h
    out[:, 2] += w
    out[:, 3] += h
    return out


def assign(
    overlap: Array, same_class: npt.NDArray[np.bool_], min_iou: float
) -> list[tuple[int, int]]:
    """Optimal one-to-one pairs (row, col) with IoU >= ``min_iou`` and the same class
    (``same_class``: or any other condition a pair must meet)."""
    if overlap.size == 0:
        return []
    allowed = same_class & (overlap >= min_iou)
    disjoint = disjoint_pairs(allowed)
    if disjoint is not None:
        return disjoint
    cost = np.where(allowed, 1.0 - overlap, _FAR)
    rows, cols = linear_sum_assignment(cost)
    return [(int(r), int(c)) for r, c in zip(rows, cols, strict=True) if allowed[r, c]]


def disjoint_pairs(allowed: npt.NDArray[np.bool_]) -> list[tuple[int, int]] | None:
    """The allowed pairs (row, col), in row order, when no row and no column is in two of
    them (objects apart from each other: the usual frame), else None.  Then every optimal
    assignment holds exactly these pairs (where forbidden pairs cost exactly ``_FAR`` and
    allowed ones less, as here): an assignment without one of them gives its row and its
    column forbidden pairs or none, and trading those for it and the pair of their partners
    costs less; so ``linear_sum_assignment`` is not needed."""
    rows, cols = allowed.nonzero()
    r, c = rows.tolist(), cols.tolist()
    if len(set(r)) != len(r) or len(set(c)) != len(c):
        return None
    return list(zip(r, c, strict=True))


def edge_mask(boxes: Array, size: tuple[float, float] | None, edge: float) -> IntArray:
    """Per box, the frame borders it touches (within ``edge`` x the frame's size): bits 1 left,
    2 right, 4 top, 8 bottom; all 0 when the frame size is not known."""
    if size is None or len(boxes) == 0:
        return np.zeros(len(boxes), np.int64)
    mx, my = edge * size[0], edge * size[1]
    out: IntArray = (
        (boxes[:, 0] <= mx) * 1
        + (boxes[:, 2] >= size[0] - mx) * 2
        + (boxes[:, 1] <= my) * 4
        + (boxes[:, 3] >= size[1] - my) * 8
    ).astype(np.int64)
    return out


def _rel(a: Array, b: Array) -> Array:
    """|a - b| / max(a, b), pairwise ``[len(a), len(b)]``."""
    out: Array = np.abs(a[:, None] - b[None, :]) / np.maximum(
        np.maximum(a[:, None], b[None, :]), 1e-9
    )
    return out


def reid_cost(
    old: Array, old_edges: IntArray, new: Array, new_edges: IntArray, p: TrackerParams
) -> Array:
    """Cost of giving the id of a track last seen at ``old`` (boxes) to a detection at ``new``,
    both at a frame edge; :data:`_FAR` where they share no edge or differ too much.  Along a
    left/right edge: the foot line and the height (the width of a box cut by the border says
    nothing); along the top/bottom: the centre's x and the width."""
    ow, oh = old[:, 2] - old[:, 0], old[:, 3] - old[:, 1]
    nw, nh = new[:, 2] - new[:, 0], new[:, 3] - new[:, 1]
    shared = old_edges[:, None] & new_edges[None, :]
    sides = (shared & 3) > 0
    size = np.where(sides, _rel(oh, nh), _rel(ow, nw))
    scale_h = np.maximum(oh[:, None], nh[None, :])
    scale_w = np.maximum(ow[:, None], nw[None, :])
    shift_y = np.abs(old[:, 3][:, None] - new[:, 3][None, :]) / np.maximum(scale_h, 1e-9)
    cx_o, cx_n = (old[:, 0] + old[:, 2]) / 2, (new[:, 0] + new[:, 2]) / 2
    shift_x = np.abs(cx_o[:, None] - cx_n[None, :]) / np.maximum(scale_w, 1e-9)
    shift = np.where(sides, shift_y, shift_x)
    ok = (shared > 0) & (size <= p.reid_size) & (shift <= p.reid_offset)
    out: Array = np.where(
        ok, size / max(p.reid_size, 1e-9) + shift / max(p.reid_offset, 1e-9), _FAR
    )
    return out


def recover_cost(last: Array, predicted: Array, new: Array, p: TrackerParams) -> Array:
    """Cost of giving a lost track (last seen box ``last``, predicted box ``predicted``) a
    detection ``new`` its predicted box does not overlap: the centres' distance in the
    track's size, the heights' and foot lines' difference; :data:`_FAR` beyond the gates."""
    lh = last[:, 3] - last[:, 1]
    scale = np.maximum(np.maximum(last[:, 2] - last[:, 0], lh), 1e-9)[:, None]
    nh = new[:, 3] - new[:, 1]
    pcx, ncx = (predicted[:, 0] + predicted[:, 2]) / 2, (new[:, 0] + new[:, 2]) / 2
    dist = np.abs(pcx[:, None] - ncx[None, :]) / scale
    foot = np.abs(predicted[:, 3][:, None] - new[:, 3][None, :]) / np.maximum(lh, 1e-9)[:, None]
    size = _rel(lh, nh)
    tol = p.size_tolerance
    ok = (dist <= p.recover_dist) & (size <= tol) & (foot <= tol)
    out: Array = np.where(ok, dist / p.recover_dist + (size + foot) / tol, _FAR)
    return out


def _heights(boxes: Array) -> Array:
    """Heights of xyxy boxes."""
    out: Array = boxes[:, 3] - boxes[:, 1]
    return out


def assign_cost(cost: Array) -> list[tuple[int, int]]:
    """Optimal one-to-one pairs (row, col) of a cost matrix, leaving out :data:`_FAR` ones."""
    if cost.size == 0:
        return []
    disjoint = disjoint_pairs(cost < _FAR)
    if disjoint is not None:
        return disjoint
    rows, cols = linear_sum_assignment(cost)
    return [(int(r), int(c)) for r, c in zip(rows, cols, strict=True) if cost[r, c] < _FAR]


def unit_rows(features: Array) -> Array:
    """Rows scaled to length 1 (rows of zeros stay zeros: no descriptor)."""
    norms = np.linalg.norm(features, axis=1, keepdims=True)
    out: Array = np.where(norms > 1e-9, features / np.maximum(norms, 1e-9), 0.0)
    return out


def appearance_distance(a: Array, b: Array) -> Array:
    """Cosine distance ``[len(a), len(b)]`` of unit descriptors (0: same direction; at most
    1 for the non-negative histograms of :mod:`visionflow.pipeline.appearance`, 2 for
    opposite vectors in general); 0 where either has none (a row of zeros), so a missing
    descriptor never forbids a pair: callers decide by :func:`has_descriptor`."""
    if len(a) == 0 or len(b) == 0:
        return np.zeros((len(a), len(b)))
    both = has_descriptor(a)[:, None] & has_descriptor(b)[None, :]
    out: Array = np.where(both, 1.0 - a @ b.T, 0.0)
    return out


def has_descriptor(features: Array) -> npt.NDArray[np.bool_]:
    """Rows that hold a descriptor (not all zeros)."""
    out: npt.NDArray[np.bool_] = np.abs(features).sum(axis=1) > 0
    return out


def _inside(box: Array, others: Array) -> Array:
    """The share of ``box``'s area inside each of ``others`` ``[K, 4]``."""
    area = max(float((box[2] - box[0]) * (box[3] - box[1])), 1e-9)
    share: Array = intersections(box[None], others)[0] / area
    return share


def _covered(box: Array, others: Array) -> float:
    """The share of ``box``'s area inside the union of ``others`` (exact: the box cut into
    cells at every edge of the others inside it)."""
    x1, y1, x2, y2 = box
    clip = np.clip(others, [x1, y1, x1, y1], [x2, y2, x2, y2])
    xs = np.unique(np.concatenate([[x1, x2], clip[:, 0], clip[:, 2]]))
    ys = np.unique(np.concatenate([[y1, y2], clip[:, 1], clip[:, 3]]))
    cx, cy = (xs[:-1] + xs[1:]) / 2, (ys[:-1] + ys[1:]) / 2
    inx = (clip[:, None, 0] <= cx) & (cx <= clip[:, None, 2])  # [K, X]
    iny = (clip[:, None, 1] <= cy) & (cy <= clip[:, None, 3])  # [K, Y]
    cells = (inx[:, None, :] & iny[:, :, None]).any(axis=0)  # [Y, X]
    area = np.outer(np.diff(ys), np.diff(xs))
    return float((area * cells).sum() / max(float((x2 - x1) * (y2 - y1)), 1e-9))


class ByteTracker:
    """One stream's tracks."""

    def __init__(self, params: TrackerParams | None = None, first_id: int = 1) -> None:
        self.params = params or TrackerParams()
        self.next_id = first_id
        self.reset()

    def reset(self) -> None:
        """Forget every track (ids keep counting up: an id never names two objects)."""
        self.mean: Array = np.zeros((0, 8))
        self.cov: Array = kalman.empty_covariance()
        self.ids: IntArray = np.zeros(0, np.int64)
        self.cls: IntArray = np.zeros(0, np.int64)
        self.state: IntArray = np.zeros(0, np.int64)
        self.last_seen: Array = np.zeros(0)
        self.last_box: Array = np.zeros((0, 4))  # the box it was last matched to
        self.height: Array = np.zeros(0)  # its boxes' heights, smoothed
        #: a new track is confirmed when matched at this time or later (merged_hold_s)
        self.confirm_at: Array = np.zeros(0)
        self.feat: Array = np.zeros((0, 0))  # appearance (unit rows; zeros: none yet)
        self.t: float | None = None

    def __len__(self) -> int:
        return len(self.ids)

    def idle(self, t: float, size: tuple[float, float] | None = None) -> None:
        """A frame at time ``t`` with no detections while there is no track: what
        :meth:`update` would do then (the time moves on, nothing else), without its cost."""
        if len(self):  # tracks to age: the full update
            self.update(np.zeros((0, 4)), np.zeros(0), np.zeros(0, np.int64), t, size)
        self.t = t

    def _expire(self, t: float, size: tuple[float, float] | None) -> list[int]:
        """Give up tracks unseen longer than ``lost_track_s`` (their ids are returned, once);
        those last seen at a frame edge stay as EXITED until ``reid_s`` has passed."""
        p = self.params
        age = t - self.last_seen
        expired = (self.state != EXITED) & (age > p.lost_track_s)
        if not expired.any() and not (self.state == EXITED).any():
            return []  # nothing to give up or forget
        removed = [int(i) for i in self.ids[expired & (self.state != NEW)]]
        keep_for = np.where(edge_mask(self.last_box, size, p.edge) > 0, p.reid_s, 0.0)
        if p.appearance_s > 0 and len(self):  # tracks with a look are kept for appearance re-id
            keep_for = np.maximum(keep_for, np.where(has_descriptor(self.feat), p.appearance_s, 0))
        exited = expired & (self.state != NEW) & (age <= keep_for)
        self.state[exited] = EXITED
        self._keep(~(expired & ~exited) & ~((self.state == EXITED) & (age > keep_for)))
        return removed

    def update(
        self,
        boxes: Array,
        scores: Array,
        classes: IntArray,
        t: float,
        size: tuple[float, float] | None = None,
        features: Array | None = None,
    ) -> FrameTracks:
        """One frame at time ``t`` (seconds): ``boxes`` ``[N, 4]`` xyxy, scores, class ids;
        ``size`` (width, height) of the frame, for re-identification at its edges (none
        without it); ``features`` ``[N, D]`` appearance descriptors (unit rows, zeros where a
        detection has none), for re-identification by appearance (none without them)."""
        p = self.params
        feats = self._features(features, len(boxes))
        first_frame = self.t is None
        dt = 0.0 if self.t is None else max(0.0, t - self.t)
        self.t = t
        removed = self._expire(t, size)  # before matching: a gap longer than the buffer ends
        self.mean, self.cov = kalman.predict(self.mean, self.cov, dt)  # every track, even one
        predicted = kalman.xyah_to_xyxy(self.mean[:, :4]) if len(self) else np.zeros((0, 4))
        n = len(boxes)
        det_track = np.full(n, -1, np.int64)  # detection -> track row
        high = _where(scores >= p.high_thresh)
        low = _where((scores >= p.low_thresh) & (scores < p.high_thresh))

        grown_pred, grown_boxes = grow(predicted, p.buffer), grow(boxes, p.buffer)

        def match(rows: IntArray, dets: IntArray, min_iou: float) -> tuple[IntArray, IntArray]:
            if not len(rows) or not len(dets):
                return rows, dets  # nothing to pair
            allowed = self.cls[rows][:, None] == classes[dets][None, :]
            if feats is not None and p.appearance_gate > 0:  # unlike looks: never one object
                allowed &= appearance_distance(self.feat[rows], feats[dets]) <= p.appearance_gate
            pairs = assign(iou_matrix(grown_pred[rows], grown_boxes[dets]), allowed, min_iou)
            return self._pair(pairs, rows, dets, det_track)

        pool = _where((self.state == TRACKED) | (self.state == LOST))
        left_pool, left_high = match(pool, high, p.match_iou)
        still_tracked = left_pool[self.state[left_pool] == TRACKED]
        unmatched_tracked, _ = match(still_tracked, low, p.low_match_iou)
        unconfirmed = _where(self.state == NEW)
        unmatched_new, left_high = match(unconfirmed, left_high, p.unconfirmed_match_iou)
        starters = (
            left_high[scores[left_high] >= p.new_track_thresh] if len(left_high) else left_high
        )
        seen_again, starters = self._by_appearance(boxes, classes, feats, starters, det_track, size)
        revived, starters = self._reidentify(boxes, classes, starters, det_track, t, size, feats)
        revived = np.concatenate([seen_again, revived])
        starters = self._recover(boxes, classes, predicted, starters, det_track, feats)
        suspect = self._merged(boxes, classes, starters, det_track)

        matched = _where(det_track >= 0)
        rows = det_track[matched]
        # a track held by merged_hold_s (only a NEW one can be: matched later, it is confirmed)
        waiting = self.confirm_at[rows] > t + 1e-9  # a clock summed in steps: not a frame late
        confirming = rows[~waiting] if waiting.any() else rows
        born = [int(i) for i in self.ids[confirming[self.state[confirming] == NEW]]]
        if len(rows):
            m, c = kalman.update(
                self.mean[rows], self.cov[rows], kalman.xyxy_to_xyah(boxes[matched])
            )
            self.mean[rows], self.cov[rows] = m, c
            self.state[confirming] = TRACKED
            self.confirm_at[confirming] = -np.inf  # confirmed for good (also if time goes back)
            self.last_seen[rows] = t
            self.last_box[rows] = boxes[matched]
            hm = HEIGHT_MOMENTUM
            self.height[rows] = hm * self.height[rows] + (1 - hm) * _heights(boxes[matched])
            if feats is not None:
                self._blend(rows, feats[matched])
        if len(revived):  # the object may come back another way: its motion starts afresh
            self.mean[revived], self.cov[revived] = kalman.initiate(
                kalman.xyxy_to_xyah(self.last_box[revived])
            )
        self.state[unmatched_tracked] = LOST
        drop = np.zeros(len(self), bool)
        drop[unmatched_new] = True

        track_ids = np.full(n, -1, np.int64)
        track_ids[matched] = self.ids[rows]
        confirmed = np.zeros(n, bool)
        confirmed[matched] = ~waiting
        self._keep(~drop)
        if len(starters):
            ids = np.arange(self.next_id, self.next_id + len(starters), dtype=np.int64)
            self.next_id += len(starters)
            looks = feats[starters] if feats is not None else None
            state = TRACKED if first_frame else NEW
            hold = np.where(suspect, t + p.merged_hold_s, -np.inf)
            self._add(boxes[starters], classes[starters], ids, t, state, looks, hold)
            track_ids[starters] = ids
            confirmed[starters] = first_frame
            if first_frame:
                born += [int(i) for i in ids]
        return FrameTracks(track_ids, confirmed, born, removed)

    @staticmethod
    def _pair(
        pairs: list[tuple[int, int]], rows: IntArray, dets: IntArray, det_track: IntArray
    ) -> tuple[IntArray, IntArray]:
        """Record ``pairs`` (indices into ``rows`` / ``dets``) in ``det_track``; the rows and
        detections left unpaired."""
        for r, c in pairs:
            det_track[dets[c]] = rows[r]
        used_r = {r for r, _ in pairs}
        used_c = {c for _, c in pairs}
        left_rows = np.array([x for i, x in enumerate(rows) if i not in used_r], np.int64)
        left_dets = np.array([x for i, x in enumerate(dets) if i not in used_c], np.int64)
        return left_rows, left_dets

    def _reidentify(
        self,
        boxes: Array,
        classes: IntArray,
        starters: IntArray,
        det_track: IntArray,
        t: float,
        size: tuple[float, float] | None,
        feats: Array | None = None,
    ) -> tuple[IntArray, IntArray]:
        """Give detections that would start a track at a frame edge the id of a track lost or
        given up at that edge (:func:`reid_cost`, and alike in appearance where both have a
        descriptor); the rows revived, the detections left."""
        p = self.params
        if p.reid_s <= 0 or size is None or not len(starters):
            return np.zeros(0, np.int64), starters
        lost = ((self.state == LOST) | (self.state == EXITED)) & self._free(det_track)
        old_edges = edge_mask(self.last_box, size, p.edge)
        rows = _where(lost & (old_edges > 0) & (t - self.last_seen <= p.reid_s))
        new_edges = edge_mask(boxes[starters], size, p.edge)
        dets = starters[new_edges > 0]
        if not len(rows) or not len(dets):
            return np.zeros(0, np.int64), starters
        cost = reid_cost(
            self.last_box[rows], old_edges[rows], boxes[dets], new_edges[new_edges > 0], p
        )
        cost[self.cls[rows][:, None] != classes[dets][None, :]] = _FAR
        cost[self._unlike(rows, dets, feats)] = _FAR
        pairs = assign_cost(cost)
        self._pair(pairs, rows, dets, det_track)
        revived = np.array([rows[r] for r, _ in pairs], np.int64)
        return revived, starters[det_track[starters] < 0]

    def _recover(
        self,
        boxes: Array,
        classes: IntArray,
        predicted: Array,
        starters: IntArray,
        det_track: IntArray,
        feats: Array | None = None,
    ) -> IntArray:
        """Give detections that would start a track to lost tracks near which they are
        (:func:`recover_cost`, and alike in appearance where both have a descriptor); the
        detections left."""
        p = self.params
        if p.recover_dist <= 0 or not len(starters):
            return starters
        rows = _where((self.state == LOST) & self._free(det_track))
        if not len(rows):
            return starters
        cost = recover_cost(self.last_box[rows], predicted[rows], boxes[starters], p)
        cost[self.cls[rows][:, None] != classes[starters][None, :]] = _FAR
        cost[self._unlike(rows, starters, feats)] = _FAR
        self._pair(assign_cost(cost), rows, starters, det_track)
        return starters[det_track[starters] < 0]

    def _features(self, features: Array | None, n: int) -> Array | None:
        """The frame's descriptors as unit rows, or None (appearance off, or none given);
        the tracks' descriptor array takes their width on first use."""
        if self.params.appearance_s <= 0 or features is None or len(features) != n or not n:
            return None
        feats = unit_rows(np.asarray(features, np.float64).reshape(n, -1))
        if self.feat.shape[1] != feats.shape[1]:
            if self.feat.shape[1]:
                return None  # another width than the tracks': not comparable
            self.feat = np.zeros((len(self), feats.shape[1]))
        return feats

    def _unlike(self, rows: IntArray, dets: IntArray, feats: Array | None) -> npt.NDArray[np.bool_]:
        """Pairs (track row, detection) that both have a descriptor and differ by more than
        the geometric stages allow: never the same object (all False without descriptors).
        Where the geometry already agrees (the edge re-identification's same edge, size and
        foot line; the recovery's predicted place) the looks need only pass the IoU stages'
        ``appearance_gate`` (or ``appearance_dist`` where that is larger, or the gate is
        off), not the ``appearance_dist`` that must carry a re-identification alone."""
        if feats is None:
            return np.zeros((len(rows), len(dets)), bool)
        p = self.params
        limit = max(p.appearance_gate, p.appearance_dist)
        out: npt.NDArray[np.bool_] = appearance_distance(self.feat[rows], feats[dets]) > limit
        return out

    def _by_appearance(
        self,
        boxes: Array,
        classes: IntArray,
        feats: Array | None,
        starters: IntArray,
        det_track: IntArray,
        size: tuple[float, float] | None = None,
    ) -> tuple[IntArray, IntArray]:
        """Give detections that would start a track the id of a lost (or given-up) track of
        their class last seen at most ``appearance_s`` ago that looks alike (cosine distance
        at most ``appearance_dist``, height within ``appearance_size``), one to one by least
        distance, where it can have got to (:meth:`_within_reach`), except that a track last
        seen at a border of the frame (``size`` known) is not given to a detection at another
        border; the rows revived, the detections left."""
        p = self.params
        none = np.zeros(0, np.int64)
        if feats is None or not len(starters) or not len(self):
            return none, starters
        lost = (self.state == LOST) | (self.state == EXITED)
        recent = (self.t or 0.0) - self.last_seen <= p.appearance_s  # kept longer for other reasons
        rows = _where(lost & recent & self._free(det_track) & has_descriptor(self.feat))
        dets = starters[has_descriptor(feats[starters])]
        if not len(rows) or not len(dets):
            return none, starters
        dist = appearance_distance(self.feat[rows], feats[dets])
        # the height of the box it was last seen in, or its smoothed height: the last box of
        # an object leaving through a border or going behind something is often cut short
        new_h = _heights(boxes[dets])
        heights = np.minimum(
            _rel(_heights(self.last_box[rows]), new_h), _rel(self.height[rows], new_h)
        )
        ok = (dist <= p.appearance_dist) & (heights <= p.appearance_size)
        ok &= self.cls[rows][:, None] == classes[dets][None, :]
        # an object that left through one border of the frame comes back through that one:
        # not a look-alike entering at another border (a track lost in mid-frame, or a
        # detection in mid-frame, is not held to this)
        old_edges = edge_mask(self.last_box[rows], size, p.edge)[:, None]
        new_edges = edge_mask(boxes[dets], size, p.edge)[None, :]
        ok &= (old_edges == 0) | (new_edges == 0) | ((old_edges & new_edges) > 0)
        if p.appearance_reach > 0:
            ok &= self._within_reach(rows, old_edges[:, 0] > 0, boxes[dets])
        pairs = assign_cost(np.where(ok, dist, _FAR))
        self._pair(pairs, rows, dets, det_track)
        revived = np.array([rows[r] for r, _ in pairs], np.int64)
        return revived, starters[det_track[starters] < 0]

    def _within_reach(
        self, rows: IntArray, at_border: npt.NDArray[np.bool_], boxes: Array
    ) -> npt.NDArray[np.bool_]:
        """Per (track row, box): the box's centre is within ``appearance_reach`` x (the track's
        height + its speed, at least 2 heights a second, x the time it has been gone) of where
        the track would be: its predicted centre (it moved on, hidden), or where it was last
        seen if that was at a border of the frame (``at_border``; it left and comes back
        through that border, maybe the other way).  The height is the larger of its last
        box's and its smoothed height (the last box of an object leaving through a border or
        going behind something is often cut short, and its centre slowed down as it shrank).
        A look-alike far from where the lost object can be does not take its id; one that
        turned back while hidden in mid-frame is found only within a height (and the floor's
        slack) behind where it was last seen."""
        last = self.last_box[rows]
        ref = np.where(at_border[:, None], kalman.xyxy_to_xyah(last)[:, :2], self.mean[rows, :2])
        gone = (self.t or 0.0) - self.last_seen[rows]
        height = np.maximum(_heights(last), self.height[rows])
        # at least 2 heights a second: a track revived or born in the last frames has no speed
        # yet (its motion starts afresh), and a shrinking box's centre moves slower
        speed = np.maximum(np.hypot(self.mean[rows, 4], self.mean[rows, 5]), 2 * height)
        reach = self.params.appearance_reach * (height + speed * gone)
        centres = kalman.xyxy_to_xyah(boxes)[:, :2]
        dist = np.linalg.norm(centres[None, :, :] - ref[:, None, :], axis=2)
        out: npt.NDArray[np.bool_] = dist <= reach[:, None]
        return out

    def _blend(self, rows: IntArray, looks: Array) -> None:
        """Move the tracks' descriptors towards the detections' (an exponential moving
        average, ``appearance_momentum`` of the old); a track without one takes the new."""
        m = self.params.appearance_momentum
        has_new = has_descriptor(looks)
        rows, looks = rows[has_new], looks[has_new]
        old = self.feat[rows]
        mixed = np.where(has_descriptor(old)[:, None], m * old + (1 - m) * looks, looks)
        self.feat[rows] = unit_rows(mixed)

    def _merged(
        self, boxes: Array, classes: IntArray, starters: IntArray, det_track: IntArray
    ) -> npt.NDArray[np.bool_]:
        """Per starter, whether it may be one box over tracked objects of its class (a
        detector's error where two objects overlap): at least ``merged_cover`` of its area
        inside the union of the boxes paired with tracks this frame, two or more of its class
        each holding a sixth of it (:data:`MERGED_PART`).  Such a track is confirmed only
        once it has been matched for ``merged_hold_s``: the boxes over two objects last a
        frame or two, a real object stays."""
        cover = self.params.merged_cover
        suspect = np.zeros(len(starters), bool)
        paired = _where(det_track >= 0)
        if cover <= 0 or not len(starters) or len(paired) < 2:
            return suspect
        for k, row in enumerate(starters):
            others = boxes[paired[classes[paired] == classes[row]]]
            share = _inside(boxes[row], others)
            held = others[share >= MERGED_PART]
            suspect[k] = len(held) >= 2 and _covered(boxes[row], held) >= cover
        return suspect

    def _free(self, det_track: IntArray) -> npt.NDArray[np.bool_]:
        """Track rows no detection of this frame is paired with yet (a lost track matched by
        IoU this frame is still LOST until the update: it must not take a second box)."""
        free = np.ones(len(self), bool)
        free[det_track[det_track >= 0]] = False
        return free

    def _keep(self, keep: npt.NDArray[np.bool_]) -> None:
        if keep.all():
            return
        self.mean, self.cov = self.mean[keep], self.cov[keep]
        self.ids, self.cls = self.ids[keep], self.cls[keep]
        self.state, self.last_seen = self.state[keep], self.last_seen[keep]
        self.last_box = self.last_box[keep]
        self.height = self.height[keep]
        self.confirm_at = self.confirm_at[keep]
        self.feat = self.feat[keep]

    def _add(
        self,
        boxes: Array,
        classes: IntArray,
        ids: IntArray,
        t: float,
        state: int,
        looks: Array | None,
        confirm_at: Array,
    ) -> None:
        width = self.feat.shape[1]  # 0 until appearance is in use
        new = looks if looks is not None else np.zeros((len(ids), width))
        self.feat = np.concatenate([self.feat, new])
        mean, cov = kalman.initiate(kalman.xyxy_to_xyah(boxes))
        self.mean = np.concatenate([self.mean, mean])
        self.cov = np.concatenate([self.cov, cov])
        self.ids = np.concatenate([self.ids, ids])
        self.cls = np.concatenate([self.cls, classes.astype(np.int64)])
        self.state = np.concatenate([self.state, np.full(len(ids), state, np.int64)])
        self.last_seen = np.concatenate([self.last_seen, np.full(len(ids), t)])
        self.last_box = np.concatenate([self.last_box, boxes])
        self.height = np.concatenate([self.height, _heights(boxes)])
        self.confirm_at = np.concatenate([self.confirm_at, confirm_at])
