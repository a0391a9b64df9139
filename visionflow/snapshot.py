"""Annotated PNG snapshots of a stream: grab a frame, run the model, draw the boxes."""

from __future__ import annotations

import itertools
import threading
from pathlib import Path

import numpy as np

from visionflow.config import AppConfig
from visionflow.engines import create_engine
from visionflow.errors import ConfigError, SourceError
from visionflow.models import resolve_model
from visionflow.pipeline.annotate import annotate, write_png
from visionflow.pipeline.frames import Detection
from visionflow.pipeline.letterbox import letterbox_geometry, scale_frame_into, to_network_input
from visionflow.pipeline.postprocess import detections_for_frame
from visionflow.streams.sources import VideoSource


def take_snapshot(
    config: AppConfig, stream_id: str, out: Path, skip_frames: int = 0
) -> tuple[Path, tuple[Detection, ...]]:
    """Write ``out`` (PNG) with the detections of one frame of ``stream_id``."""
    streams = {s.id: s for s in config.streams}
    if stream_id not in streams:
        raise ConfigError(f"no stream {stream_id!r} in the config (have: {', '.join(streams)})")
    stream = streams[stream_id].model_copy(update={"realtime": False})
    source = VideoSource(stream, config.source, threading.Event())
    source.open()
    try:
        decoded = next(itertools.islice(source.frames(), skip_frames, None), None)
        if decoded is None:
            raise SourceError(f"{stream.safe_url}: no frame to snapshot")
        image = decoded.frame.to_ndarray(format="rgb24")
        model = resolve_model(config)
        width, height = model.input_size
        lb = letterbox_geometry(decoded.width, decoded.height, width, height)
        canvas = np.empty((height, width, 3), np.uint8)
        scale_frame_into(decoded.frame, canvas, lb)
    finally:
        source.close()
    with create_engine(config.engine, model.path, 1) as engine:
        output = engine.infer(to_network_input(canvas[None], engine.info.input_dtype))
    cfg = config.model
    detections = detections_for_frame(
        output[0],
        lb,
        model.class_names,
        model.conf_threshold,
        cfg.iou_threshold,
        cfg.max_detections,
    )
    drawn = annotate(image, [(d.class_id, (d.x1, d.y1, d.x2, d.y2)) for d in detections])
    return write_png(out, drawn), detections
