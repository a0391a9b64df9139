from __future__ import annotations

import numpy as np
import pytest

from visionflow.pipeline.layouts import OutputLayout
from visionflow.pipeline.letterbox import letterbox_geometry
from visionflow.pipeline.postprocess import decode_anchors, decode_output, detections_for_frame, nms


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


def end2end(rows: list[tuple[float, float, float, float, float, int]]) -> np.ndarray:
    """[K, 6] from (x1, y1, x2, y2, score, class_id) rows."""
    return np.array(rows, np.float32).reshape(-1, 6)


def test_end2end_rows_are_thresholded_in_model_order_and_never_suppressed():
    out = end2end(
        [
            (10, 10, 50, 50, 0.9, 2),
            (11, 10, 51, 50, 0.8, 2),  # same class, IoU ~0.95: the model kept it, so do we
            (0, 0, 5, 5, 0.25, 0),  # == threshold: dropped (strictly greater, as Ultralytics)
            (100, 100, 140, 160, 0.6, 79),
            (0, 0, 0, 0, 0.0, 0),  # padding row of a 300-row export
        ]
    )
    boxes, scores, classes = decode_output(out, 0.25, 0.5, 100, OutputLayout.END_TO_END)
    assert classes.tolist() == [2, 2, 79] and classes.dtype == np.intp
    np.testing.assert_allclose(scores, [0.9, 0.8, 0.6], atol=1e-6)
    np.testing.assert_array_equal(boxes[2], [100, 100, 140, 160])
    assert len(decode_output(out, 0.25, 0.5, 2, OutputLayout.END_TO_END)[0]) == 2
    assert len(decode_output(out, 0.95, 0.5, 9, OutputLayout.END_TO_END)[0]) == 0


def test_a_300_row_end2end_output_is_not_read_as_anchors_when_told_its_layout():
    out = np.zeros((300, 6), np.float32)
    out[0] = (20, 20, 60, 80, 0.7, 1)
    boxes, _, classes = decode_output(out, 0.25, 0.5, 300, OutputLayout.END_TO_END)
    assert classes.tolist() == [1] and boxes.tolist() == [[20, 20, 60, 80]]
    with pytest.raises(ValueError, match=r"end2end output \[K, 6\]"):
        decode_output(out.T, 0.25, 0.5, 300, OutputLayout.END_TO_END)


def test_end2end_detections_are_in_frame_pixels():
    lb = letterbox_geometry(1280, 720, 640, 640)  # scale 0.5, pad_y 140
    out = end2end([(270, 285, 370, 335, 0.9, 1)])
    (det,) = detections_for_frame(out, lb, ["a", "b"], 0.25, 0.5, 10, OutputLayout.END_TO_END)
    assert det.label == "b" and (det.x1, det.y1, det.x2, det.y2) == (540.0, 290.0, 740.0, 390.0)


def test_classes_stay_apart_even_when_boxes_span_more_than_the_class_offset():
    # Two classes, boxes spanning > 7680 px: a fixed offset would let class 0's wide box
    # overlap class 1's shifted box and suppress it.
    out = output([(4500, 4500, 9000, 9000, [0.9, 0.0]), (1000, 1000, 2000, 2000, [0.0, 0.8])])
    assert sorted(decode_output(out, 0.25, 0.01, 10)[2].tolist()) == [0, 1]


def test_max_nms_keeps_only_the_best_candidates_before_nms():
    out = output([(i * 30 + 15, 15, 10, 10, [0.3 + i / 100]) for i in range(10)])
    _, scores, _ = decode_anchors(out, 0.1, 0.5, 100, max_nms=4)
    np.testing.assert_allclose(scores, [0.39, 0.38, 0.37, 0.36], atol=1e-6)
