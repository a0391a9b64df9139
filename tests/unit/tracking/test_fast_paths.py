"""The tracked path's cheaper forms give what the plain ones gave (bench/tracking_cost.py times
them): the Kalman filter's 2x2 blocks against the textbook 8x8 matrices, the assignment
without the solver where the pairs are disjoint against the solver, a zone's edges worked out
once against a plain even-odd test, a detection given its id against ``dataclasses.replace``,
and the tracker's outputs on a scripted scene against those of the tracker before the
rework."""

from __future__ import annotations

import dataclasses
import hashlib

import numpy as np
import pytest
from scipy.optimize import linear_sum_assignment

from visionflow.pipeline.frames import Detection
from visionflow.tracking import kalman
from visionflow.tracking.bytetrack import (
    _FAR,
    ByteTracker,
    TrackerParams,
    assign,
    assign_cost,
    disjoint_pairs,
)
from visionflow.tracking.geometry import Polygon, line_length, signed_distance


def state_std(pos: np.ndarray, vel: np.ndarray) -> np.ndarray:
    """Per track, the 8 state entries' deviations: ``pos`` for x, y and h, ``vel`` for their
    velocities, ByteTrack's fixed ones for the aspect ratio and its velocity."""
    aspect, aspect_vel = np.full(len(pos), 1e-2), np.full(len(pos), 1e-5 * kalman.REF_FPS)
    return np.stack([pos, pos, aspect, pos, vel, vel, aspect_vel, vel], 1)


def textbook_predict(mean: np.ndarray, cov: np.ndarray, dt: float) -> tuple[np.ndarray, ...]:
    """x' = F x, P' = F P F' + Q, with F and Q written out (the filter's first form)."""
    F = np.eye(8)
    F[[0, 1, 2, 3], [4, 5, 6, 7]] = dt
    h = mean[:, 3]
    pos, vel = kalman._W_POS * h, kalman._W_VEL * kalman.REF_FPS * h
    std = state_std(pos, vel)
    Q = np.zeros_like(cov)
    Q[:, np.arange(8), np.arange(8)] = std**2 * (dt * kalman.REF_FPS)
    return mean @ F.T, F @ cov @ F.T + Q


def textbook_update(mean: np.ndarray, cov: np.ndarray, z: np.ndarray) -> tuple[np.ndarray, ...]:
    """K = P H' (H P H' + R)^-1, x' = x + K (z - H x), P' = P - K S K', H = [I 0]."""
    H = np.eye(4, 8)
    h = mean[:, 3]
    std = np.stack(
        [kalman._W_POS * h, kalman._W_POS * h, np.full(len(h), 0.1), kalman._W_POS * h], 1
    )
    R = np.zeros((len(mean), 4, 4))
    R[:, np.arange(4), np.arange(4)] = std**2
    S = H @ cov @ H.T + R
    gain = np.linalg.solve(S, (cov @ H.T).transpose(0, 2, 1)).transpose(0, 2, 1)
    new_mean = mean + np.einsum("kij,kj->ki", gain, z - (H @ mean[:, :, None])[:, :, 0])
    return new_mean, cov - gain @ S @ gain.transpose(0, 2, 1)


def textbook_initiate(measurements: np.ndarray) -> np.ndarray:
    """P0 = diag(std**2), ByteTrack's initial deviations (twice the noise weights)."""
    h = measurements[:, 3]
    pos, vel = 2 * kalman._W_POS * h, 10 * kalman._W_VEL_INIT * kalman.REF_FPS * h
    std = state_std(pos, vel)
    P = np.zeros((len(h), 8, 8))
    P[:, np.arange(8), np.arange(8)] = std**2
    return P


def assert_close(got: np.ndarray, want: np.ndarray, rtol: float) -> None:
    """The same numbers up to rounding, each entry against the largest of its kind over the
    tracks (an aspect ratio's variance is 1e-4 where a height's is 1e3: one scale for all
    would not check it)."""
    scale = np.abs(want).max(axis=0, keepdims=True)
    assert np.all(np.abs(got - want) <= rtol * scale), f"off by {np.abs(got - want).max()}"


def blocks_of(P: np.ndarray) -> np.ndarray:
    """The textbook ``[N, 8, 8]`` covariances as the filter's ``[N, 3, 4]`` blocks, after
    checking that they hold nothing else (entries outside the blocks zero, symmetric)."""
    values, velocities = np.arange(4), np.arange(4, 8)
    blocks = np.stack(
        [P[:, values, values], P[:, values, velocities], P[:, velocities, velocities]], 1
    )
    np.testing.assert_allclose(P[:, velocities, values], blocks[:, 1], rtol=1e-9, atol=1e-300)
    outside = P - kalman.full_covariance(blocks)
    outside[:, velocities, values] = 0.0
    assert np.all(outside == 0.0), "the textbook filter coupled two quantities"
    return blocks


def assert_same_filter(
    got: tuple[np.ndarray, np.ndarray], want: tuple[np.ndarray, np.ndarray], rtol: float = 1e-12
) -> None:
    """The block filter's means and covariances are the textbook's, entry by entry."""
    assert_close(got[0], want[0], rtol)
    assert_close(got[1], blocks_of(want[1]), rtol)


def moving_tracks(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    boxes = rng.uniform(0, 300, (5, 2))
    boxes = np.concatenate([boxes, boxes + rng.uniform(20, 120, (5, 2))], axis=1)
    mean, cov = kalman.initiate(kalman.xyxy_to_xyah(boxes))
    mean[:, 4:] = rng.normal(0, 30, (5, 4))  # moving
    return boxes, mean, cov


@pytest.mark.parametrize("dt", [1 / 30, 0.1, 2.5])
def test_kalman_initiate_predict_and_update_are_the_textbook_filter(dt: float) -> None:
    rng = np.random.default_rng(3)
    boxes, mean, cov = moving_tracks(rng)
    want_cov = textbook_initiate(kalman.xyxy_to_xyah(boxes))
    np.testing.assert_array_equal(kalman.full_covariance(cov), want_cov)
    got_mean, got_cov = kalman.predict(mean, cov, dt)
    want_mean, want_cov = textbook_predict(mean, want_cov, dt)
    assert_same_filter((got_mean, got_cov), (want_mean, want_cov))
    z = kalman.xyxy_to_xyah(boxes + rng.normal(0, 3, boxes.shape))
    got_mean, got_cov = kalman.update(got_mean, got_cov, z)
    want_mean, want_cov = textbook_update(want_mean, want_cov, z)
    assert_same_filter((got_mean, got_cov), (want_mean, want_cov))


@pytest.mark.parametrize("dt", [1 / 30, 0.1])
def test_the_blocks_stay_the_textbook_filter_frame_after_frame(dt: float) -> None:
    """20 frames, some tracks missing some: the blocks are all the 8x8 matrices ever hold.
    (Not at 2.5 s: frames seconds apart make the matrix form's P - K S K' cancel, and it drifts
    from an exact reference more than the blocks do; one step apart is checked above.)"""
    rng = np.random.default_rng(4)
    _, mean, cov = moving_tracks(rng)
    want_mean, want_cov = mean.copy(), kalman.full_covariance(cov)
    for step in range(20):
        mean, cov = kalman.predict(mean, cov, dt)
        want_mean, want_cov = textbook_predict(want_mean, want_cov, dt)
        z = kalman.xyxy_to_xyah(kalman.xyah_to_xyxy(mean[:, :4]) + rng.normal(0, 3, (5, 4)))
        seen = slice(None) if step % 3 else slice(0, 3)  # two tracks missed this frame
        mean[seen], cov[seen] = kalman.update(mean[seen], cov[seen], z[seen])
        want_mean[seen], want_cov[seen] = textbook_update(want_mean[seen], want_cov[seen], z[seen])
        assert_same_filter((mean, cov), (want_mean, want_cov), 1e-9)


def test_the_cached_step_cannot_be_changed_by_a_caller() -> None:
    move, scale, fixed, transition_t = kalman._step(0.1)
    assert transition_t[4, 0] == pytest.approx(0.1) and move[1, 2] == pytest.approx(0.1)
    for a in (move, scale, fixed, transition_t):
        assert not a.flags.writeable
        with pytest.raises(ValueError):
            a[0, 0] = 5.0


def lsa_pairs(overlap: np.ndarray, allowed: np.ndarray) -> list[tuple[int, int]]:
    """The assignment as it was: linear_sum_assignment on every matrix."""
    rows, cols = linear_sum_assignment(np.where(allowed, 1.0 - overlap, _FAR))
    return [(int(r), int(c)) for r, c in zip(rows, cols, strict=True) if allowed[r, c]]


def test_the_assignment_skips_the_solver_only_where_it_gives_its_pairs() -> None:
    rng = np.random.default_rng(8)
    skipped = solved = 0
    for _ in range(3000):
        n, m = rng.integers(0, 7, 2)
        overlap = rng.uniform(0, 1, (n, m)) * (rng.uniform(0, 1, (n, m)) < 0.35)
        same_class = rng.uniform(0, 1, (n, m)) < 0.8
        want = lsa_pairs(overlap, same_class & (overlap >= 0.2)) if overlap.size else []
        assert assign(overlap, same_class, 0.2) == want
        if overlap.size:
            fast = disjoint_pairs(same_class & (overlap >= 0.2))
            skipped, solved = skipped + (fast is not None), solved + (fast is None)
            cost = np.where(same_class & (overlap >= 0.2), 2.0 * (1.0 - overlap), _FAR)
            rows, cols = linear_sum_assignment(cost)
            kept = [(int(r), int(c)) for r, c in zip(rows, cols, strict=True) if cost[r, c] < _FAR]
            assert assign_cost(cost) == kept
    assert skipped > 500 and solved > 500  # both paths taken


def even_odd(point: tuple[float, float], polygon: list[tuple[float, float]]) -> bool:
    """The plain ray-casting test, one point, one edge at a time."""
    x, y = point
    inside = False
    for (x1, y1), (x2, y2) in zip(polygon, polygon[1:] + polygon[:1], strict=True):
        if (y1 > y) != (y2 > y) and x < x1 + (y - y1) * (x2 - x1) / (y2 - y1):
            inside = not inside
    return inside


def test_a_polygons_edges_worked_out_once_give_the_even_odd_rule() -> None:
    concave = [(10.0, 10.0), (200.0, 10.0), (200.0, 150.0), (120.0, 60.0), (10.0, 150.0)]
    shape = Polygon.of(np.array(concave))
    rng = np.random.default_rng(1)
    points = np.concatenate([rng.uniform(0, 220, (400, 2)), np.array(concave)])  # and vertices
    got = shape.contains(points)
    assert got.tolist() == [even_odd((float(x), float(y)), concave) for x, y in points]
    assert got.any() and not got.all()


def test_a_kept_line_length_gives_the_same_signed_distance() -> None:
    start, end = (30.0, 0.0), (90.0, 360.0)
    for point in [(0.0, 0.0), (200.0, 100.0), (60.0, 180.0)]:
        kept = signed_distance(point, start, end, line_length(start, end))
        assert kept == signed_distance(point, start, end)


def test_a_tracked_detection_keeps_every_field_but_its_id_and_look() -> None:
    values = {
        "class_id": 2,
        "label": "car",
        "score": 0.8,
        "x1": 1.0,
        "y1": 2.0,
        "x2": 3.0,
        "y2": 4.0,
        "track_id": None,
        "appearance": b"\x01\x02",
    }
    names = [f.name for f in dataclasses.fields(Detection)]
    assert names == list(values), "Detection's fields changed: update Detection.tracked"
    detection = Detection(**values)  # type: ignore[arg-type]
    want = dataclasses.replace(detection, track_id=17, appearance=None)
    assert detection.tracked(17) == want
    assert detection.tracked(None) == dataclasses.replace(detection, appearance=None)


def scene_digest(params: TrackerParams, seed: int = 5, frames: int = 240, objects: int = 6) -> str:
    """The tracker's outputs (ids, confirmed, born, removed) over a scripted scene: objects of
    two classes walking both ways, leaving through a border and coming back, cut by the
    frame, missed now and then, one hidden for stretches, scores high and low, a gap in time,
    a look per object."""
    rng = np.random.default_rng(seed)
    x, y = rng.uniform(-80, 640, objects), rng.uniform(40, 200, objects)
    vx = rng.choice([-1, 1], objects) * rng.uniform(3, 9, objects)
    w, h = rng.uniform(30, 80, objects), rng.uniform(60, 150, objects)
    looks, classes = rng.uniform(0, 1, (objects, 16)), np.arange(objects) % 2
    tracker = ByteTracker(params, first_id=1)
    digest = hashlib.sha256()
    for f in range(frames):
        x = np.where(x > 700, -90.0, np.where(x < -100, 690.0, x + vx))
        boxes = np.stack([x, y, x + w, y + h], 1) + rng.normal(0, 1.5, (objects, 4))
        boxes[:, [0, 2]] = boxes[:, [0, 2]].clip(0, 640)
        keep = (boxes[:, 2] - boxes[:, 0] > 4) & (rng.uniform(0, 1, objects) > 0.1)
        if f % 40 in range(20, 32):
            keep[f % objects] = False
        scores = rng.uniform(0.2, 0.95, objects)
        t = f / 10 + (0.8 if f > 120 else 0.0)
        out = tracker.update(
            boxes[keep], scores[keep], classes[keep], t, (640.0, 360.0), looks[keep]
        )
        frame = (out.track_ids.tolist(), out.confirmed.tolist(), out.born, out.removed)
        digest.update(repr(frame).encode())
    return digest.hexdigest()[:16]


@pytest.mark.parametrize(
    ("params", "want"),
    [
        (TrackerParams(), "b2c14c65063ccd63"),
        (TrackerParams(reid_s=3.0, recover_dist=1.0, appearance_s=3.0), "db3de51b8d3cd5c2"),
    ],
    ids=["defaults", "every re-identification"],
)
def test_the_tracker_gives_what_it_gave_before_the_rework(params: TrackerParams, want: str) -> None:
    """The digests are the tracker's at 78c8e17, before the cheaper forms: a change to what
    the tracker does (not only to what it costs) must say so here."""
    assert scene_digest(params) == want


def test_integer_boxes_are_tracked_as_floats() -> None:
    tracker = ByteTracker(TrackerParams(), first_id=1)
    for t in (0.0, 0.1):
        out = tracker.update(
            np.array([[10, 20, 60, 140]]), np.array([0.9]), np.array([0]), t, (640.0, 360.0)
        )
    assert out.track_ids.tolist() == [1] and out.confirmed.tolist() == [True]


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int64])
def test_grown_boxes_are_a_new_array_of_the_sums_type(dtype: type) -> None:
    from visionflow.tracking.bytetrack import grow

    boxes = np.array([[10, 20, 60, 140]], dtype)
    before = boxes.copy()
    out = grow(boxes, 0.3)
    assert out.dtype == (boxes + np.zeros(1, dtype) * 0.3).dtype  # as boxes + w would be
    np.testing.assert_allclose(out, [[-5.0, -16.0, 75.0, 176.0]], rtol=1e-6)
    np.testing.assert_array_equal(boxes, before)  # the caller's boxes untouched
