"""The one interface every inference backend implements: a batch of frames in, detections out.

A batch is a sequence of letterboxed ``[H, W, 3]`` uint8 RGB frames at the network's input
size, each a host numpy array or (where :attr:`EngineCapabilities.device_frames`) an object
with ``__cuda_array_interface__``.  :meth:`Engine.submit` starts a batch and returns a
:class:`PendingBatch`; :meth:`Engine.detect` is ``submit(...).result()``.  What a backend can
take and how many batches it keeps in flight are declared in :class:`EngineCapabilities`, so
the caller never has to know which backend it drives.

Contract for callers: never more than ``capabilities.max_inflight`` batches pending at once,
and ``result()`` called in submit order (engines raise :class:`~visionflow.errors.EngineError`
otherwise).  Engines own their staging buffers (one per in-flight slot) and stop referencing
the caller's frames once ``result()`` returns.  An engine is driven from one thread.

Backends that decode on the CPU share :func:`~visionflow.pipeline.postprocess.decode_output`
(:class:`SyncEngine`); GPU backends run their own NMS, tested against it.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, ConfigDict

from visionflow.errors import EngineError
from visionflow.pipeline.layouts import OutputLayout

Detections = tuple[npt.NDArray[np.float32], npt.NDArray[np.float32], npt.NDArray[np.intp]]
"""Per image: ``[K, 4]`` xyxy boxes in network-input pixels, ``[K]`` scores, ``[K]`` class
ids, best score first."""


class EngineConfigBase(BaseModel):
    """Base of every backend's config; each subclass narrows ``backend`` to a ``Literal`` key."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    backend: str

    def batches_at_once(self) -> int:
        """How many batches an engine of this config runs at once (its in-flight depth)."""
        return 1

    def load_timeout_s(self) -> float:
        """How long a worker may take to load an engine of this config before
        :meth:`~visionflow.workers.supervisor.Pipeline.wait_ready` gives up."""
        return 60.0


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
    """Post-processing settings of one batch."""

    conf: float
    iou: float
    max_detections: int

    def __post_init__(self) -> None:
        if not (0.0 <= self.conf <= 1.0 and 0.0 <= self.iou <= 1.0):
            raise ValueError(f"thresholds must be in [0, 1]: conf {self.conf}, iou {self.iou}")
        if self.max_detections < 1:
            raise ValueError(f"max_detections must be at least 1, got {self.max_detections}")


@dataclass(frozen=True)
class EngineCapabilities:
    """What a backend can take and do."""

    #: takes host (numpy) frames
    host_frames: bool = True
    #: takes frames in GPU memory (``__cuda_array_interface__``), read without a host copy
    device_frames: bool = False
    #: NMS runs inside the engine (only kept detections leave the device)
    nms_in_engine: bool = False
    #: how many batches :meth:`Engine.submit` may have pending at once
    max_inflight: int = 1

    def __post_init__(self) -> None:
        if self.max_inflight < 1:
            raise ValueError(f"max_inflight must be at least 1, got {self.max_inflight}")


@runtime_checkable
class PendingBatch(Protocol):
    """A submitted batch."""

    def result(self) -> list[Detections]:
        """Block until the batch is done; per frame :data:`Detections`.  May raise
        :class:`~visionflow.errors.EngineError`.  A second call returns the same list."""
        ...

    def done(self) -> bool:
        """True once :meth:`result` would not block (never blocks itself)."""
        ...


@dataclass(frozen=True)
class CompletedBatch:
    """A :class:`PendingBatch` that was finished when it was submitted (synchronous
    backends, empty batches)."""

    detections: tuple[Detections, ...]

    def result(self) -> list[Detections]:
        return list(self.detections)

    def done(self) -> bool:
        return True


def is_device_frame(frame: object) -> bool:
    """True for frames in GPU memory (objects with ``__cuda_array_interface__``)."""
    return hasattr(frame, "__cuda_array_interface__")


class Engine(abc.ABC):
    """An inference backend loaded with one model."""

    info: EngineInfo
    capabilities: EngineCapabilities = EngineCapabilities()

    @abc.abstractmethod
    def infer(self, batch: npt.NDArray[np.floating]) -> npt.NDArray[np.float32]:
        """The raw hook: run the model on ``batch`` (``[N, 3, H, W]``, float in ``[0, 1]``)
        and return ``[N, 4 + C, A]`` on the host (synchronous; not for the hot path)."""

    @abc.abstractmethod
    def submit(self, frames: Sequence[Any], thresholds: Thresholds) -> PendingBatch:
        """Start a batch of letterboxed ``[H, W, 3]`` uint8 RGB frames (see the module doc).

        Frames are copied or uploaded here; errors found before the batch is started (a
        wrong frame, device frames a backend cannot read, a full pipeline) raise here."""

    def detect(self, frames: Sequence[Any], thresholds: Thresholds) -> list[Detections]:
        """One call from batch to detections: per frame ``(xyxy boxes, scores, class ids)``
        in network-input pixels."""
        return self.submit(frames, thresholds).result()

    def check_frames(self, frames: Sequence[Any]) -> list[bool]:
        """Validate a batch against :attr:`info` and :attr:`capabilities`; returns which
        frames are device frames.  Raises :class:`EngineError` naming the offending frame."""
        if len(frames) > self.info.max_batch:
            raise EngineError(
                f"{self.info.backend}: batch of {len(frames)} exceeds max_batch "
                f"{self.info.max_batch}"
            )
        expected = (self.info.input_height, self.info.input_width, 3)
        on_device = [is_device_frame(f) for f in frames]
        for i, (frame, device) in enumerate(zip(frames, on_device, strict=True)):
            if device and not self.capabilities.device_frames:
                raise EngineError(
                    f"{self.info.backend} cannot read frames in GPU memory (frame {i}); "
                    "use a backend with device_frames (torch-cuda, tensorrt) or host frames"
                )
            if not device and not self.capabilities.host_frames:
                raise EngineError(
                    f"{self.info.backend} takes only frames in GPU memory (frame {i})"
                )
            if device:
                cai = frame.__cuda_array_interface__
                shape, dtype = tuple(int(s) for s in cai["shape"]), cai["typestr"]
            else:
                array = np.asarray(frame)
                shape, dtype = array.shape, array.dtype.str
            if shape != expected or dtype != "|u1":
                raise EngineError(
                    f"{self.info.backend}: frame {i} is {dtype} {shape}; expected uint8 "
                    f"{expected} (letterboxed RGB at the network's input size)"
                )
        return on_device

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release the engine's resources."""

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class SyncEngine(Engine):
    """A backend that runs a batch to the end inside :meth:`submit` and decodes on the CPU
    (one host staging buffer; ``max_inflight`` 1).  Subclasses implement :meth:`infer`."""

    _staging: npt.NDArray[np.uint8] | None = None
    layout: OutputLayout = OutputLayout.ANCHORS  # how infer()'s output is read (set at load)

    def submit(self, frames: Sequence[Any], thresholds: Thresholds) -> PendingBatch:
        self.check_frames(frames)
        if not frames:
            return CompletedBatch(())
        if self._staging is None:
            self._staging = self.new_staging()
        return CompletedBatch(self.run_staged(self.stage(self._staging, frames), thresholds))

    def new_staging(self) -> npt.NDArray[np.uint8]:
        """A host staging buffer for a whole batch (``[max_batch, H, W, 3]`` uint8)."""
        info = self.info
        return np.empty((info.max_batch, info.input_height, info.input_width, 3), np.uint8)

    @staticmethod
    def stage(staging: npt.NDArray[np.uint8], frames: Sequence[Any]) -> npt.NDArray[np.uint8]:
        """The frames copied into the first rows of ``staging`` (the engine no longer reads
        the caller's frames after this)."""
        images = staging[: len(frames)]
        for i, frame in enumerate(frames):
            images[i] = frame
        return images

    def run_staged(
        self, images: npt.NDArray[np.uint8], thresholds: Thresholds
    ) -> tuple[Detections, ...]:
        """The model and the CPU decode on staged frames: per frame its detections."""
        from visionflow.pipeline.letterbox import to_network_input

        return tuple(
            self.decode(self.infer(to_network_input(images, self.info.input_dtype)), thresholds)
        )

    def decode(self, output: npt.NDArray[np.float32], thresholds: Thresholds) -> list[Detections]:
        """:meth:`infer`'s output for a batch decoded on the CPU (NMS): per frame its
        detections."""
        from visionflow.pipeline.postprocess import decode_output

        t = thresholds
        return [decode_output(o, t.conf, t.iou, t.max_detections, self.layout) for o in output]
