"""Matching detections to ground truth: precision, recall and mAP@0.5."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

Box = tuple[float, float, float, float]


@dataclass(frozen=True)
class Scored:
    """A predicted box of one class with its score."""

    class_id: int
    score: float
    box: Box


@dataclass(frozen=True)
class Truth:
    """A truth box; ``ignore`` boxes neither count as misses nor make false positives."""

    class_id: int
    box: Box
    ignore: bool = False


def iou(a: Box, b: Box) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def match_frame(
    preds: Sequence[Scored], truths: Sequence[Truth], iou_threshold: float = 0.5
) -> tuple[list[tuple[Scored, bool]], int]:
    """Greedy match by score, same class only.

    Returns each prediction with whether it is a true positive (predictions that only match
    ignorable truth are left out) and the number of non-ignorable truths.
    """
    used = [False] * len(truths)
    out: list[tuple[Scored, bool]] = []
    for pred in sorted(preds, key=lambda p: -p.score):
        best, best_iou = -1, iou_threshold
        for i, truth in enumerate(truths):
            if used[i] or truth.class_id != pred.class_id:
                continue
            overlap = iou(pred.box, truth.box)
            if overlap >= best_iou and (best < 0 or not truth.ignore or truths[best].ignore):
                best, best_iou = i, overlap
        if best >= 0:
            used[best] = True
            if truths[best].ignore:
                continue
            out.append((pred, True))
        else:
            out.append((pred, False))
    return out, sum(1 for t in truths if not t.ignore)


@dataclass(frozen=True)
class PR:
    """Precision and recall at one score threshold."""

    tp: int
    fp: int
    positives: int

    @property
    def precision(self) -> float:
        return self.tp / (self.tp + self.fp) if self.tp + self.fp else 1.0

    @property
    def recall(self) -> float:
        return self.tp / self.positives if self.positives else 1.0


def precision_recall(
    frames: Sequence[tuple[Sequence[Scored], Sequence[Truth]]], iou_threshold: float = 0.5
) -> PR:
    """Precision/recall over many frames, every prediction counted."""
    tp = fp = positives = 0
    for preds, truths in frames:
        matched, n = match_frame(preds, truths, iou_threshold)
        tp += sum(1 for _, ok in matched if ok)
        fp += sum(1 for _, ok in matched if not ok)
        positives += n
    return PR(tp, fp, positives)


def average_precision(recall: npt.NDArray[np.float64], precision: npt.NDArray[np.float64]) -> float:
    """Area under the interpolated precision-recall curve (all-point, as in COCO/VOC2010+)."""
    r = np.concatenate([[0.0], recall, [1.0]])
    p = np.concatenate([[1.0], precision, [0.0]])
    p = np.maximum.accumulate(p[::-1])[::-1]
    steps = np.where(r[1:] != r[:-1])[0]
    return float(np.sum((r[steps + 1] - r[steps]) * p[steps + 1]))


def mean_average_precision(
    frames: Sequence[tuple[Sequence[Scored], Sequence[Truth]]],
    num_classes: int,
    iou_threshold: float = 0.5,
) -> tuple[float, list[float]]:
    """mAP@iou over classes that have truth; also returns each class's AP."""
    per_class: list[float] = []
    for cls in range(num_classes):
        hits: list[tuple[float, bool]] = []
        positives = 0
        for preds, truths in frames:
            matched, n = match_frame(
                [p for p in preds if p.class_id == cls],
                [t for t in truths if t.class_id == cls],
                iou_threshold,
            )
            hits.extend((p.score, ok) for p, ok in matched)
            positives += n
        if positives == 0:
            continue
        hits.sort(key=lambda h: -h[0])
        tp = np.cumsum([1.0 if ok else 0.0 for _, ok in hits])
        fp = np.cumsum([0.0 if ok else 1.0 for _, ok in hits])
        recall = tp / positives if len(hits) else np.zeros(0)
        precision = tp / np.maximum(tp + fp, 1e-9) if len(hits) else np.zeros(0)
        per_class.append(average_precision(recall, precision))
    return (float(np.mean(per_class)) if per_class else 0.0), per_class
