"""Re-identification by appearance: a returning object gets its id back, a look-alike of
other colours (or one farther than the object can have got) does not, and unlike looks do not
swap ids where boxes overlap."""

from __future__ import annotations

import numpy as np
import pytest

from visionflow.pipeline.appearance import DIMS, describe_host
from visionflow.pipeline.frames import Detection, FrameRef, FrameResult
from visionflow.pipeline.letterbox import letterbox_geometry
from visionflow.tracking.bytetrack import ByteTracker, TrackerParams, appearance_distance
from visionflow.tracking.config import TrackingConfig
from visionflow.tracking.processor import TrackingProcessor, descriptors

SIZE = (640.0, 360.0)
APPEARANCE = TrackerParams(appearance_s=3.0)
ANYWHERE = TrackerParams(appearance_s=3.0, appearance_reach=0.0)  # no reach gate


def look(*rows: tuple[int, int, int]) -> np.ndarray:
    """The descriptor of a box painted in bands of these colours (top to bottom; one
    colour: all) on a mid-grey background."""
    image = np.full((60, 40, 3), 128, np.uint8)
    colours = list(rows) * (4 // len(rows))
    for i, colour in enumerate(colours):
        image[10 + 10 * i : 20 + 10 * i, 10:30] = colour
    return describe_host(image, np.array([[10, 10, 30, 50]], np.float32))[0].astype(np.float64)


RED_OVER_BLUE = look((200, 30, 30), (200, 30, 30), (30, 30, 200), (30, 30, 200))
GREEN_OVER_GREY = look((30, 200, 30), (30, 200, 30), (90, 90, 90), (90, 90, 90))


def update(tracker, boxes, t, looks=None, classes=None):
    b = np.array(boxes, np.float64).reshape(-1, 4)
    c = np.zeros(len(b), np.int64) if classes is None else np.array(classes, np.int64)
    f = None if looks is None else np.array(looks, np.float64).reshape(len(b), DIMS)
    return tracker.update(b, np.full(len(b), 0.9), c, t, SIZE, f)


def leave_and_return(tracker, gone_s, back_look, back_box=(0, 230, 30, 330), cls=(0, 0)):
    """An object (red over blue, 100 px high) walks left out of the frame, is unseen for
    ``gone_s`` s, and something comes back in at the left edge; the ids of the returning
    frames."""
    for i in range(10):
        x = max(0, 90 - 10 * i)
        update(tracker, [[x, 200, x + 40, 300]], i / 10, [RED_OVER_BLUE], [cls[0]])
    for k in range(1, round(gone_s * 10)):  # frames keep coming while it is away
        update(tracker, [], 0.9 + k / 10)
    ids = []
    for k in range(4):
        b = [back_box[0], back_box[1], back_box[2] + 10 * k, back_box[3]]
        out = update(tracker, [b], 0.9 + gone_s + k / 10, [back_look], [cls[1]])
        ids.append(int(out.track_ids[0]))
    return ids


def test_an_object_coming_back_with_its_colours_gets_its_id_even_where_geometry_differs():
    # it comes back 30 px lower than it left: the edge re-identification's foot-line gate
    # (0.25 heights) would refuse it, appearance only asks that it be within reach
    ids = leave_and_return(ByteTracker(APPEARANCE), 1.5, RED_OVER_BLUE)
    assert ids == [1, 1, 1, 1]
    geometry = leave_and_return(ByteTracker(TrackerParams(reid_s=3.0)), 1.5, RED_OVER_BLUE)
    assert geometry[0] != 1


def test_within_lost_track_s_the_returning_object_is_taken_back_too():
    assert leave_and_return(ByteTracker(APPEARANCE), 0.5, RED_OVER_BLUE) == [1, 1, 1, 1]


@pytest.mark.parametrize(
    ("back_look", "back_box", "cls"),
    [
        (GREEN_OVER_GREY, (0, 200, 30, 300), (0, 0)),  # another look, same place and size
        (  # one colour shared, the other not (a histogram has no layout: blue over red
            # would pass for red over blue)
            look((200, 200, 30), (200, 200, 30), (30, 30, 200), (30, 30, 200)),
            (0, 200, 30, 300),
            (0, 0),
        ),
        (RED_OVER_BLUE, (0, 200, 30, 300), (0, 1)),  # another class
        (RED_OVER_BLUE, (0, 250, 30, 300), (0, 0)),  # half the height
    ],
)
def test_a_look_alike_that_differs_does_not_take_the_id(back_look, back_box, cls):
    ids = leave_and_return(ByteTracker(APPEARANCE), 1.5, back_look, back_box, cls)
    assert 1 not in ids


def test_off_without_appearance_s_or_descriptors_or_after_appearance_s():
    assert leave_and_return(ByteTracker(), 1.5, RED_OVER_BLUE)[0] == 2  # off by default
    assert leave_and_return(ByteTracker(APPEARANCE), 3.5, RED_OVER_BLUE)[0] == 2  # too late
    tracker = ByteTracker(APPEARANCE)
    for i in range(10):
        x = max(0, 90 - 10 * i)
        update(tracker, [[x, 200, x + 40, 300]], i / 10)  # no descriptors at all
    assert int(update(tracker, [[0, 230, 30, 330]], 2.4).track_ids[0]) == 2


def test_edge_reid_also_needs_the_looks_to_agree_when_both_have_them():
    params = TrackerParams(reid_s=3.0, appearance_s=3.0)
    ids = leave_and_return(ByteTracker(params), 1.5, GREEN_OVER_GREY, (0, 200, 30, 300))
    assert 1 not in ids
    assert (
        leave_and_return(
            ByteTracker(TrackerParams(reid_s=3.0)), 1.5, GREEN_OVER_GREY, (0, 200, 30, 300)
        )[0]
        == 1
    )


def swap_where_boxes_overlap(params: TrackerParams) -> list[tuple[int, int]]:
    """Two objects of unlike colours walk towards each other on one row; as they meet the
    detector's boxes come in the other order (A's box where B's track predicts, and the
    other way): the ids each look ends with, per frame."""
    tracker = ByteTracker(params)
    out = []
    for i in range(8):
        a, b = 100 + 12 * i, 260 - 12 * i
        r = update(tracker, [[a, 200, a + 40, 300], [b, 200, b + 40, 300]], i / 10,
                   [RED_OVER_BLUE, GREEN_OVER_GREY])  # fmt: skip
        out.append((int(r.track_ids[0]), int(r.track_ids[1])))
    # frame 8: A (red) is detected at B's predicted place and B at A's
    a_pred, b_pred = 100 + 12 * 8, 260 - 12 * 8
    r = update(tracker, [[b_pred, 200, b_pred + 40, 300], [a_pred, 200, a_pred + 40, 300]], 0.8,
               [RED_OVER_BLUE, GREEN_OVER_GREY])  # fmt: skip
    out.append((int(r.track_ids[0]), int(r.track_ids[1])))
    return out


def test_the_appearance_gate_keeps_unlike_objects_from_swapping_ids():
    gated = swap_where_boxes_overlap(APPEARANCE)
    assert gated[-1][0] == gated[0][0] and gated[-1][1] == gated[0][1]  # red keeps red's id
    plain = swap_where_boxes_overlap(TrackerParams(appearance_s=3.0, appearance_gate=0.0))
    assert plain[-1] == (plain[0][1], plain[0][0])  # IoU alone swaps them


def test_a_tracks_look_follows_its_detections_slowly():
    tracker = ByteTracker(APPEARANCE)
    update(tracker, [[100, 200, 140, 300]], 0.0, [RED_OVER_BLUE])
    darker = look((170, 30, 30), (170, 30, 30), (30, 30, 150), (30, 30, 150))  # in the shade
    start = appearance_distance(tracker.feat, darker[None])[0, 0]
    gaps = []
    for i in range(1, 4):
        update(tracker, [[100 + i, 200, 140 + i, 300]], i / 10, [darker])
        gaps.append(appearance_distance(tracker.feat, darker[None])[0, 0])
    assert start > gaps[0] > gaps[1] > gaps[2] > 0  # towards it, a step at a time
    assert np.linalg.norm(tracker.feat[0]) == pytest.approx(1.0)


def test_appearance_distance_ignores_missing_descriptors():
    feats = np.stack([RED_OVER_BLUE, np.zeros(DIMS)])
    d = appearance_distance(feats, np.stack([GREEN_OVER_GREY, RED_OVER_BLUE]))
    assert d[0, 0] > 0.2 and d[0, 1] == pytest.approx(0.0, abs=1e-6)
    assert d[1, 0] == 0.0 and d[1, 1] == 0.0


# ---- through the tracking processor, descriptors on the detections ---------------------------
def test_the_processor_reads_the_detections_descriptors():
    proc = TrackingProcessor({"door": TrackingConfig(appearance_s=3.0)})
    lb = letterbox_geometry(640, 360, 320, 320)

    def frame(i: int, box: list[float], colours: np.ndarray) -> int:
        det = Detection(0, "person", 0.9, *box, appearance=colours.astype(np.float16).tobytes())
        ref = FrameRef("door", i, i / 10, 1e9 + i / 10, 1.0, "p", 0, lb)
        out = proc.process([FrameResult(ref, (det,), 1.0, 1.0, 1, 0, 0.0)])[0]
        track_id = out.detections[0].track_id
        assert track_id is not None
        return track_id

    first = [
        frame(i, [max(0, 90 - 10 * i), 200, max(0, 90 - 10 * i) + 40, 300], RED_OVER_BLUE)
        for i in range(10)
    ]
    back = frame(25, [0, 230, 30, 330], RED_OVER_BLUE)
    other = frame(26, [300, 20, 340, 120], GREEN_OVER_GREY)
    assert back == first[-1] and other != back


def test_descriptors_of_a_frame_without_any_are_none():
    plain = (Detection(0, "person", 0.9, 1.0, 2.0, 3.0, 4.0),)
    assert descriptors(plain) is None
    one = (
        *plain,
        Detection(0, "p", 0.9, 1, 2, 3, 4, appearance=RED_OVER_BLUE.astype(np.float16).tobytes()),
    )
    got = descriptors(one)
    assert got is not None and not got[0].any() and got[1] == pytest.approx(RED_OVER_BLUE, abs=2e-3)


def test_appearance_takes_back_only_tracks_lost_within_appearance_s():
    """A track kept longer for another reason (edge re-identification's ``reid_s``) is not
    reclaimed by its looks after ``appearance_s``: gone 4 s, it comes back in mid-frame."""
    params = TrackerParams(appearance_s=3.0, reid_s=10.0)
    mid = (300, 200, 340, 300)
    assert leave_and_return(ByteTracker(params), 2.0, RED_OVER_BLUE, mid)[0] == 1
    assert leave_and_return(ByteTracker(params), 4.0, RED_OVER_BLUE, mid)[0] != 1


def test_a_track_that_left_by_one_border_is_not_taken_at_another():
    """Red over blue leaves through the left border; the same look entering at the right
    border is a look-alike, not the object coming back (it comes back by the border it left
    by, and mid-frame after an occlusion: both still taken, above and below)."""
    right = (610, 200, 640, 300)
    assert 1 not in leave_and_return(ByteTracker(APPEARANCE), 1.5, RED_OVER_BLUE, right)
    assert leave_and_return(ByteTracker(APPEARANCE), 1.5, RED_OVER_BLUE)[0] == 1  # left again
    mid = (300, 200, 340, 300)
    assert leave_and_return(ByteTracker(APPEARANCE), 1.5, RED_OVER_BLUE, mid)[0] == 1


def at_distance(base: np.ndarray, other: np.ndarray, distance: float) -> np.ndarray:
    """A unit descriptor at this cosine distance from ``base`` (towards ``other``)."""
    v = base / np.linalg.norm(base)
    u = other - (other @ v) * v
    u /= np.linalg.norm(u)
    cos = 1.0 - distance
    return cos * v + np.sqrt(1.0 - cos**2) * u


def test_edge_reid_needs_the_looks_within_the_gate_not_the_appearance_distance():
    """Coming back at the border it left by, with its height and foot line, the object's look
    need only pass ``appearance_gate`` (0.3: the geometry agrees, as in the IoU stages); by
    its looks alone it needs ``appearance_dist`` (0.2)."""
    back = (0, 200, 30, 300)
    near = at_distance(RED_OVER_BLUE, GREEN_OVER_GREY, 0.25)
    assert appearance_distance(RED_OVER_BLUE[None] / np.linalg.norm(RED_OVER_BLUE), near[None])[
        0, 0
    ] == pytest.approx(0.25)
    both = TrackerParams(reid_s=3.0, appearance_s=3.0)
    assert leave_and_return(ByteTracker(both), 1.5, near, back)[0] == 1
    assert 1 not in leave_and_return(ByteTracker(APPEARANCE), 1.5, near, back)  # looks alone
    far = at_distance(RED_OVER_BLUE, GREEN_OVER_GREY, 0.35)
    assert 1 not in leave_and_return(ByteTracker(both), 1.5, far, back)


def test_appearance_compares_the_height_with_the_tracks_smoothed_height():
    """An object whose last boxes were cut short (60 px of its 100, half behind something)
    comes back in full: 0.4 off the last box's height (more than ``appearance_size``) but
    within it of the track's smoothed height, so it is taken back; one of 40 px is not."""

    def returns_with(height: int) -> int:
        tracker = ByteTracker(APPEARANCE)
        for i in range(8):
            x = 100 + 10 * i
            update(tracker, [[x, 200, x + 40, 300]], i / 10, [RED_OVER_BLUE])
        for i in range(8, 10):
            x = 100 + 10 * i
            update(tracker, [[x, 240, x + 40, 300]], i / 10, [RED_OVER_BLUE])
        for k in range(1, 15):
            update(tracker, [], 0.9 + k / 10)
        out = update(tracker, [[400, 300 - height, 440, 300]], 2.4, [RED_OVER_BLUE])
        return int(out.track_ids[0])

    assert returns_with(100) == 1
    assert returns_with(40) != 1


def hide_and_reappear(params: TrackerParams, back_x: float) -> int:
    """An object (red over blue, 100 px high) walks right across mid-frame at 100 px/s, is
    hidden for 1 s, and a box of its look appears with its centre at ``back_x``; its id."""
    tracker = ByteTracker(params)
    for i in range(10):
        x = 200 + 10 * i
        update(tracker, [[x, 150, x + 40, 250]], i / 10, [RED_OVER_BLUE])
    for k in range(1, 10):
        update(tracker, [], 0.9 + k / 10)
    out = update(tracker, [[back_x - 20, 150, back_x + 20, 250]], 1.9, [RED_OVER_BLUE])
    return int(out.track_ids[0])


def test_a_look_alike_farther_than_the_object_can_have_got_does_not_take_the_id():
    # last seen at x 310 going right; 1 s later it can be about 100 px on (predicted ~ 410),
    # reach 1 x (100 px + 200 px/s (2 heights a second) x 1 s) = 300 px around that
    assert hide_and_reappear(APPEARANCE, 420) == 1  # where it would be
    assert hide_and_reappear(APPEARANCE, 150) == 1  # back the way it came, within reach
    assert hide_and_reappear(APPEARANCE, 60) == 2  # 350 px behind where it would be
    assert hide_and_reappear(ANYWHERE, 60) == 1  # 0: anywhere in the frame, as before


def walk_then_return(steps, back_box, gone_s=1.5, params=APPEARANCE) -> int:
    """An object (red over blue) in ``steps`` boxes, one a frame (10 frames/s), unseen for
    ``gone_s`` s, then a box of its look at ``back_box``; that box's id (1: the object's)."""
    tracker = ByteTracker(params)
    for i, box in enumerate(steps):
        update(tracker, [box], i / 10, [RED_OVER_BLUE])
    t = (len(steps) - 1) / 10
    for k in range(1, round(gone_s * 10)):
        update(tracker, [], t + k / 10)
    return int(update(tracker, [back_box], t + gone_s, [RED_OVER_BLUE]).track_ids[0])


def test_an_object_that_left_is_looked_for_where_it_left_not_where_it_would_be():
    # it left through the left border at 200 px/s 1.5 s ago: predicted some 300 px outside
    # the frame, but it comes back through that border, the other way; reach 100 + 200 x 1.5
    left = [[300 - 20 * i, 200, 340 - 20 * i, 300] for i in range(16)]
    back_in = [250, 200, 290, 300]  # 250 px in from where it left (550 from the prediction)
    assert walk_then_return(left, back_in) == 1
    far = [450, 200, 490, 300]  # 450 px in: out of reach
    assert walk_then_return(left, far) != 1
    assert walk_then_return(left, far, params=ANYWHERE) == 1


def test_a_box_cut_short_by_the_border_does_not_shrink_the_reach():
    # a person 100 px high walks down out of the bottom border, its last box 10 px high (and
    # its centre slowed down as the box shrank); 1.5 s later it comes back 120 px along
    down = [[300, y, 340, min(y + 100, 360)] for y in range(150, 360, 10)]
    assert walk_then_return(down, [420, 350, 460, 360]) == 1


def test_a_fast_object_is_looked_for_as_far_as_its_speed_takes_it():
    # 400 px/s (4 heights a second) across mid-frame, hidden 1 s, seen again only 50 px on
    # (it slowed down behind something): 350 px short of its predicted centre, within
    # 100 + 400 x 1 but not within 100 + 2 heights a second x 1
    fast = [[100 + 40 * i, 150, 140 + 40 * i, 250] for i in range(10)]
    assert walk_then_return(fast, [510, 150, 550, 250], gone_s=1.0) == 1
