"""Annotated JPEG snapshots of every stream, made off the hot path.

How a frame gets here: the ingest reader marks at most one frame per stream per
``output.snapshot_interval_s`` (``FrameRef.snapshot``); the inference worker that runs it
copies that frame's picture out of its slot (host or GPU, :mod:`visionflow.pipeline.crop`)
and sends it with the batch's results (``BatchResult.images``); the output stage hands it,
with the frame's detections, to :class:`SnapshotWriter`.  Its thread keeps only the newest
frame per stream, draws the boxes (:mod:`visionflow.pipeline.annotate`; boxes in original
pixels times ``letterbox.scale``: the image is the network input without its padding),
encodes a JPEG and ``SET``s ``<prefix>:snapshot:<stream_id>`` with a TTL of
:func:`snapshot_ttl_s`.

JPEG through PyAV's ``mjpeg`` encoder: the FFmpeg libraries every visionflow install already
loads for decoding, so no imaging library is added; frames of any size (odd too) encode as
``yuvj420p``.  Redis errors lose that snapshot (counted ``failed``); nothing here blocks or
fails detections.
"""

from __future__ import annotations

import logging
import math
import threading
from fractions import Fraction

import av
import numpy as np
import numpy.typing as npt
import redis

from visionflow.config import RedisConfig
from visionflow.pipeline.annotate import annotate
from visionflow.pipeline.frames import FrameResult
from visionflow.schema import snapshot_key
from visionflow.streams.urls import redact_text, redact_url
from visionflow.workers.sinks import sink_client

log = logging.getLogger("visionflow.snapshots")
JPEG_QSCALE = 4  # FFmpeg's JPEG quantiser, 2 (best) .. 31: 4 is about quality 85


def snapshot_ttl_s(interval_s: float) -> int:
    """Five intervals, at least 10 s: a snapshot outlives a few missed ones, then expires
    (a stopped camera's last frame disappears instead of looking live)."""
    return max(10, math.ceil(interval_s * 5))


def encode_jpeg(image: npt.NDArray[np.uint8], qscale: int = JPEG_QSCALE) -> bytes:
    """An ``[H, W, 3]`` RGB uint8 image as JPEG bytes."""
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected [H, W, 3] RGB, got {image.shape}")
    height, width = image.shape[:2]
    codec = av.CodecContext.create("mjpeg", "w")
    codec.width, codec.height = width, height
    codec.pix_fmt = "yuvj420p"
    codec.time_base = Fraction(1, 25)
    codec.options = {"qmin": str(qscale), "qmax": str(qscale)}
    frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")
    packets = codec.encode(frame.reformat(format="yuvj420p"))  # type: ignore[attr-defined]
    packets += codec.encode(None)  # type: ignore[attr-defined]
    return b"".join(bytes(p) for p in packets)


def render(result: FrameResult, pixels: npt.NDArray[np.uint8]) -> bytes:
    """The JPEG of one frame's picture with its detection boxes drawn on it."""
    scale = result.frame.letterbox.scale
    boxes = [
        (d.class_id, (d.x1 * scale, d.y1 * scale, d.x2 * scale, d.y2 * scale))
        for d in result.detections
    ]
    return encode_jpeg(annotate(pixels, boxes))


class SnapshotWriter:
    """Newest frame per stream in, JPEG in Redis out, from a thread of its own."""

    def __init__(self, config: RedisConfig, url: str, interval_s: float) -> None:
        self.config, self.ttl_s = config, snapshot_ttl_s(interval_s)
        self.safe_url = redact_url(url)
        self._client = sink_client(config, url)
        self._latest: dict[str, tuple[FrameResult, npt.NDArray[np.uint8]]] = {}
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._failing = False
        self.written = 0
        self.replaced = 0  # frames superseded before they were drawn (the writer was behind)
        self.failed = 0
        self.thread = threading.Thread(target=self._run, name="snapshots", daemon=True)

    def offer(self, result: FrameResult, pixels: npt.NDArray[np.uint8]) -> None:
        """Keep ``pixels`` as the stream's newest frame (never blocks for long)."""
        with self._cond:
            if self._latest.get(result.frame.stream_id) is not None:
                self.replaced += 1
            self._latest[result.frame.stream_id] = (result, pixels)
            self._cond.notify()

    def start(self) -> None:
        self.thread.start()

    def stop(self, timeout: float = 2.0) -> None:
        self._stop.set()
        with self._cond:
            self._cond.notify()
        if self.thread.ident is not None:
            self.thread.join(timeout=timeout + self.config.socket_timeout_s)
        self._client.close()

    def _take(self) -> list[tuple[FrameResult, npt.NDArray[np.uint8]]]:
        with self._cond:
            while not self._latest and not self._stop.is_set():
                self._cond.wait(0.5)
            taken, self._latest = list(self._latest.values()), {}
        return taken

    def _run(self) -> None:
        while not self._stop.is_set():
            for result, pixels in self._take():
                try:
                    self.write(result, pixels)
                except Exception:  # a bug must not end the thread: that snapshot is lost
                    self.failed += 1
                    log.exception("snapshot of %s failed", result.frame.stream_id)

    def write(self, result: FrameResult, pixels: npt.NDArray[np.uint8]) -> None:
        """Draw, encode and store one snapshot (Redis errors are counted, not raised)."""
        jpeg = render(result, pixels)
        key = snapshot_key(self.config.key_prefix, result.frame.stream_id)
        try:
            self._client.set(key, jpeg, ex=self.ttl_s)
        except (redis.RedisError, OSError) as exc:
            self.failed += 1
            if not self._failing:
                log.warning(
                    "snapshots: redis %s unavailable (%s); snapshots skipped until it is back",
                    self.safe_url,
                    redact_text(f"{type(exc).__name__}: {exc}"),
                )
            self._failing = True
            return
        self._failing = False
        self.written += 1
