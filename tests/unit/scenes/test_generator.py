from __future__ import annotations

import numpy as np

from visionflow.scenes.clips import load_truth, write_clip
from visionflow.scenes.generator import CLASSES, SceneGenerator, SceneSpec


def test_frames_are_deterministic_and_random_access():
    a = SceneGenerator(SceneSpec(160, 96, seed=5), horizon_s=30)
    b = SceneGenerator(SceneSpec(160, 96, seed=5), horizon_s=30)
    fa, ta = a.render(123)
    _ = b.render(7)
    fb, tb = b.render(123)
    assert np.array_equal(fa, fb) and ta == tb
    fc, _ = SceneGenerator(SceneSpec(160, 96, seed=6), horizon_s=30).render(123)
    assert not np.array_equal(fa, fc)


def test_truth_lies_in_the_frame_and_objects_move():
    g = SceneGenerator(SceneSpec(320, 180, seed=2), horizon_s=60)
    seen_classes = set()
    for index in range(0, 1500, 50):
        frame, boxes = g.render(index)
        assert frame.shape == (180, 320, 3) and frame.dtype == np.uint8
        for box in boxes:
            assert 0 <= box.x1 < box.x2 <= 320 and 0 <= box.y1 < box.y2 <= 180
            assert 0 <= box.visible <= 1 and box.label == CLASSES[box.class_id]
            seen_classes.add(box.class_id)
    assert seen_classes == {0, 1, 2}
    first = {b.object_id: b for b in g.truth(300)}
    later = {b.object_id: b for b in g.truth(305)}
    common = set(first) & set(later)
    assert common and any(first[i].x1 != later[i].x1 for i in common)


def test_clip_round_trip_keeps_truth_by_frame(tmp_path):
    path = write_clip(SceneSpec(160, 96, fps=10, seed=3), tmp_path / "c.mp4", 1.0, "h264")
    truth = load_truth(path)
    assert sorted(truth) == list(range(10))
    assert truth[4] == SceneGenerator(SceneSpec(160, 96, fps=10, seed=3), horizon_s=2).truth(4)
