from __future__ import annotations

import numpy as np
import pytest

from visionflow.pipeline.letterbox import letterbox_geometry
from visionflow.pipeline.postprocess import decode_output, detections_for_frame, nms


def output(anchors: list[tuple[float, float, float, float, list[float]]]) -> np.ndarray:
    """[4 + C, A] from (cx, cy, w, h, class scores) per anchor."""
    return np.array([[*a[:4], *a[4]] for a in anchors], np.float32).T


def test_decode_keeps_best_and_suppresses_same_class_overlap():
    out = output(
        [
            (50, 50, 20, 20, [0.9, 0.1]),  # kept
            (52, 50, 20, 20, [0.8, 0.0]),  # same class, IoU 0.82 -> suppressed
            (51, 50, 20, 20, [0.0, 0.7]),  # other class, same place -> kept (class-aware)
            (200, 200, 10, 10, [0.2, 0.1]),  # below threshold
        ]
    )
    boxes, scores, classes = decode_output(out, 0.25, 0.5, 100)
    assert classes.tolist() == [0, 1]
    np.testing.assert_allclose(scores, [0.9, 0.7], atol=1e-6)
    np.testing.assert_allclose(boxes[0], [40, 40, 60, 60])


def test_max_detections_and_empty():
    out = output([(i * 30 + 15, 15, 10, 10, [0.5 + i / 100]) for i in range(10)])
    assert len(decode_output(out, 0.1, 0.5, 3)[0]) == 3
    assert len(decode_output(output([(1, 1, 1, 1, [0.01])]), 0.5, 0.5, 10)[0]) == 0
    with pytest.raises(ValueError):
        decode_output(np.zeros((3, 5), np.float32), 0.1, 0.5, 1)


def test_nms_known_answer():
    boxes = np.array([[0, 0, 10, 10], [1, 0, 11, 10], [20, 20, 30, 30], [0, 0, 10, 9]], np.float32)
    scores = np.array([0.9, 0.8, 0.7, 0.95], np.float32)
    assert nms(boxes, scores, 0.5).tolist() == [3, 2]


def test_detections_are_in_frame_pixels():
    lb = letterbox_geometry(1280, 720, 640, 640)  # scale 0.5, pad_y 140
    out = output([(320, 320, 100, 50, [0.1, 0.95])])
    (det,) = detections_for_frame(out, lb, ["a", "b"], 0.25, 0.5, 10)
    assert det.label == "b" and det.class_id == 1
    assert (det.x1, det.y1, det.x2, det.y2) == (540.0, 310.0, 740.0, 410.0)
