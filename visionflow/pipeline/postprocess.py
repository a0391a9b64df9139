"""YOLOv8/YOLO11 output decoding and class-aware NMS, shared by every backend.

The detector's raw output for one image is ``[4 + C, A]``: for each of ``A`` anchors the box
centre, width and height in network-input pixels, then ``C`` class scores (already sigmoid).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from visionflow.pipeline.frames import Detection, Letterbox
from visionflow.pipeline.letterbox import unletterbox_boxes

_CLASS_OFFSET = 8192.0  # larger than any input side: boxes of different classes never overlap


def cxcywh_to_xyxy(boxes: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    """``[K, 4]`` centre/size boxes -> corner boxes."""
    half = boxes[:, 2:4] / 2
    return np.concatenate([boxes[:, 0:2] - half, boxes[:, 0:2] + half], axis=1)


def box_iou(
    box: npt.NDArray[np.float32], boxes: npt.NDArray[np.float32]
) -> npt.NDArray[np.float32]:
    """IoU of one xyxy box with each of ``boxes``."""
    ix1 = np.maximum(box[0], boxes[:, 0])
    iy1 = np.maximum(box[1], boxes[:, 1])
    ix2 = np.minimum(box[2], boxes[:, 2])
    iy2 = np.minimum(box[3], boxes[:, 3])
    inter = np.clip(ix2 - ix1, 0, None) * np.clip(iy2 - iy1, 0, None)
    area = (box[2] - box[0]) * (box[3] - box[1])
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    union = area + areas - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-9), 0.0).astype(np.float32)


def nms(
    boxes: npt.NDArray[np.float32], scores: npt.NDArray[np.float32], iou_threshold: float
) -> npt.NDArray[np.intp]:
    """Greedy NMS; returns kept indices, best score first."""
    order = np.argsort(-scores, kind="stable")
    keep: list[int] = []
    while order.size:
        best = int(order[0])
        keep.append(best)
        if order.size == 1:
            break
        rest = order[1:]
        order = rest[box_iou(boxes[best], boxes[rest]) <= iou_threshold]
    return np.asarray(keep, dtype=np.intp)


def decode_output(
    output: npt.NDArray[np.float32],
    conf_threshold: float,
    iou_threshold: float,
    max_detections: int,
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32], npt.NDArray[np.intp]]:
    """One image's ``[4 + C, A]`` output -> (xyxy boxes, scores, class ids) after NMS."""
    if output.ndim != 2 or output.shape[0] <= 4:
        raise ValueError(f"expected [4+C, A] output, got shape {output.shape}")
    class_scores = output[4:]
    class_ids = np.argmax(class_scores, axis=0)
    scores = class_scores[class_ids, np.arange(class_scores.shape[1])]
    mask = scores > conf_threshold
    if not mask.any():
        empty = np.zeros((0, 4), np.float32)
        return empty, np.zeros(0, np.float32), np.zeros(0, np.intp)
    boxes = cxcywh_to_xyxy(output[:4, mask].T.astype(np.float32))
    scores, class_ids = scores[mask].astype(np.float32), class_ids[mask]
    shifted = boxes + (class_ids.astype(np.float32) * _CLASS_OFFSET)[:, None]
    keep = nms(shifted, scores, iou_threshold)[:max_detections]
    return boxes[keep], scores[keep], class_ids[keep].astype(np.intp)


def detections_for_frame(
    output: npt.NDArray[np.float32],
    letterbox: Letterbox,
    class_names: Sequence[str],
    conf_threshold: float,
    iou_threshold: float,
    max_detections: int,
) -> tuple[Detection, ...]:
    """Decode one image's output and map its boxes back onto the original frame."""
    decoded = decode_output(output, conf_threshold, iou_threshold, max_detections)
    return to_detections(decoded, letterbox, class_names)


def to_detections(
    decoded: tuple[npt.NDArray[np.float32], npt.NDArray[np.float32], npt.NDArray[np.intp]],
    letterbox: Letterbox,
    class_names: Sequence[str],
) -> tuple[Detection, ...]:
    """Decoded boxes in network-input pixels -> :class:`Detection` in frame pixels."""
    boxes, scores, class_ids = decoded
    boxes = unletterbox_boxes(boxes, letterbox)
    return tuple(
        Detection(
            class_id=int(c),
            label=class_names[c] if c < len(class_names) else f"class_{c}",
            score=round(float(s), 4),
            x1=round(float(b[0]), 1),
            y1=round(float(b[1]), 1),
            x2=round(float(b[2]), 1),
            y2=round(float(b[3]), 1),
        )
        for b, s, c in zip(boxes, scores, class_ids, strict=True)
        if b[2] > b[0] and b[3] > b[1]
    )
