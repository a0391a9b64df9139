"""The one interface every inference backend implements.

A backend takes a preprocessed batch (``NCHW``, float in ``[0, 1]``, the network's input
size) and returns the detector's raw output ``[N, 4 + C, A]`` (YOLOv8/YOLO11 layout:
``cx, cy, w, h`` in input pixels, then ``C`` class scores, for ``A`` anchors).  Decoding,
NMS and mapping boxes back to the frame are shared by all backends
(:mod:`visionflow.pipeline.postprocess`), so one backend cannot drift from another.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

Detections = tuple[npt.NDArray[np.float32], npt.NDArray[np.float32], npt.NDArray[np.intp]]


@dataclass(frozen=True)
class EngineInfo:
    """What a loaded engine is, for status output and each Redis entry."""

    backend: str
    device: str
    input_width: int
    input_height: int
    input_dtype: str
    max_batch: int
    num_classes: int


@dataclass(frozen=True)
class Thresholds:
    """Post-processing thresholds."""

    conf: float
    iou: float
    max_detections: int


@dataclass(frozen=True)
class EngineCapabilities:
    """What a backend can take."""

    host_frames: bool = True
    device_frames: bool = False
    nms_in_engine: bool = False
    max_inflight: int = 1


class PendingBatch:
    """A submitted batch (done at once for synchronous backends)."""

    def __init__(self, detections: list[Detections]) -> None:
        self._detections = detections

    def done(self) -> bool:
        return True

    def result(self) -> list[Detections]:
        return self._detections


class Engine(abc.ABC):
    """An inference backend loaded with one model."""

    info: EngineInfo
    capabilities: EngineCapabilities = EngineCapabilities()

    def submit(self, frames: Sequence[Any], thresholds: Thresholds) -> PendingBatch:
        t = thresholds
        return PendingBatch(self.detect_frames(frames, t.conf, t.iou, t.max_detections))

    #: True when :meth:`detect_frames` takes device arrays (frames that stayed on the GPU).
    accepts_device_frames: bool = False

    @abc.abstractmethod
    def infer(self, batch: npt.NDArray[np.floating]) -> npt.NDArray[np.float32]:
        """Run the model on ``batch`` (``[N, 3, H, W]``) and return ``[N, 4 + C, A]``."""

    def detect(
        self,
        batch: npt.NDArray[np.floating],
        conf_threshold: float,
        iou_threshold: float,
        max_detections: int,
    ) -> list[Detections]:
        """Infer and decode: per image ``(xyxy boxes, scores, class ids)`` in input pixels.

        The default decodes on the CPU with :func:`~visionflow.pipeline.postprocess.decode_output`;
        GPU backends override it to run NMS on the device (same results, tested).
        """
        from visionflow.pipeline.postprocess import decode_output

        output = self.infer(batch)
        return [decode_output(o, conf_threshold, iou_threshold, max_detections) for o in output]

    def detect_images(
        self,
        images: npt.NDArray[np.uint8],
        conf_threshold: float,
        iou_threshold: float,
        max_detections: int,
    ) -> list[Detections]:
        """Like :meth:`detect` from letterboxed ``[N, H, W, 3]`` uint8 RGB images.

        GPU backends override this to upload uint8 (4x less than float32) and normalise on
        the device.
        """
        from visionflow.pipeline.letterbox import to_network_input

        batch = to_network_input(images, self.info.input_dtype)
        return self.detect(batch, conf_threshold, iou_threshold, max_detections)

    def host_buffer(self, max_batch: int) -> npt.NDArray[np.uint8]:
        """A ``[max_batch, H, W, 3]`` uint8 buffer to stack a batch in (GPU backends give
        pinned memory, so :meth:`detect_images` on it uploads without another copy)."""
        return np.empty((max_batch, self.info.input_height, self.info.input_width, 3), np.uint8)

    def detect_frames(
        self,
        frames: Sequence[Any],
        conf_threshold: float,
        iou_threshold: float,
        max_detections: int,
    ) -> list[Detections]:
        """Like :meth:`detect_images` from a list of ``[H, W, 3]`` frames, each a host array
        or, where :attr:`accepts_device_frames`, a device array (``__cuda_array_interface__``)."""
        if any(hasattr(f, "__cuda_array_interface__") for f in frames):
            raise TypeError(f"{self.info.backend} cannot read frames that are in GPU memory")
        images = np.stack([np.asarray(f) for f in frames])
        return self.detect_images(images, conf_threshold, iou_threshold, max_detections)

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release the engine's resources."""

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
