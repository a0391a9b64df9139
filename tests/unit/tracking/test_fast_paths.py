"""The tracked path's cheaper forms give what the plain ones gave (bench/tracking_cost.py times
them): the Kalman filter against the textbook matrices, a zone's edges worked out once against
a plain even-odd test, a detection given its id against ``dataclasses.replace``, and the
tracker's outputs on a scripted scene against those of the tracker before the rework."""

from __future__ import annotations

import dataclasses
import hashlib

import numpy as np
import pytest

from visionflow.pipeline.frames import Detection
from visionflow.tracking import kalman
from visionflow.tracking.bytetrack import ByteTracker, TrackerParams
from visionflow.tracking.geometry import Polygon, line_length, signed_distance


def textbook_predict(mean: np.ndarray, cov: np.ndarray, dt: float) -> tuple[np.ndarray, ...]:
    """x' = F x, P' = F P F' + Q, with F and Q written out (the filter's first form)."""
    F = np.eye(8)
    F[[0, 1, 2, 3], [4, 5, 6, 7]] = dt
    h = mean[:, 3]
    pos, vel = kalman._W_POS * h, kalman._W_VEL * kalman.REF_FPS * h
    std = np.stack(
        [
            pos,
            pos,
            np.full(len(h), 1e-2),
            pos,
            vel,
            vel,
            np.full(len(h), 1e-5 * kalman.REF_FPS),
            vel,
        ],
        1,
    )
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


@pytest.mark.parametrize("dt", [1 / 30, 0.1, 2.5])
def test_kalman_predict_and_update_are_the_textbook_filter(dt: float) -> None:
    rng = np.random.default_rng(3)
    boxes = rng.uniform(0, 300, (5, 2))
    boxes = np.concatenate([boxes, boxes + rng.uniform(20, 120, (5, 2))], axis=1)
    mean, cov = kalman.initiate(kalman.xyxy_to_xyah(boxes))
    mean[:, 4:] = rng.normal(0, 30, (5, 4))  # moving
    got_mean, got_cov = kalman.predict(mean, cov, dt)
    want_mean, want_cov = textbook_predict(mean, cov, dt)
    np.testing.assert_array_equal(got_mean, want_mean)  # the same numbers, bit for bit
    np.testing.assert_array_equal(got_cov, want_cov)
    z = kalman.xyxy_to_xyah(boxes + rng.normal(0, 3, boxes.shape))
    got = kalman.update(got_mean, got_cov, z)
    want = textbook_update(want_mean, want_cov, z)
    for a, b in zip(got, want, strict=True):
        np.testing.assert_array_equal(a, b)


def test_the_cached_transition_cannot_be_changed_by_a_caller() -> None:
    F = kalman._transition(0.1)
    assert F[0, 4] == pytest.approx(0.1) and not F.flags.writeable
    with pytest.raises(ValueError):
        F[0, 4] = 1.0


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
