from __future__ import annotations

import numpy as np

from visionflow.tracking.bytetrack import ByteTracker, TrackerParams


def step(tracker, boxes, t, scores=None, classes=None):
    boxes = np.array(boxes, np.float64).reshape(-1, 4)
    scores = np.full(len(boxes), 0.9) if scores is None else np.array(scores, np.float64)
    classes = np.zeros(len(boxes), np.int64) if classes is None else np.array(classes, np.int64)
    return tracker.update(boxes, scores, classes, t)


def box(x, y=100, w=40, h=80):
    return [x, y, x + w, y + h]


def test_two_objects_passing_each_other_keep_their_ids():
    tracker = ByteTracker()
    ids = []
    for i in range(30):  # 10 fps; A goes right, B left, on different rows, overlapping in x
        out = step(tracker, [box(50 + 10 * i, 100), box(350 - 10 * i, 150)], i / 10)
        ids.append(tuple(out.track_ids))
    assert ids[0] == (1, 2) and all(row == (1, 2) for row in ids)


def test_a_gap_shorter_than_lost_track_s_keeps_the_id_a_longer_one_does_not():
    tracker = ByteTracker(TrackerParams(lost_track_s=1.0))
    for i in range(10):
        step(tracker, [box(100 + 5 * i)], i / 10)
    # frames 10..16 dropped (0.7 s), the object moved on at the same speed
    out = step(tracker, [box(100 + 5 * 17)], 1.7)
    assert list(out.track_ids) == [1]
    out = step(tracker, [box(100 + 5 * 40)], 4.0)  # 2.3 s later: given up, a new track
    assert out.removed == [1] and list(out.track_ids) == [2]


def test_low_score_detections_keep_a_track_but_do_not_start_one():
    tracker = ByteTracker()
    for i in range(5):
        step(tracker, [box(100 + 5 * i)], i / 10)
    out = step(tracker, [box(125), box(400)], 0.5, scores=[0.3, 0.3])
    assert list(out.track_ids) == [1, -1]
    out = step(tracker, [box(130)], 0.6, scores=[0.9])
    assert list(out.track_ids) == [1]


def test_detections_only_match_tracks_of_their_class():
    tracker = ByteTracker()
    step(tracker, [box(100)], 0.0, classes=[0])
    out = step(tracker, [box(102)], 0.1, classes=[1])
    assert list(out.track_ids) == [2]


def test_a_new_track_is_confirmed_on_its_second_frame_and_reported_born_once():
    tracker = ByteTracker()
    step(tracker, [box(100)], 0.0)  # first frame: confirmed at once
    out = step(tracker, [box(100), box(300)], 0.1)
    assert list(out.track_ids) == [1, 2] and list(out.confirmed) == [True, False]
    assert out.born == []
    out = step(tracker, [box(100), box(302)], 0.2)
    assert list(out.confirmed) == [True, True] and out.born == [2]


def test_reset_forgets_tracks_but_ids_keep_counting():
    tracker = ByteTracker()
    step(tracker, [box(100), box(300)], 0.0)
    tracker.reset()
    out = step(tracker, [box(100)], 0.1)
    assert list(out.track_ids) == [3]
