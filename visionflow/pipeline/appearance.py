"""Appearance descriptors of detections: a colour layout per box, for re-identification.

Computed by the inference worker (:mod:`visionflow.workers.inference`) where the pixels are,
on the letterboxed network input the engine saw, with the boxes in network-input pixels
(before they are mapped back to the frame), and only for the streams whose tracking asks for
it (``tracking.appearance_s``).  The tracker (:mod:`visionflow.tracking.bytetrack`) compares
them by cosine distance.

The descriptor: the box is cut into :data:`GRID_COLS` x :data:`GRID_ROWS` cells (1 x 4:
bands from head to feet) and each cell's mean RGB, mapped to ``[-1, 1]`` around mid-grey,
makes :data:`DIMS` (12) numbers, L2-normalised, sent as float16 bytes (24 bytes per
detection).  One column, not two: on the tuning scenes (seeds 11-18) a left/right split
separated objects worse (a box cut by the frame border or half hidden changes its halves,
not its bands): the share of other objects' descriptors nearer than the 90th percentile of
the same object's was 0.17 with 1 x 4 bands, 0.24 with 2 x 4 cells, 0.23 with 2 x 6.
A classic cheap cue (a "colour layout" descriptor): it tells a red shirt over blue trousers
from a blue shirt over grey trousers, but not two people dressed alike, nor a bicycle (its
box is mostly background) from another, and it moves with the light; a CNN re-id embedding
is far stronger and far dearer.  It is internal: never published to Redis.

Two implementations: numpy for host frames (CPU / ONNX Runtime engines), a box sampled to
about :data:`SAMPLES` pixels; torch for frames in GPU memory, a whole batch at once (one
summed-area table per frame in one pass, every box's cells gathered together, one copy of
``K x 12`` floats to the host; its tests run on a GPU only, CI has no torch).  Boxes near
mid-grey get no descriptor (:data:`MIN_CONTRAST`).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

if TYPE_CHECKING:
    from visionflow.pipeline.framepool import PoolCache
    from visionflow.pipeline.frames import FrameRef

log = logging.getLogger("visionflow.inference")

GRID_COLS, GRID_ROWS = 1, 4
DIMS = GRID_COLS * GRID_ROWS * 3
DTYPE = np.float16  # of the bytes a Detection carries
DESCRIPTOR_BYTES = DIMS * np.dtype(DTYPE).itemsize
Descriptor = bytes


def cell_edges(
    start: npt.NDArray[np.int64], stop: npt.NDArray[np.int64], cells: int
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """Per range ``[start, stop)`` (arrays ``[K]``), the pixel ranges ``[lo, hi)`` ``[K, cells]``
    of ``cells`` equal parts, each at least one pixel wide (they overlap when the range is
    narrower than ``cells``)."""
    start, stop = np.asarray(start, np.int64)[:, None], np.asarray(stop, np.int64)[:, None]
    span = stop - start
    lo = start + (np.arange(cells) * span) // cells
    hi = np.maximum(lo + 1, start + (np.arange(1, cells + 1) * span) // cells)
    return lo, np.minimum(hi, np.maximum(stop, start + 1))


def pixel_bounds(
    boxes: npt.NDArray[np.floating], width: int, height: int
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.bool_]]:
    """``[K, 4]`` float xyxy boxes -> integer pixel bounds ``[K, 4]`` (x0, y0, x1, y1; x1, y1
    exclusive) clipped to the image, and which boxes keep at least one pixel."""
    b = np.asarray(boxes, np.float64).reshape(-1, 4)
    x0 = np.clip(np.floor(b[:, 0]), 0, width)
    y0 = np.clip(np.floor(b[:, 1]), 0, height)
    x1 = np.clip(np.ceil(b[:, 2]), 0, width)
    y1 = np.clip(np.ceil(b[:, 3]), 0, height)
    bounds = np.stack([x0, y0, x1, y1], axis=1).astype(np.int64)
    valid = (b[:, 2] > b[:, 0]) & (b[:, 3] > b[:, 1]) & (x1 > x0) & (y1 > y0)
    return bounds, valid


MIN_CONTRAST = 0.1  # RMS distance from mid-grey (in [-1, 1] units, ~13 grey levels) below
# which a box has no descriptor: the direction of a near-grey vector is the noise's


def normalise(means: npt.NDArray[np.floating]) -> npt.NDArray[np.float32]:
    """``[K, DIMS]`` cell means in 0..255 -> unit vectors around mid-grey; rows of zeros (no
    descriptor) for boxes whose colours are all within :data:`MIN_CONTRAST` of mid-grey, where
    a few levels of noise would turn the vector anywhere."""
    centred = np.asarray(means, np.float32) / 127.5 - 1.0
    norms = np.linalg.norm(centred, axis=1, keepdims=True)
    enough = norms > MIN_CONTRAST * np.sqrt(centred.shape[1])
    out: npt.NDArray[np.float32] = np.where(enough, centred / np.maximum(norms, 1e-6), 0.0)
    return out.astype(np.float32)


SAMPLES = 1024  # pixels a box's cells are averaged over at most (host path): ~40-70 us a box


def _box_means(
    image: npt.NDArray[np.uint8],
    rows: tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]],
    cols: tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]],
) -> npt.NDArray[np.float64]:
    """The ``DIMS`` cell means of one box, given its cells' pixel rows and columns (image
    coordinates, :func:`cell_edges`): per column of cells, every ``step``-th pixel each way
    (a box costs about :data:`SAMPLES` pixels whatever its size), its rows summed across, then
    running sums down them."""
    (rlo, rhi), (clo, chi) = rows, cols
    top = int(rlo[0])
    step = max(1, int(np.sqrt(int(rhi[-1] - top) * int(chi[-1] - clo[0]) / SAMPLES)))
    lo = (rlo - top + step - 1) // step  # the cells' sampled rows, at least one each
    hi = np.maximum(lo + 1, (rhi - top + step - 1) // step)
    means = np.empty((GRID_ROWS, GRID_COLS, 3))
    for j in range(GRID_COLS):
        band = image[top : int(rhi[-1]) : step, int(clo[j]) : int(chi[j]) : step]
        hi_j = np.minimum(hi, band.shape[0])
        lo_j = np.minimum(lo, hi_j - 1)
        running = np.zeros((band.shape[0] + 1, 3), np.int64)
        np.cumsum(band.sum(axis=1, dtype=np.int64), axis=0, out=running[1:])
        area = ((hi_j - lo_j) * band.shape[1])[:, None]
        means[:, j] = (running[hi_j] - running[lo_j]) / area
    out: npt.NDArray[np.float64] = means.reshape(-1)
    return out


def describe_host(
    image: npt.NDArray[np.uint8], boxes: npt.NDArray[np.floating]
) -> npt.NDArray[np.float32]:
    """Descriptors ``[K, DIMS]`` of ``boxes`` (xyxy, image pixels) on an ``[H, W, 3]`` uint8
    image; rows of zeros for boxes with no pixel inside the image (or too grey)."""
    height, width = int(image.shape[0]), int(image.shape[1])
    bounds, valid = pixel_bounds(boxes, width, height)
    rlo, rhi = cell_edges(bounds[:, 1], bounds[:, 3], GRID_ROWS)
    clo, chi = cell_edges(bounds[:, 0], bounds[:, 2], GRID_COLS)
    means = np.full((len(bounds), DIMS), 127.5)  # mid-grey: no descriptor
    for i in np.flatnonzero(valid):
        means[i] = _box_means(image, (rlo[i], rhi[i]), (clo[i], chi[i]))
    return normalise(means)


def describe_device_batch(
    images: Sequence[Any], boxes: Sequence[npt.NDArray[np.floating]]
) -> list[npt.NDArray[np.float32]]:
    """:func:`describe_host` for ``[H, W, 3]`` uint8 images of one size in GPU memory (objects
    with ``__cuda_array_interface__``, or torch tensors), all at once: one summed-area table
    per image in one pass, every box's cells gathered together, one copy of ``K x DIMS``
    floats to the host for the whole batch (one synchronisation, not one per frame)."""
    import torch

    tensors = [
        i if isinstance(i, torch.Tensor) else torch.as_tensor(i, device="cuda") for i in images
    ]
    height, width = int(tensors[0].shape[0]), int(tensors[0].shape[1])
    counts = [len(b) for b in boxes]
    bounds, valid = pixel_bounds(
        np.concatenate([np.reshape(b, (-1, 4)) for b in boxes]), width, height
    )
    frame = np.repeat(np.arange(len(images)), counts)
    if not valid.any():
        return [np.zeros((n, DIMS), np.float32) for n in counts]
    bounds[~valid] = (0, 0, 1, 1)  # any pixel: their rows become mid-grey below
    rlo_np, rhi_np = cell_edges(bounds[:, 1], bounds[:, 3], GRID_ROWS)  # [K, R]
    clo_np, chi_np = cell_edges(bounds[:, 0], bounds[:, 2], GRID_COLS)  # [K, C]
    dev = tensors[0].device
    # int32 sums: 255 x the pixels of an image stays far below 2**31 for any network input
    table = torch.zeros((len(images), height + 1, width + 1, 3), dtype=torch.int32, device=dev)
    table[:, 1:, 1:] = torch.stack(tensors).to(torch.int32).cumsum(1).cumsum(2)
    f = torch.as_tensor(frame, device=dev)[:, None, None]  # [K, 1, 1]
    rlo, rhi = (torch.as_tensor(e, device=dev)[:, :, None] for e in (rlo_np, rhi_np))  # [K, R, 1]
    clo, chi = (torch.as_tensor(e, device=dev)[:, None, :] for e in (clo_np, chi_np))  # [K, 1, C]
    sums = table[f, rhi, chi] - table[f, rlo, chi] - table[f, rhi, clo] + table[f, rlo, clo]
    area = ((rhi - rlo) * (chi - clo)).clamp(min=1).unsqueeze(-1)
    means = (sums.to(torch.float64) / area).reshape(len(bounds), DIMS).cpu().numpy()
    means[~valid] = 127.5
    out = normalise(means)
    return list(np.split(out, np.cumsum(counts)[:-1]))


def describe_device(image: Any, boxes: npt.NDArray[np.floating]) -> npt.NDArray[np.float32]:
    """:func:`describe_device_batch` for one image."""
    return describe_device_batch([image], [boxes])[0]


def to_bytes(vectors: npt.NDArray[np.float32]) -> list[Descriptor | None]:
    """Per row its descriptor as float16 bytes, or None (a row of zeros: none)."""
    return [v.astype(DTYPE).tobytes() if v.any() else None for v in vectors]


def describe(image: Any, boxes: npt.NDArray[np.floating]) -> list[Descriptor | None]:
    """Per box its descriptor as float16 bytes, or None (no pixel of it in the image): the
    numpy path for host images, torch for images in GPU memory."""
    if not len(boxes):
        return []
    if isinstance(image, np.ndarray):
        return to_bytes(describe_host(image, boxes))
    return to_bytes(describe_device(image, boxes))


def describe_batch(
    images: Sequence[Any], boxes: Sequence[npt.NDArray[np.floating]]
) -> list[list[Descriptor | None]]:
    """:func:`describe` for several images: host images one by one, device images of one
    size together (:func:`describe_device_batch`)."""
    if not images:
        return []
    shapes = {tuple(getattr(i, "shape", ())) for i in images}
    if any(isinstance(i, np.ndarray) for i in images) or len(shapes) != 1:
        return [describe(i, b) for i, b in zip(images, boxes, strict=True)]
    return [to_bytes(v) for v in describe_device_batch(images, boxes)]


def decode(descriptor: Descriptor) -> npt.NDArray[np.float32]:
    """float16 bytes -> the ``DIMS`` floats."""
    return np.frombuffer(descriptor, DTYPE).astype(np.float32)


class AppearanceHook:
    """The inference worker's side: descriptors of the detections of the streams that asked
    (``streams``, kept current by :class:`~visionflow.workers.messages.AppearanceStreams`),
    from the frame the engine saw while its slot is still held.  Other streams cost one set
    lookup; a failure costs that frame's descriptors (logged once), never its detections."""

    def __init__(self, streams: frozenset[str], worker_id: int) -> None:
        self.streams, self.worker_id, self._warned = streams, worker_id, False
        self.off = False  # set for good when a descriptor cannot be made here (no torch)

    def for_batch(
        self, pools: PoolCache, frames: Sequence[FrameRef], boxes: Sequence[Any]
    ) -> list[list[Descriptor | None] | None]:
        """:meth:`of` for a batch's frames at once (one synchronisation for the frames in GPU
        memory); a failure costs the batch's descriptors, never its detections."""
        out: list[list[Descriptor | None] | None] = [None] * len(frames)
        wanted = [i for i, f in enumerate(frames) if f.stream_id in self.streams and len(boxes[i])]
        if not wanted or self.off:
            return out
        try:
            images = [pools.get(frames[i].pool).image(frames[i].slot) for i in wanted]
            for i, looks in zip(
                wanted, describe_batch(images, [boxes[i] for i in wanted]), strict=True
            ):
                out[i] = looks
        except ImportError as exc:
            self.off = True
            log.warning("worker %d: no appearance descriptors (%s); off", self.worker_id, exc)
        except Exception as exc:
            self._warn(exc)
        return out

    def _warn(self, exc: Exception) -> None:
        if not self._warned:
            self._warned = True
            log.warning("worker %d: no appearance descriptors: %s", self.worker_id, exc)

    def of(self, pools: PoolCache, frame: FrameRef, boxes: Any) -> list[Descriptor | None] | None:
        """Per box (network-input pixels) its descriptor, or None for the whole frame when
        its stream did not ask (or the descriptors failed)."""
        if frame.stream_id not in self.streams or not len(boxes):
            return None
        return self.for_batch(pools, [frame], [boxes])[0]
