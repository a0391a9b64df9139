"""Telling the output layouts apart from a shape, and rejecting the rest at start-up."""

from __future__ import annotations

import pytest

from visionflow.errors import ModelError
from visionflow.pipeline.layouts import OutputLayout, anchors_num_classes, detect_layout


@pytest.mark.parametrize(
    ("shape", "layout"),
    [
        ((1, 84, 8400), OutputLayout.ANCHORS),  # YOLOv8n COCO, 640x640
        ((8, 7, 2100), OutputLayout.ANCHORS),  # the demo detector, 320x320
        ((1, 5, 21), OutputLayout.ANCHORS),  # one class, 32x32: the fewest anchors there are
        ((1, 300, 6), OutputLayout.END_TO_END),  # YOLOv10 / YOLO26 default export
        ((4, 100, 6), OutputLayout.END_TO_END),  # max_det=100
        ((1, 1, 6), OutputLayout.END_TO_END),
    ],
)
def test_auto_reads_the_layout_from_the_dims(shape, layout):
    assert detect_layout(shape) is layout
    assert detect_layout(shape, "auto") is layout


def test_end_to_end_300_rows_is_not_296_classes_and_not_2():
    assert detect_layout((1, 300, 6)) is OutputLayout.END_TO_END
    assert anchors_num_classes((1, 84, 8400)) == 80


def test_the_one_shape_both_layouts_fit_is_end2end_unless_forced():
    # [N, 6, 6]: 2 classes x 6 anchors, or 6 detections.  No anchors head has 6 anchors.
    assert detect_layout((1, 6, 6)) is OutputLayout.END_TO_END
    assert detect_layout((1, 6, 6), OutputLayout.ANCHORS) is OutputLayout.ANCHORS
    assert detect_layout((1, 6, 6), "end2end") is OutputLayout.END_TO_END


def test_an_override_is_checked_against_the_shape():
    with pytest.raises(ModelError, match="output_layout is end2end but the last dim is not 6"):
        detect_layout((1, 84, 8400), "end2end")
    with pytest.raises(ModelError, match="output_layout is anchors"):
        detect_layout((1, 3, 6), "anchors")
    assert detect_layout((1, 84, 8400), "anchors") is OutputLayout.ANCHORS


@pytest.mark.parametrize(
    ("shape", "why"),
    [
        ((1, 84), "rank 2, expected 3"),
        ((1, 84, 80, 80), "rank 4, expected 3"),
        ((1, 4, 8400), "neither dim 1 = 4 \\+ classes nor last dim = 6"),
        ((1, "anchors", 6), "not fixed numbers"),
    ],
)
def test_other_shapes_are_rejected_naming_the_shape_and_the_supported_layouts(shape, why):
    with pytest.raises(ModelError, match=why) as info:
        detect_layout(shape)
    message = str(info.value)
    assert str(list(shape)) in message
    assert "anchors [N, 4+C, A]" in message and "end2end [N, K, 6]" in message


def test_an_unknown_override_is_not_taken_for_auto():
    with pytest.raises(ValueError, match="nms"):
        detect_layout((1, 84, 8400), "nms")
