"""INT8 calibration frames taken from the configured streams (``visionflow calibrate``).

TensorRT's entropy calibrator needs frames like the ones the engine will see.  This reads every
configured stream in turn, keeps one decoded frame in ``every`` (so a clip's frames spread over
seconds rather than being near-duplicates), letterboxes it to the model's input size exactly as
the pipeline does and saves the batch as one ``[N, H, W, 3]`` uint8 ``.npy``.  The TensorRT
backend feeds that file to its calibrator when it builds an INT8 engine and no calibration cache
exists yet (:func:`visionflow.engines.trt_build.calibration_input`).  A stream that cannot be
read is skipped with a warning (URL redacted); only when no stream gives a frame is it an error.
"""

from __future__ import annotations

import itertools
import logging
import math
import threading
from pathlib import Path

import numpy as np
import numpy.typing as npt

from visionflow.config import AppConfig
from visionflow.errors import ConfigError, SourceError
from visionflow.models import resolve_model
from visionflow.pipeline.letterbox import letterbox_geometry, scale_frame_into
from visionflow.streams.config import StreamConfig
from visionflow.streams.sources import VideoSource

log = logging.getLogger("visionflow.calibrate")


def frames_of(
    config: AppConfig, stream: StreamConfig, count: int, every: int, size: tuple[int, int]
) -> list[npt.NDArray[np.uint8]]:
    """Up to ``count`` letterboxed frames of ``stream``, one decoded frame in ``every``."""
    width, height = size
    source = VideoSource(stream, config.source, threading.Event())
    source.open()
    images: list[npt.NDArray[np.uint8]] = []
    try:
        for decoded in itertools.islice(source.frames(), 0, count * every, every):
            lb = letterbox_geometry(decoded.width, decoded.height, width, height)
            canvas = np.empty((height, width, 3), np.uint8)
            scale_frame_into(decoded.frame, canvas, lb)
            images.append(canvas)
    except SourceError as exc:  # end of a file, or the camera went away mid-way
        if not images:
            raise
        log.info("%s: stopped after %d frames (%s)", stream.safe_url, len(images), exc)
    finally:
        source.close()
    return images


def collect(config: AppConfig, frames: int, every: int) -> npt.NDArray[np.uint8]:
    """``frames`` calibration images (fewer only if the streams run out), shared evenly
    between the configured streams that can be read."""
    if not config.streams:
        raise ConfigError("calibration needs at least one stream in the config")
    if frames < 1 or every < 1:
        raise ConfigError(f"frames and every must be >= 1 (got {frames}, {every})")
    size = resolve_model(config).input_size
    images: list[npt.NDArray[np.uint8]] = []
    for i, stream in enumerate(config.streams):
        # what is still missing, split over the streams still to read: a skipped stream's
        # share goes to the others
        share = math.ceil((frames - len(images)) / (len(config.streams) - i))
        offline = stream.model_copy(update={"realtime": False})
        try:
            taken = frames_of(config, offline, share, every, size)
        except SourceError as exc:
            log.warning("calibration: skipping %s: %s", stream.id, exc)
            continue
        log.info("calibration: %d frames from %s", len(taken), stream.id)
        images.extend(taken)
    if not images:
        raise SourceError("calibration: no configured stream gave a frame")
    return np.stack(images[:frames])


def default_path(config: AppConfig) -> Path:
    """Where ``visionflow calibrate`` writes and the TensorRT backend looks by default."""
    from visionflow.engines.trt import TensorRTConfig
    from visionflow.engines.trt_build import calibration_images_path

    engine = config.engine
    if not isinstance(engine, TensorRTConfig):
        raise ConfigError(
            f"engine.backend is {engine.backend!r}: calibration frames are for 'tensorrt' "
            "(give --out to write them anyway)"
        )
    return calibration_images_path(engine)


def write(path: Path, images: npt.NDArray[np.uint8]) -> Path:
    """Save atomically (a half-written file is never read as calibration data)."""
    path = path.expanduser()
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    with partial.open("wb") as fh:
        np.save(fh, images)
    partial.replace(path)
    return path
