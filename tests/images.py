"""Real JPEGs for tests: a synthetic scene frame with its boxes drawn, encoded by PyAV
(libavcodec's mjpeg), as the output stage's snapshots are."""

from __future__ import annotations

import av
import numpy as np
import numpy.typing as npt

from visionflow.pipeline.annotate import annotate
from visionflow.scenes.generator import SceneGenerator, SceneSpec


def encode_jpeg(image: npt.NDArray[np.uint8], quality: int = 5) -> bytes:
    """An ``[H, W, 3]`` RGB image as JPEG bytes (``quality``: mjpeg qscale, 2 best .. 31)."""
    height, width = image.shape[:2]
    codec = av.CodecContext.create("mjpeg", "w")
    codec.width, codec.height, codec.pix_fmt = width, height, "yuvj420p"
    codec.options = {"qmin": str(quality), "qmax": str(quality)}
    frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")
    packets = codec.encode(frame.reformat(format="yuvj420p")) + codec.encode(None)
    return b"".join(bytes(p) for p in packets)


def scene_jpeg(
    width: int = 640, height: int = 360, seed: int = 1, index: int = 90, noise: float = 4.0
) -> bytes:
    """One frame of a synthetic scene with its objects' boxes drawn, as JPEG."""
    spec = SceneSpec(width, height, seed=seed, noise_sigma=noise)
    image, truth = SceneGenerator(spec).render(index)
    boxes = [(t.class_id, (t.x1, t.y1, t.x2, t.y2)) for t in truth if not t.ignorable]
    return encode_jpeg(annotate(image, boxes))
