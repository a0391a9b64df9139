from __future__ import annotations

import numpy as np

from visionflow.scenes.metrics import (
    Scored,
    Truth,
    average_precision,
    iou,
    match_frame,
    mean_average_precision,
    precision_recall,
)


def test_iou_known_values():
    assert iou((0, 0, 10, 10), (0, 0, 10, 10)) == 1.0
    assert iou((0, 0, 10, 10), (5, 0, 15, 10)) == 50 / 150
    assert iou((0, 0, 1, 1), (2, 2, 3, 3)) == 0.0


def test_matching_counts_duplicates_and_ignores():
    truths = [Truth(0, (0, 0, 10, 10)), Truth(0, (50, 50, 60, 60), ignore=True)]
    preds = [
        Scored(0, 0.9, (0, 0, 10, 10)),
        Scored(0, 0.8, (0, 0, 10, 10)),
        Scored(0, 0.7, (50, 50, 60, 60)),
        Scored(1, 0.6, (0, 0, 10, 10)),
    ]
    matched, positives = match_frame(preds, truths)
    assert positives == 1
    assert [ok for _, ok in matched] == [True, False, False]  # dup, wrong class; ignore skipped
    pr = precision_recall([(preds, truths)])
    assert (pr.tp, pr.fp, pr.positives) == (1, 2, 1)


def test_perfect_detector_has_map_one_and_ap_of_a_known_curve():
    truths = [Truth(0, (0, 0, 10, 10)), Truth(1, (20, 20, 30, 30))]
    preds = [Scored(0, 0.9, (0, 0, 10, 10)), Scored(1, 0.8, (20, 20, 30, 30))]
    assert mean_average_precision([(preds, truths)], 2)[0] == 1.0
    ap = average_precision(np.array([0.5, 0.5, 1.0]), np.array([1.0, 0.5, 2 / 3]))
    assert abs(ap - (0.5 * 1.0 + 0.5 * 2 / 3)) < 1e-9
