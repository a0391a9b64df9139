"""Detector output decoding and class-aware NMS, shared by every backend.

One image's raw output comes in one of two layouts (:mod:`visionflow.pipeline.layouts`):

* ``anchors`` ``[4 + C, A]`` (YOLOv8/YOLO11): for each of ``A`` anchors the box centre, width
  and height in network-input pixels, then ``C`` class scores (already sigmoid).  Decoded as
  Ultralytics' ``non_max_suppression`` does (``ultralytics/utils/nms.py``; default arguments:
  best class only, class-aware, not agnostic): keep anchors whose best class score is
  ``> conf_threshold``, keep the ``max_nms`` (30000) best of those, one greedy NMS over boxes
  offset by ``class_id * 7680`` (Ultralytics' ``max_wh``) keeping boxes with IoU
  ``<= iou_threshold``, then the ``max_detections`` best.  Tested against a transcription of
  that function (``tests/unit/pipeline/test_ultralytics_reference.py``).
* ``end2end`` ``[K, 6]`` (YOLOv10/YOLO26): rows ``x1, y1, x2, y2, score, class_id`` already
  suppressed by the model; rows with ``score > conf_threshold`` are kept in the model's order,
  at most ``max_detections``, with no NMS (Ultralytics' end-to-end branch).

Boxes go back to frame pixels with :func:`~visionflow.pipeline.letterbox.unletterbox_boxes`.
Relation to Ultralytics: :func:`~visionflow.pipeline.letterbox.letterbox_geometry` gives the
same scaled size and padding as Ultralytics' ``LetterBox(auto=False, center=True)``
(``new_unpad = round(side * r)``, ``left = round(dw / 2 - 0.1)``, ``top = round(dh / 2 - 0.1)``
with ``dw``, ``dh`` the integer padding: for even ``dw`` that is ``dw // 2``, for odd
``dw = 2k + 1`` it is ``round(k + 0.4) = k = dw // 2``, which is visionflow's ``pad_x``).
``unletterbox_boxes`` then equals ``scale_boxes(..., ratio_pad=((gain, gain), (pad_x, pad_y)))``
followed by ``clip_boxes``: the padding that was really applied.  ``scale_boxes`` without
``ratio_pad`` (Ultralytics' predictor) recomputes the padding from the *unrounded* scaled size,
``round((W - w0 * gain) / 2 - 0.1)``, which is 1 px off its own letterbox for about 15% of
frame sizes; visionflow does not copy that.  Both are tested.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from visionflow.pipeline.frames import Detection, Letterbox
from visionflow.pipeline.layouts import END_TO_END_COLUMNS, OutputLayout
from visionflow.pipeline.letterbox import unletterbox_boxes

Decoded = tuple[npt.NDArray[np.float32], npt.NDArray[np.float32], npt.NDArray[np.intp]]

MAX_NMS = 30000  # Ultralytics' max_nms: candidates past this many (by score) are dropped
MAX_WH = 7680.0  # Ultralytics' max_wh: class offset, so boxes of two classes never overlap


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


def _empty() -> Decoded:
    return np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros(0, np.intp)


def _class_offset(boxes: npt.NDArray[np.float32]) -> float:
    """Ultralytics' ``max_wh``, or more when the boxes span more (inputs over 7680 px)."""
    span = float(boxes.max() - boxes.min()) + 1.0 if boxes.size else 0.0
    return max(MAX_WH, span)


def decode_anchors(
    output: npt.NDArray[np.float32],
    conf_threshold: float,
    iou_threshold: float,
    max_detections: int,
    max_nms: int = MAX_NMS,
) -> Decoded:
    """One image's ``[4 + C, A]`` output -> (xyxy boxes, scores, class ids) after NMS."""
    if output.ndim != 2 or output.shape[0] <= 4:
        raise ValueError(f"expected an anchors output [4+C, A], got shape {output.shape}")
    class_scores = output[4:]
    class_ids = np.argmax(class_scores, axis=0)
    scores = class_scores[class_ids, np.arange(class_scores.shape[1])]
    candidates = np.flatnonzero(scores > conf_threshold)
    if not candidates.size:
        return _empty()
    if candidates.size > max_nms:
        best = np.argsort(-scores[candidates], kind="stable")[:max_nms]
        candidates = candidates[best]
    boxes = cxcywh_to_xyxy(output[:4, candidates].T.astype(np.float32))
    scores, class_ids = scores[candidates].astype(np.float32), class_ids[candidates]
    offset = np.float32(_class_offset(boxes))
    shifted = boxes + (class_ids.astype(np.float32) * offset)[:, None]
    keep = nms(shifted, scores, iou_threshold)[:max_detections]
    return boxes[keep], scores[keep], class_ids[keep].astype(np.intp)


def decode_end_to_end(
    output: npt.NDArray[np.float32], conf_threshold: float, max_detections: int
) -> Decoded:
    """One image's ``[K, 6]`` NMS-free output -> rows with ``score > conf_threshold``, in the
    model's order, at most ``max_detections`` (no NMS: the model already did it)."""
    if output.ndim != 2 or output.shape[1] != END_TO_END_COLUMNS:
        raise ValueError(f"expected an end2end output [K, 6], got shape {output.shape}")
    rows = output[output[:, 4] > conf_threshold][:max_detections]
    return (
        rows[:, :4].astype(np.float32),
        rows[:, 4].astype(np.float32),
        np.rint(rows[:, 5]).astype(np.intp),
    )


def decode_output(
    output: npt.NDArray[np.float32],
    conf_threshold: float,
    iou_threshold: float,
    max_detections: int,
    layout: OutputLayout = OutputLayout.ANCHORS,
) -> Decoded:
    """One image's output (``[4 + C, A]`` or ``[K, 6]`` per ``layout``) -> (xyxy boxes in
    network-input pixels, scores, class ids), best first for ``anchors``."""
    if layout is OutputLayout.END_TO_END:
        return decode_end_to_end(output, conf_threshold, max_detections)
    return decode_anchors(output, conf_threshold, iou_threshold, max_detections)


def detections_for_frame(
    output: npt.NDArray[np.float32],
    letterbox: Letterbox,
    class_names: Sequence[str],
    conf_threshold: float,
    iou_threshold: float,
    max_detections: int,
    layout: OutputLayout = OutputLayout.ANCHORS,
) -> tuple[Detection, ...]:
    """Decode one image's output and map its boxes back onto the original frame."""
    decoded = decode_output(output, conf_threshold, iou_threshold, max_detections, layout)
    return to_detections(decoded, letterbox, class_names)


def to_detections(
    decoded: Decoded,
    letterbox: Letterbox,
    class_names: Sequence[str],
    appearance: Sequence[bytes | None] | None = None,
) -> tuple[Detection, ...]:
    """Decoded boxes in network-input pixels -> :class:`Detection` in frame pixels;
    ``appearance``, when given, one descriptor (or None) per decoded box
    (:mod:`visionflow.pipeline.appearance`)."""
    boxes, scores, class_ids = decoded
    if not len(boxes):  # most frames of most cameras: skip ~20 us of numpy on nothing
        return ()
    boxes = unletterbox_boxes(boxes, letterbox)
    looks = appearance if appearance is not None else [None] * len(boxes)
    return tuple(
        Detection(
            class_id=int(c),
            label=class_names[c] if c < len(class_names) else f"class_{c}",
            score=round(float(s), 4),
            x1=round(float(b[0]), 1),
            y1=round(float(b[1]), 1),
            x2=round(float(b[2]), 1),
            y2=round(float(b[3]), 1),
            appearance=a,
        )
        for b, s, c, a in zip(boxes, scores, class_ids, looks, strict=True)
        if b[2] > b[0] and b[3] > b[1]
    )
