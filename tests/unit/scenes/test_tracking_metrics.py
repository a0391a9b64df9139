from __future__ import annotations

import itertools
from collections import Counter

from visionflow.scenes.generator import SceneGenerator, SceneSpec, TruthBox
from visionflow.scenes.tracking_metrics import (
    Predicted,
    fair_count_diff,
    score_tracks,
    truth_counts,
)
from visionflow.tracking.config import TrackingConfig


def frames(seconds=8, fps=10, kind="crossing"):
    gen = SceneGenerator(SceneSpec(320, 180, fps=fps, seed=4, kind=kind), horizon_s=seconds + 1)
    return [gen.truth(i) for i in range(seconds * fps)]


def as_predicted(truth, shift=0):
    return [Predicted(t.object_id + shift, t.class_id, (t.x1, t.y1, t.x2, t.y2)) for t in truth]


def test_truth_as_tracks_scores_perfect_and_switched_ids_do_not():
    scene = frames()
    perfect = score_tracks((t, as_predicted(t)) for t in scene)
    assert perfect.idf1 == 1.0 and perfect.switches == 0 and perfect.objects > 3
    switched = score_tracks((t, as_predicted(t, 1000 * (i >= 40))) for i, t in enumerate(scene))
    assert switched.switches >= 2 and switched.idf1 < 0.9


def test_reenter_scenes_bring_objects_back_with_their_identity():
    scene = frames(20, kind="reenter")
    seen_at = {}
    for i, truth in enumerate(scene):
        for t in truth:
            seen_at.setdefault(t.object_id, []).append(i)
    gaps = [max(b - a for a, b in itertools.pairwise(v)) for v in seen_at.values() if len(v) > 1]
    assert any(g > 1 for g in gaps), "some object leaves and comes back"


def box(obj, x, y=150.0, w=20.0, label="car", visible=1.0):
    return TruthBox(obj, 1, label, x - w / 2, y - 40, x + w / 2, y, visible)


def test_truth_counts_lines_with_direction_and_zones_with_enter_exit():
    config = TrackingConfig.model_validate(
        {
            "zones": [{"id": "z", "points": [[0.75, 0], [1, 0], [1, 1], [0.75, 1]]}],
            "lines": [{"id": "l", "start": [0.5, 0], "end": [0.5, 1]}],
        }
    )
    path = [(i, 1e9 + i / 10, [box(1, 20 + 20 * i), box(2, 300 - 20 * i)]) for i in range(15)]
    counts = truth_counts(path, config, 320, 180, 10)
    assert counts[("car", "line:l:out")] == 1 and counts[("car", "line:l:in")] == 1
    assert counts[("car", "zone:z:enter")] == 2  # 1 walks in, 2 starts inside
    assert counts[("car", "zone:z:exit")] == 1  # 2 walks out; 1 is still inside


def test_truth_puts_an_object_cut_by_the_frames_bottom_in_a_zone_drawn_to_it():
    """As the analytics do (the anchor in the frame's last row of pixels): walking along the
    frame's bottom edge through the zone is one visit, not none."""
    config = TrackingConfig.model_validate(
        {"zones": [{"id": "z", "points": [[0.5, 0.5], [0.75, 0.5], [0.75, 1], [0.5, 1]]}]}
    )
    walk = [(i, 1e9 + i / 10, [box(1, 20 * i, y=180.0)]) for i in range(16)]
    counts = truth_counts(walk, config, 320, 180, 10)
    assert counts[("car", "zone:z:enter")] == 1 and counts[("car", "zone:z:exit")] == 1


def test_visible_only_leaves_out_events_of_objects_hidden_then_and_the_frame_before():
    config = TrackingConfig.model_validate(
        {"lines": [{"id": "l", "start": [0.5, 0], "end": [0.5, 1]}]}
    )

    def crossing(visible_at):  # car 1 walks right over the line (x 160) between frames 7 and 8
        return [(i, 1e9 + i / 10, [box(1, 20 + 20 * i, visible=visible_at(i))]) for i in range(15)]

    hidden = crossing(lambda i: 0.3 if 5 <= i <= 10 else 1.0)
    assert truth_counts(hidden, config, 320, 180, 10)[("car", "line:l:out")] == 1
    assert truth_counts(hidden, config, 320, 180, 10, visible_only=True)[("car", "line:l:out")] == 0
    just_hidden = crossing(lambda i: 0.3 if i == 8 else 1.0)  # seen well the frame before
    counts = truth_counts(just_hidden, config, 320, 180, 10, visible_only=True)
    assert counts[("car", "line:l:out")] == 1
    seen_then = crossing(lambda i: 0.3 if i in (6, 7) else 1.0)  # hidden before, seen at it
    counts = truth_counts(seen_then, config, 320, 180, 10, visible_only=True)
    assert counts[("car", "line:l:out")] == 1


def test_visible_only_forgets_an_objects_sightings_once_it_is_gone():
    """Seen well, gone longer than lost_track_s, back hidden inside the zone: its entry is
    one no camera could see (its old sightings do not count as "the frame before")."""
    config = TrackingConfig.model_validate(
        {"zones": [{"id": "z", "points": [[0.5, 0], [1, 0], [1, 1], [0.5, 1]]}]}
    )
    frames = [(0, 1e9, [box(1, 20)]), (30, 1e9 + 3, [box(1, 250, visible=0.3)])]
    assert truth_counts(frames, config, 320, 180, 10)[("car", "zone:z:enter")] == 1
    hidden = truth_counts(frames, config, 320, 180, 10, visible_only=True)
    assert hidden[("car", "zone:z:enter")] == 0


def test_fair_count_diff_owes_nothing_between_the_visible_and_full_counts():
    full, visible = Counter({("car", "a"): 5, ("car", "b"): 2}), Counter({("car", "a"): 3})
    keys = [("car", "a"), ("car", "b")]
    assert fair_count_diff(full, visible, Counter({("car", "a"): 4, ("car", "b"): 1}), keys) == 0
    assert fair_count_diff(full, visible, Counter({("car", "a"): 2, ("car", "b"): 3}), keys) == 2
    assert fair_count_diff(full, visible, Counter({("car", "a"): 7}), keys) == 2
