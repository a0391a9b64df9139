from __future__ import annotations

from visionflow.tracking.analytics import Frame, Seen, StreamAnalytics
from visionflow.tracking.config import TrackingConfig

W, H = 400, 200
ZONE = {"id": "door", "points": [[0.5, 0], [1, 0], [1, 1], [0.5, 1]]}  # the right half
LINE = {"id": "mid", "start": [0.5, 0], "end": [0.5, 1]}  # top -> bottom: 'in' is right -> left


def run(config, path, label="person", t0=1_000_000_020.0, fps=10, track_id=7):
    """Feed one object whose anchor (feet) follows ``path`` [(x, y), ...]; collect output."""
    analytics = StreamAnalytics(TrackingConfig.model_validate(config), W, H)
    events, counts = [], []
    for i, (x, y) in enumerate(path):
        seen = [Seen(track_id, label, (x - 10, y - 40, x + 10, y))]
        born = [track_id] if i == 0 else []
        ev, co = analytics.step(Frame(i, t0 + i / fps, i / fps, seen, born))
        events += ev
        counts += co
    return events, counts


def test_walking_right_through_the_zone_enters_then_exits_with_its_dwell():
    events, counts = run({"zones": [ZONE]}, [(20 * i, 100) for i in range(20)])
    assert [(e.kind, e.zone, e.seq) for e in events] == [
        ("enter", "door", 10)
    ]  # x 200: on the edge counts as in
    back = [(380 - 20 * i, 100) for i in range(20)]
    events, _ = run({"zones": [ZONE]}, back)
    kinds = [(e.kind, e.seq, e.dwell_s) for e in events]
    assert kinds == [("enter", 0, None), ("exit", 10, 1.0)], kinds
    assert ("person", "tracks") in counts and ("person", "zone:door:enter") in counts


def test_a_box_cut_by_the_frames_bottom_edge_is_in_a_zone_drawn_to_that_edge():
    # feet on the frame's bottom edge (y = H: in no pixel) or a pixel above it, flickering:
    # the zone reaches the frame's bottom, so the object is in it throughout, one visit
    walk = [(300, H if i % 2 else H - 1) for i in range(10)]
    events, counts = run({"zones": [ZONE]}, walk)
    assert [(e.kind, e.seq) for e in events] == [("enter", 0)]
    assert counts.count(("person", "zone:door:enter")) == 1
    # a zone that stops short of the frame's edge does not take in what is cut by it
    short = {"id": "upper", "points": [[0.5, 0], [1, 0], [1, 0.99], [0.5, 0.99]]}
    assert run({"zones": [short]}, [(300, H)] * 5)[0] == []


def test_the_anchor_is_moved_inside_the_frame_only_past_its_bottom_or_right_edge():
    from visionflow.tracking.geometry import anchor_of

    assert anchor_of((10, 20, 30, 200), True, (W, H)) == (20, H - 0.5)  # cut by the bottom
    assert anchor_of((10, 20, 30, 199), True, (W, H)) == (20, 199)  # inside: untouched
    assert anchor_of((380, 20, 400, 60), False, (W, H)) == (390, 40)
    assert anchor_of((395, 20, 420, 60), False, (W, H)) == (W - 0.5, 40)  # centre past the right


def test_min_dwell_ignores_a_flicker_on_the_edge_and_loiter_fires_once():
    config = {"zones": [{**ZONE, "min_dwell_s": 0.3, "loiter_s": 1.0}]}
    flicker = [(190, 100), (210, 100), (190, 100), (210, 100), (190, 100)] * 2
    events, _ = run(config, flicker)
    assert events == []
    stay = [(300, 100)] * 25
    events, _ = run(config, stay)
    assert [(e.kind, e.seq) for e in events] == [("enter", 3), ("loiter", 10)]
    assert events[1].dwell_s == 1.0


def test_line_crossings_have_a_direction_and_jitter_on_the_line_is_not_a_crossing():
    left_to_right = [(100 + 20 * i, 100) for i in range(12)]
    events, _ = run({"lines": [LINE]}, left_to_right)
    assert [(e.kind, e.line, e.direction) for e in events] == [("cross", "mid", "out")]
    events, _ = run({"lines": [LINE]}, list(reversed(left_to_right)))
    assert [e.direction for e in events] == ["in"]
    jitter = [(200 + (1 if i % 2 else -1), 100) for i in range(20)]  # within the margin
    assert run({"lines": [LINE]}, jitter)[0] == []


def test_passing_beside_a_short_line_is_no_crossing():
    short = {"id": "s", "start": [0.5, 0], "end": [0.5, 0.3]}
    events, _ = run({"lines": [short]}, [(100 + 20 * i, 150) for i in range(12)])
    assert events == []


def test_label_filters_and_unique_counts_per_bucket():
    config = {"lines": [{**LINE, "labels": ["car"]}]}
    back_and_forth = [(100 + 20 * i, 100) for i in range(12)] * 3
    assert run(config, back_and_forth, label="person")[0] == []
    events, counts = run(
        config,
        [(100 + 20 * i, 100) for i in range(12)]
        + [(100, 100)] * 2
        + [(100 + 20 * i, 100) for i in range(12)],
        label="car",
    )
    assert [e.direction for e in events] == ["out", "in", "out"]  # every crossing is an event
    assert counts.count(("car", "line:mid:out")) == 1  # ... one track counted once a bucket
    assert counts.count(("car", "line:mid:in")) == 1


def test_a_removed_track_inside_a_zone_exits_and_close_ends_every_presence():
    analytics = StreamAnalytics(TrackingConfig.model_validate({"zones": [ZONE]}), W, H)
    inside = [Seen(1, "car", (290, 60, 310, 100)), Seen(2, "car", (290, 60, 310, 100))]
    analytics.step(Frame(0, 5.0, 0.0, inside, [1, 2]))
    events, counts = analytics.step(Frame(1, 5.1, 0.1, [inside[1]], [], removed=[1]))
    assert [(e.kind, e.track_id) for e in events] == [("exit", 1)]
    assert ("car", "zone:door:exit") in counts
    closed, closed_counts = analytics.close(Frame(2, 5.2, 0.2, []))
    assert [(e.kind, e.track_id) for e in closed] == [("exit", 2)]
    assert closed_counts == [("car", "zone:door:exit")]


def play(config, frames, removed, t0=1_000_000_020.0, fps=10):
    """Feed frames of [(track_id, x, y), ...] (anchor points, boxes 20x40 above them),
    ``removed``: seq -> ids the tracker gave up then; collect events and counts."""
    analytics = StreamAnalytics(TrackingConfig.model_validate(config), W, H)
    events, counts, known = [], [], set()
    for i, tracks in enumerate(frames):
        seen = [Seen(t, "person", (x - 10, y - 40, x + 10, y)) for t, x, y in tracks]
        born = [t for t, _, _ in tracks if t not in known]
        known.update(born)
        ev, co = analytics.step(Frame(i, t0 + i / fps, i / fps, seen, born, removed.get(i, [])))
        events += ev
        counts += co
    return events, counts, analytics


def test_an_id_given_up_and_re_identified_takes_its_line_side_back():
    # walks right across the line (x 200) while unseen (frames 4-13), given up at frame 12,
    # seen again with its old id (the tracker re-identified it) on the other side
    path = [[] if 4 <= i < 14 else [(1, 100 + 20 * i, 100)] for i in range(16)]
    for reid in ({"reid_s": 3.0}, {"appearance_s": 3.0}):
        events, counts, analytics = play({"lines": [LINE], **reid}, path, {12: [1]})
        assert [(e.kind, e.track_id, e.direction) for e in events] == [("cross", 1, "out")]
        assert counts.count(("person", "line:mid:out")) == 1
        assert analytics.lines[0].given_up == {}  # taken back
    # without re-identification a given-up id never comes back: nothing is kept for it
    _, _, analytics = play({"lines": [LINE]}, path[:13], {12: [1]})
    assert analytics.lines[0].given_up == {} and analytics.lines[0].sides == {}


def test_a_given_up_side_is_forgotten_once_its_id_cannot_come_back():
    path = [[(1, 100, 100)], [(1, 120, 100)]] + [[]] * 9 + [[(2, 300, 100)]] * 30
    _, _, analytics = play({"lines": [LINE], "reid_s": 2.0}, path, {10: [1]})
    assert analytics.lines[0].given_up == {}  # 2 s after it was given up
    _, _, analytics = play({"lines": [LINE], "reid_s": 2.0}, path[:25], {10: [1]})
    assert list(analytics.lines[0].given_up) == [1]


BAND = {"id": "band", "points": [[0.45, 0], [0.6, 0], [0.6, 1], [0.45, 1]]}  # x 180-240


def test_an_object_unseen_while_it_passes_through_a_zone_enters_and_exits_when_seen_beyond():
    # walks right at 200 px/s; last seen at x 160 (frame 3), seen again at x 300 (frame 10),
    # within lost_track_s (same track), or at x 380 (frame 14) with its id given back
    short_gap = [[] if 4 <= i < 10 else [(1, 100 + 20 * i, 100)] for i in range(12)]
    long_gap = [[] if 4 <= i < 14 else [(1, 100 + 20 * i, 100)] for i in range(16)]
    for config, path, removed, seen_again in (
        ({}, short_gap, {}, 10),
        ({"appearance_s": 3.0}, long_gap, {12: [1]}, 14),
    ):
        events, counts, _ = play({"zones": [BAND], **config}, path, removed)
        assert [(e.kind, e.zone, e.seq) for e in events] == [
            ("enter", "band", seen_again),
            ("exit", "band", seen_again),
        ], events
        assert abs(events[1].dwell_s - 0.3) < 0.05  # 60 px of the path at 200 px/s
        assert all(e.inferred for e in events)
        t0 = 1_000_000_020.0
        assert abs(events[0].ts - (t0 + 0.4)) < 0.05 and abs(events[1].ts - (t0 + 0.7)) < 0.05
        assert counts.count(("person", "zone:band:enter")) == 1
        assert counts.count(("person", "zone:band:exit")) == 1


def test_no_pass_through_beside_the_zone_for_a_new_id_or_shorter_than_min_dwell():
    beside = {"id": "b", "points": [[0.45, 0], [0.6, 0], [0.6, 0.3], [0.45, 0.3]]}  # y < 60
    gap = [[] if 4 <= i < 10 else [(1, 100 + 20 * i, 100)] for i in range(12)]
    assert play({"zones": [beside]}, gap, {})[0] == []
    new_id = [[(1, 100 + 20 * i, 100)] for i in range(4)] + [[]] * 6 + [[(2, 300, 100)]]
    assert play({"zones": [BAND]}, new_id, {})[0] == []  # another object: no path
    assert play({"zones": [{**BAND, "min_dwell_s": 0.5}]}, gap, {})[0] == []


def test_a_last_point_is_forgotten_once_the_id_cannot_come_back():
    # given up at frame 10 (lost_track_s 1 after frame 1): kept for 1 s + reid_s 2 s after
    # it was last seen, then nothing is left of it
    path = [[(1, 100, 100)], [(1, 120, 100)]] + [[]] * 9 + [[(2, 300, 100)]] * 30
    _, _, analytics = play({"zones": [BAND], "reid_s": 2.0}, path[:25], {10: [1]})
    assert set(analytics._last) == {1, 2}
    _, _, analytics = play({"zones": [BAND], "reid_s": 2.0}, path, {10: [1]})
    assert set(analytics._last) == {2}


INFER = {"lines": [LINE], "infer_unseen_s": 1.0}  # x 200; left to right is 'out'


def crossings(events):
    return [(e.track_id, e.direction, e.inferred, e.seq) for e in events if e.kind == "cross"]


WARM = [[(9, 380, 50)]] * 5  # 0.5 s with something else on screen before the object comes


def test_a_new_track_first_seen_beyond_a_line_crossed_it_unseen():
    # track 2 first seen at x 240 (frame 5) walking right at 200 px/s: looking back 1 s, it
    # was left of the line (x 200) 0.2 s before; walking left from x 160, right of it
    frames = WARM + [[(9, 380, 50), (2, 240 + 20 * i, 100)] for i in range(8)]
    events, counts, _ = play(INFER, frames, {})
    assert crossings(events) == [(2, "out", True, 10)]  # looked back after 0.5 s
    assert abs(events[0].ts - (1_000_000_020.0 + 0.5 - 0.2)) < 0.02
    assert counts.count(("person", "line:mid:out")) == 1
    leftwards = WARM + [[(9, 380, 50), (2, 160 - 20 * i, 100)] for i in range(8)]
    assert crossings(play(INFER, leftwards, {})[0]) == [(2, "in", True, 10)]
    assert play({"lines": [LINE]}, frames, {})[0] == []  # off by default
    at_border = WARM + [[(9, 380, 50), (2, 240 + 20 * i, 200)] for i in range(8)]
    assert play(INFER, at_border, {})[0] == []  # came in at the bottom: not through the line
    on_screen = [[(2, 240 + 20 * i, 100)] for i in range(8)]
    assert play(INFER, on_screen, {})[0] == []  # there when tracking began
    late_start = [[], *on_screen]  # ... also when the first frame had nothing in it: the
    assert play(INFER, late_start, {})[0] == []  # look back stops where tracking began
    flicker = WARM + [
        [(9, 380, 50)] + ([(2, 240 + 20 * i, 100)] if i in (0, 3, 6) else []) for i in range(8)
    ]
    assert play(INFER, flicker, {})[0] == []  # 3 sightings: no speed worth following
    slow_rate = WARM + [
        [(9, 380, 50)] + ([(2, 240 + 20 * i, 100)] if i % 3 == 0 else []) for i in range(12)
    ]  # 3.3 frames/s: its 4th sighting 0.9 s after the first
    assert crossings(play(INFER, slow_rate, {})[0]) == [(2, "out", True, 14)]


def test_a_track_lost_before_a_line_and_never_seen_again_crossed_it_unseen():
    # walks right to x 160, lost at frame 5, given up at frame 15 (lost_track_s 1), no
    # re-identification: its path ahead crosses the line at x 200 0.2 s after it was lost
    frames = [[(3, 60 + 20 * i, 100)] for i in range(6)] + [[]] * 24
    events, counts, _ = play(INFER, frames, {15: [3]})
    # decided 2 s after it was last seen (frame 5): infer_unseen_s + 1 s in which a crossing
    # seen under another id would still be known, past lost_track_s
    assert crossings(events) == [(3, "out", True, 26)]
    assert abs(events[0].ts - (1_000_000_020.0 + 0.5 + 0.2)) < 0.02
    assert counts == [("person", "tracks"), ("person", "line:mid:out")]
    leftwards = [[(3, 340 - 20 * i, 100)] for i in range(6)] + [[]] * 24
    assert crossings(play(INFER, leftwards, {15: [3]})[0]) == [(3, "in", True, 26)]
    at_top = [[(3, 60 + 20 * i, 40)] for i in range(6)] + [[]] * 24  # its box touches the top
    assert play(INFER, at_top, {15: [3]})[0] == []  # it may have left there
    # given up at frame 15, its id given back at frame 18 (reid_s): that crossing was seen
    back = [[(3, 60 + 20 * i, 100)] for i in range(6)] + [[]] * 12
    back += [[(3, 300 + 10 * i, 100)] for i in range(6)] + [[]] * 40
    events, _, _ = play({**INFER, "reid_s": 2.0}, back, {15: [3], 34: [3]})
    assert crossings(events) == [(3, "out", False, 18)]


def test_one_object_lost_before_the_line_and_found_beyond_it_counts_once():
    # track 3 lost at x 160 (frame 5); the same object found at x 260 under a new id (frame 8):
    # both paths cross the line, one crossing is counted
    frames = [[(3, 60 + 20 * i, 100)] for i in range(6)] + [[]] * 2
    frames += [[(4, 260 + 20 * i, 100)] for i in range(10)] + [[]] * 10
    events, counts, _ = play(INFER, frames, {15: [3], 28: [4]})
    assert [(t, d, inf) for t, d, inf, _ in crossings(events)] == [(4, "out", True)]
    assert counts.count(("person", "line:mid:out")) == 1
    # ... but a track seen beside it (the car it was hidden behind) is another object
    occluder = [[(7, 160 + 20 * i, 110)] for i in range(18)]
    both = [a + b for a, b in zip(frames, occluder + [[]] * 10, strict=True)]
    events, counts, _ = play(INFER, both, {15: [3], 28: [4]})
    assert [(t, inf) for t, _, inf, _ in crossings(events)] == [(7, False), (4, True)]
    assert counts.count(("person", "line:mid:out")) == 2


def test_an_object_seen_crossing_under_another_id_after_an_inferred_crossing_counts_once():
    # track 3 lost at x 130 (frame 3) walking right; its crossing is inferred at frame 24;
    # the same object, found as track 4 at x 150 (frame 25, it had waited hidden), is then
    # seen crossing (frame 28): an event, not a second count
    frames = [[(3, 70 + 20 * i, 100)] for i in range(4)] + [[]] * 21
    frames += [[(4, 150 + 20 * i, 100)] for i in range(8)] + [[]] * 30
    events, counts, _ = play(INFER, frames, {13: [3], 43: [4]})
    assert [(t, inf) for t, _, inf, _ in crossings(events)] == [(3, True), (4, False)]
    assert counts.count(("person", "line:mid:out")) == 1
    # found sooner (frame 12), it is seen crossing before the inference is decided: no
    # inferred crossing then (the hidden wait, 0.9 s, widens the 1 s window)
    sooner = [[(3, 70 + 20 * i, 100)] for i in range(4)] + [[]] * 8
    sooner += [[(4, 150 + 20 * i, 100)] for i in range(8)] + [[]] * 40
    events, counts, _ = play(INFER, sooner, {13: [3], 30: [4]})
    assert [(t, inf) for t, _, inf, _ in crossings(events)] == [(4, False)]
    assert counts.count(("person", "line:mid:out")) == 1


def test_no_passage_from_inside_from_a_border_by_a_jump_or_when_turned_off():
    # given up inside the band (x 200, frame 13: it exits then), its id given back at x 300
    inside = [[(1, 200, 100)] for _ in range(4)] + [[]] * 12 + [[(1, 300, 100)]] * 3
    events, _, _ = play({"zones": [BAND], "appearance_s": 3.0}, inside, {13: [1]})
    assert [(e.kind, e.inferred) for e in events] == [("enter", False), ("exit", False)]
    # walks left through a thin band by the left border (x 20-30) between two frames (a
    # passage), is last seen at x 15, its box at the border, and comes back at x 35: it may
    # have been outside the frame, not in the band, in between
    thin = {"id": "thin", "points": [[0.05, 0], [0.075, 0], [0.075, 1], [0.05, 1]]}
    out_and_back = [[(1, 75 - 20 * i, 100)] for i in range(4)] + [[]] * 20 + [[(1, 35, 100)]]
    events, _, _ = play({"zones": [thin], "reid_s": 3.0}, out_and_back, {})
    assert [(e.kind, e.seq) for e in events] == [("enter", 3), ("exit", 3)]
    # an id that jumps 300 px in a frame (another object): no path to read a passage from
    jump = [[(1, 80, 100)], [(1, 80, 100)], [(1, 380, 100)]]
    assert play({"zones": [BAND]}, jump, {})[0] == []
    gap = [[] if 4 <= i < 10 else [(1, 100 + 20 * i, 100)] for i in range(12)]
    assert play({"zones": [{**BAND, "passages": False}]}, gap, {})[0] == []
    assert [e.kind for e in play({"zones": [BAND]}, gap, {})[0]] == ["enter", "exit"]


def test_inference_keeps_to_the_lines_labels_and_forgets_what_it_no_longer_needs():
    cars_only = {**INFER, "lines": [{**LINE, "labels": ["car"]}]}
    frames = WARM + [[(9, 380, 50), (2, 240 + 20 * i, 100)] for i in range(8)]
    assert play(cars_only, frames, {})[0] == []  # a person: not this line's
    _, _, analytics = play(INFER, frames + [[]] * 60, {20: [2, 9]})
    unseen = analytics._unseen
    assert unseen is not None and not unseen.paths and not unseen.crossings
    assert not unseen.spans and not analytics.waiting
