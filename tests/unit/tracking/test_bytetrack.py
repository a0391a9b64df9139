from __future__ import annotations

import numpy as np
import pytest

from visionflow.tracking.bytetrack import ByteTracker, TrackerParams, _covered, edge_mask


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


# ---- re-identification at the frame edge and recovery of lost tracks --------------------------
SIZE = (640.0, 360.0)


def leave_left_and_return(tracker, gone_s, back=None, classes=(0, 0)):
    """An object walks left out of a 640x360 frame (10 fps), is gone ``gone_s`` seconds after
    its last detection, and comes back through the left edge; the returning frames' outputs."""
    for i in range(10):  # x1 from 90 down to 0: the last boxes touch the left edge
        x = max(0, 90 - 10 * i)
        tracker.update(
            np.array([[x, 200, x + 40, 280]], np.float64),
            np.array([0.9]),
            np.array([classes[0]]),
            i / 10,
            SIZE,
        )
    t0 = 0.9 + gone_s
    outs = []
    for k in range(5):
        b = back or [0, 200, 20 + 10 * k, 280]
        outs.append(
            tracker.update(
                np.array([b], np.float64),
                np.array([0.9]),
                np.array([classes[1]]),
                t0 + k / 10,
                SIZE,
            )
        )
    return outs


def test_an_object_coming_back_through_the_edge_it_left_by_gets_its_id_back():
    tracker = ByteTracker(TrackerParams(lost_track_s=1.0, reid_s=3.0))
    outs = leave_left_and_return(tracker, 1.5)  # past lost_track_s: reported removed first
    assert outs[0].removed == [1]
    assert [list(o.track_ids) for o in outs] == [[1]] * 5
    assert outs[0].confirmed[0] and all(o.born == [] for o in outs)  # not a new object


def test_without_reid_or_frame_size_or_after_reid_s_the_returning_object_is_new():
    outs = leave_left_and_return(ByteTracker(), 1.5)  # reid is off by default
    assert list(outs[-1].track_ids) == [2]
    outs = leave_left_and_return(ByteTracker(TrackerParams(reid_s=3.0)), 3.5)
    assert list(outs[-1].track_ids) == [2]
    tracker = ByteTracker(TrackerParams(reid_s=3.0))
    for i in range(10):
        x = max(0, 90 - 10 * i)
        step(tracker, [[x, 200, x + 40, 280]], i / 10)  # no frame size: no edges known
    assert list(step(tracker, [[0, 200, 20, 280]], 2.4).track_ids) == [2]


@pytest.mark.parametrize(
    ("back", "classes"),
    [
        ([0, 250, 20, 330], (0, 0)),  # feet 50 px (0.6 heights) lower
        ([0, 220, 20, 280], (0, 0)),  # 60 px high instead of 80
        ([0, 200, 20, 280], (0, 1)),  # another class
        ([620, 200, 640, 280], (0, 0)),  # at the other edge
    ],
)
def test_another_object_at_the_edge_does_not_take_the_id(back, classes):
    outs = leave_left_and_return(
        ByteTracker(TrackerParams(reid_s=3.0)), 1.5, back=back, classes=classes
    )
    assert 1 not in outs[0].track_ids


def test_edge_mask_names_the_borders_a_box_touches():
    boxes = np.array(
        [[0, 100, 50, 200], [600, 0, 640, 50], [300, 300, 340, 360], [300, 100, 340, 200]],
        np.float64,
    )
    assert list(edge_mask(boxes, SIZE, 0.02)) == [1, 2 | 4, 8, 0]
    assert list(edge_mask(boxes, None, 0.02)) == [0, 0, 0, 0]


def behind_a_pillar(tracker):
    """An object walks right behind a pillar (x 200-260): its box shrinks against the pillar,
    it is unseen for 0.6 s, then comes out beyond the pillar; the id of the box out there."""
    t = 0.0
    for i in range(12):  # x1 = 40 .. 150, then only the part left of the pillar is seen
        x = 40 + 10 * i
        step(tracker, [[x, 200, min(x + 40, 200), 280]], t)
        t += 0.1
    for _ in range(6):
        step(tracker, [], t)
        t += 0.1
    out = step(tracker, [[262, 200, 300, 280]], t)
    return int(out.track_ids[0])


def test_a_lost_track_takes_the_detection_where_its_object_comes_out_from_behind_a_pillar():
    assert behind_a_pillar(ByteTracker()) == 2  # IoU alone (the default)
    assert behind_a_pillar(ByteTracker(TrackerParams(recover_dist=1.0))) == 1


@pytest.mark.parametrize(
    ("params", "x", "second"),
    [
        (TrackerParams(recover_dist=1.0), 100, box(150)),  # recovery: a neighbour
        (TrackerParams(reid_s=3.0), 0, box(0, y=110)),  # re-identification: same edge
    ],
)
def test_a_lost_track_matched_this_frame_does_not_also_take_a_second_box(params, x, second):
    """A lost track that IoU matching pairs this frame is still LOST until the update:
    recovery and re-identification must not hand it a second, nearby detection."""
    tracker, size = ByteTracker(params), (640, 360)
    for i in range(3):
        first = tracker.update(*_arrays([box(x)]), 0.1 * i, size)
    tracker.update(*_arrays([]), 0.3, size)  # missed once: LOST
    out = tracker.update(*_arrays([box(x), second]), 0.4, size)
    ids = [int(i) for i in out.track_ids]
    assert ids[0] == int(first.track_ids[0]) and ids[1] != ids[0], ids


def _arrays(boxes):
    b = np.array(boxes, np.float64).reshape(-1, 4)
    return b, np.full(len(b), 0.9), np.zeros(len(b), np.int64)


def run_with(tracker, frames, t0=0.0):
    return [
        step(tracker, boxes, t0 + i / 10, classes=classes)
        for i, (boxes, classes) in enumerate(frames)
    ]


A, B = box(100, 100), box(130, 110)  # two people overlapping side by side
OVER = [105, 100, 165, 190]  # the detector's extra box across both


def held_tracker(cover=0.75, hold=0.5):
    tracker = ByteTracker(TrackerParams(merged_cover=cover, merged_hold_s=hold))
    run_with(tracker, [([A, B], None)] * 3)
    return tracker


def test_a_box_over_two_tracked_objects_of_its_class_is_held_unconfirmed_while_it_lasts():
    tracker = held_tracker()
    outs = [step(tracker, [A, B, OVER], 0.3 + i / 10) for i in range(2)]  # two frames, gone
    assert all(list(o.track_ids[:2]) == [1, 2] and not o.confirmed[2] for o in outs)
    assert not any(o.born for o in outs)
    out = step(tracker, [A, B], 0.5)
    assert list(out.track_ids) == [1, 2] and len(tracker) == 2  # dropped, never confirmed
    tracker = held_tracker(cover=0.0)  # off: confirmed on its second frame, as any new box
    outs = [step(tracker, [A, B, OVER], 0.3 + i / 10) for i in range(2)]
    assert outs[1].confirmed[2] and outs[1].born == [3]


def test_a_real_object_between_two_others_is_confirmed_after_the_hold():
    tracker = held_tracker()
    outs = [step(tracker, [A, B, OVER], 0.3 + i / 10) for i in range(8)]  # it stays
    confirmed = [bool(o.confirmed[2]) for o in outs]
    assert confirmed == [False] * 5 + [True] * 3  # matched 0.5 s after its first frame
    assert outs[5].born == [3] and {int(o.track_ids[2]) for o in outs} == {3}


def test_only_a_box_mostly_inside_the_union_of_two_tracked_boxes_is_held():
    # inside A and B by their sum but not their union: A and B overlap where it lies
    a, b = [100, 100, 200, 200], [150, 100, 250, 200]
    over_the_overlap = [150, 150, 200, 275]  # 40 % inside the union, 80 % by the sum
    tracker = ByteTracker(TrackerParams(merged_cover=0.75))
    run_with(tracker, [([a, b], None)] * 3)
    outs = [step(tracker, [a, b, over_the_overlap], 0.3 + i / 10) for i in range(2)]
    assert outs[1].confirmed[2]  # not held
    # one box holding most of it and another under a sixth: not over two objects
    tracker = ByteTracker(TrackerParams(merged_cover=0.75))
    c, d = box(100, 100), box(136, 100)
    run_with(tracker, [([c, d], None)] * 3)
    behind_c = [101, 101, 141, 181]  # inside c, a sliver (1/8) in d
    outs = [step(tracker, [c, d, behind_c], 0.3 + i / 10) for i in range(2)]
    assert outs[1].confirmed[2]
    # another class across both: not held
    tracker = held_tracker()
    outs = [step(tracker, [A, B, OVER], 0.3 + i / 10, classes=[0, 0, 1]) for i in range(2)]
    assert outs[1].confirmed[2]


def test_the_hold_counts_time_summed_in_steps_and_survives_other_tracks_going():
    tracker = ByteTracker(TrackerParams(merged_cover=0.75, merged_hold_s=0.5, lost_track_s=0.2))
    far = box(400, 100)  # a third object that leaves: its track is given up during the hold
    run_with(tracker, [([A, B, far], None)] * 3)
    t, outs = 0.2, []
    for i in range(8):  # the processor's clock: summed steps, not i / fps
        t += 0.1
        outs.append(step(tracker, [A, B, OVER, far] if i < 2 else [A, B, OVER], t))
    assert any(o.removed for o in outs[2:6])  # removed while the box was held
    confirmed = [bool(o.confirmed[2]) for o in outs]
    assert confirmed == [False] * 5 + [True] * 3, confirmed  # 0.5 s after its first frame
    assert len(tracker.confirm_at) == len(tracker)


def test_covered_is_the_share_inside_the_union():
    box = np.array([0.0, 0.0, 10.0, 10.0])
    pair = np.array([[-5.0, 0.0, 5.0, 10.0], [3.0, 0.0, 8.0, 10.0]])  # overlap 3-5, out left
    assert _covered(box, pair) == pytest.approx(0.8)  # x 0-8 of 0-10
    apart = np.array([[0.0, 0.0, 2.0, 2.0], [8.0, 8.0, 12.0, 12.0]])
    assert _covered(box, apart) == pytest.approx(0.08)  # 4 + 4 of 100
    assert _covered(box, np.array([[3.0, 3.0, 3.0, 9.0]])) == 0.0  # no area
    assert _covered(box, np.array([[-1.0, -1.0, 11.0, 11.0]])) == 1.0
