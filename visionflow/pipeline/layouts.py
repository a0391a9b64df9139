"""The detector output layouts visionflow reads, and telling them apart from a shape.

Two layouts are supported (``N`` is the batch):

``anchors``  ``[N, 4+C, A]``  YOLOv8/YOLO11 (and the demo detector): for each of ``A``
             anchors the box centre, width and height in network-input pixels, then ``C``
             class scores; decoded with a class-aware NMS.
``end2end``  ``[N, K, 6]``    YOLOv10/YOLO26 default exports, NMS-free: ``K`` rows (often
             300) of ``x1, y1, x2, y2, score, class_id`` in network-input pixels, already
             suppressed; decoded by a score threshold only.

How a shape is read (:func:`detect_layout`, ``auto``):

* rank must be 3 with integer dims, else the model is rejected.
* last dim 6 -> ``end2end``.  This is Ultralytics' own rule (``prediction.shape[-1] == 6``
  in ``non_max_suppression``).  The one shape both layouts can take is ``[N, 6, 6]``
  (2 classes, 6 anchors, or 6 detections); it is read as ``end2end`` because an anchors
  head has at least 21 anchors (a 32x32 input at strides 8/16/32: 16 + 4 + 1), so an
  ``anchors`` output with ``A == 6`` does not occur.  ``model.output_layout: anchors``
  forces the other reading.
* otherwise dim 1 > 4 -> ``anchors`` with ``C = dim1 - 4``.
* anything else is rejected with a :class:`~visionflow.errors.ModelError` naming the
  supported layouts and the shape seen.

An ``end2end`` output does not carry the class count (``[N, 300, 6]`` is *not* 2 classes):
it comes from ``model.class_names``, the model's sidecar or its ONNX metadata
(:mod:`visionflow.models`).
"""

from __future__ import annotations

from collections.abc import Sequence
from enum import StrEnum

from visionflow.errors import ModelError

END_TO_END_COLUMNS = 6  # x1, y1, x2, y2, score, class_id


class OutputLayout(StrEnum):
    """How a detector's output tensor is laid out."""

    ANCHORS = "anchors"  # [N, 4+C, A]: cx, cy, w, h + C class scores per anchor, needs NMS
    END_TO_END = "end2end"  # [N, K, 6]: x1, y1, x2, y2, score, class_id, already NMSed


SUPPORTED_LAYOUTS = (
    "anchors [N, 4+C, A] (YOLOv8/YOLO11: cx, cy, w, h then C class scores per anchor) or "
    "end2end [N, K, 6] (YOLOv10/YOLO26 NMS-free: x1, y1, x2, y2, score, class_id per row)"
)


def _reject(shape: Sequence[object], why: str) -> ModelError:
    return ModelError(
        f"unsupported model output {list(shape)}: {why}; supported layouts: {SUPPORTED_LAYOUTS}"
    )


def _dims(shape: Sequence[object]) -> tuple[int, int]:
    """The two per-image dims of a batched output, or a :class:`ModelError`."""
    if len(shape) != 3:
        raise _reject(shape, f"rank {len(shape)}, expected 3")
    d1, d2 = shape[1], shape[2]
    if not isinstance(d1, int) or not isinstance(d2, int):
        raise _reject(shape, "its per-image dims are not fixed numbers")
    return d1, d2


def detect_layout(
    shape: Sequence[object], override: OutputLayout | str | None = None
) -> OutputLayout:
    """The layout of a batched output ``shape``; ``override`` ("anchors"/"end2end") forces one.

    ``None`` or ``"auto"`` reads it from the dims as described in this module's docstring.
    Raises :class:`~visionflow.errors.ModelError` when the shape fits no layout (or not the
    one forced).
    """
    d1, d2 = _dims(shape)
    fits_end2end = d2 == END_TO_END_COLUMNS and d1 >= 1
    fits_anchors = d1 > 4 and d2 >= 1
    wanted = None if override in (None, "auto") else OutputLayout(override)
    if wanted is OutputLayout.END_TO_END and not fits_end2end:
        raise _reject(shape, "model.output_layout is end2end but the last dim is not 6")
    if wanted is OutputLayout.ANCHORS and not fits_anchors:
        raise _reject(shape, "model.output_layout is anchors but dim 1 is not 4 + classes")
    if wanted is not None:
        return wanted
    if fits_end2end:
        return OutputLayout.END_TO_END
    if fits_anchors:
        return OutputLayout.ANCHORS
    raise _reject(shape, "neither dim 1 = 4 + classes nor last dim = 6")


def anchors_num_classes(shape: Sequence[object]) -> int:
    """``C`` of an ``anchors`` output ``[N, 4+C, A]``."""
    return _dims(shape)[0] - 4
