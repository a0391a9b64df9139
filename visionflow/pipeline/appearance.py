"""Appearance descriptors of detections: an object's colours, for re-identification.

Computed by the inference worker (:mod:`visionflow.workers.inference`) where the pixels are,
on the letterboxed network input the engine saw, with the boxes in network-input pixels
(before they are mapped back to the frame), and only for the streams whose tracking asks for
it (``tracking.appearance_s``).  The tracker (:mod:`visionflow.tracking.bytetrack`) compares
them by cosine distance.

The descriptor: a colour histogram of the box with its surroundings taken out.  The box is
sampled at :data:`GRID_ROWS` x :data:`GRID_COLS` points and a ring around it (the box grown by
:data:`RING_GROW` of its size each way) at :data:`RING` points; each gives a soft (trilinear)
histogram of :data:`BINS` x :data:`BINS` x :data:`BINS` RGB bins; the ring's share is taken
from the box's (clipped at 0), what is left is the object's colours (a box with almost nothing
left keeps its own histogram); the square roots of the bins, L2-normalised, make :data:`DIMS`
(64) numbers, sent as float16 bytes (128 bytes per detection), so the cosine of two is their
Bhattacharyya coefficient (no bin is negative: their cosine distance is 0..1).  Ad-hoc
diagnostics on the tuning scenes (seeds 11-18; scratch scripts not in the repository, no
results file): the share of other objects' descriptors of a class nearer than the 90th
percentile of the same object's fell from 0.10 to 0.01 for bicycles (a box mostly background,
where the mean colours of 4 bands, the descriptor before this one, were mostly the
background's), 0.05 to 0.001 for cars and 0.003 to 0 for people, and the tracker's mean IDF1
with re-identification by appearance rose from 0.944 / 0.880 / 0.888 to 0.970 / 0.913 / 0.915
(crossing / occlusion / re-entering) with half the ID switches; held-out figures:
``bench/tracking.py`` (README, issue 11).  It has no layout: a red shirt over blue trousers and
a blue shirt over red trousers look alike; nor does it tell two objects of the same colours,
and it moves with the light.  A CNN re-id embedding is far stronger and far dearer.  It is
internal: never published to Redis.

The sampling gathers a fixed number of pixels per box whatever its size (``bench/tracking.py``
``descriptor``: about 0.2 / 0.3 / 0.5 ms of CPU for a frame's 1 / 5 / 20 boxes on a busy
2-core VM; in an ad-hoc interleaved comparison 0.66 / 0.69 / 0.78x of the first version of
this histogram with 1 / 5 / 20 boxes, 0.87x with 50, with the same output: the unit tests
compare with that version's stored descriptors); a box with a NaN or infinite coordinate,
empty, inverted or outside the image gets no descriptor and never reaches index arithmetic;
host frames (CPU / ONNX Runtime engines) are sampled with numpy, frames in GPU memory with
torch, a whole batch at once (one gather, one copy of ``K x 240`` pixels to the host), and
the histograms are made on the host in both cases (the same code).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np
import numpy.typing as npt

if TYPE_CHECKING:
    from visionflow.pipeline.framepool import PoolCache
    from visionflow.pipeline.frames import FrameRef

log = logging.getLogger("visionflow.inference")

GRID_ROWS, GRID_COLS = 16, 12  # sample points inside a box
RING = 48  # sample points on the ring around it
RING_GROW = 0.15  # the ring: the box grown by this fraction of its size on each side
BINS = 4  # per colour channel
DIMS = BINS**3
MIN_LEFT = 0.02  # less of the box's histogram than this left once the ring's is taken out:
# the box looks like its surroundings, and keeps its own histogram
#: boxes whose histograms are made in one numpy pass: the pass's arrays (8 corners x 240
#: samples x boxes) stay in the cache; a pass over 40 boxes or more cost about twice as much
#: per box as one over 20 (an ad-hoc measurement on the 2-core VM, 2026-11-28, no results
#: file; bench/tracking.py's ``descriptor`` section times the batches)
CHUNK = 24
DTYPE = np.float16  # of the bytes a Detection carries
DESCRIPTOR_BYTES = DIMS * np.dtype(DTYPE).itemsize
Descriptor = bytes
IntArray = npt.NDArray[np.int64]
#: what a box with no descriptor (NaN, infinite, empty, inverted, outside the image) is
#: sampled as: a finite box, so that no index is worked out from a NaN or an infinity
_HARMLESS = np.array([0.0, 0.0, 1.0, 1.0])


def pixel_bounds(
    boxes: npt.NDArray[np.floating], width: int, height: int
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.bool_]]:
    """``[K, 4]`` float xyxy boxes -> integer pixel bounds ``[K, 4]`` (x0, y0, x1, y1; x1, y1
    exclusive) clipped to the image, and which boxes keep at least one pixel.  A box with a
    NaN or infinite coordinate keeps none: its bounds are those of :data:`_HARMLESS` (every
    row's bounds are indices into the image, whatever came in)."""
    b = np.asarray(boxes, np.float64).reshape(-1, 4)
    finite: npt.NDArray[np.bool_] = np.asarray(np.isfinite(b).all(axis=1))
    b = np.where(finite[:, None], b, _HARMLESS)
    x0 = np.clip(np.floor(b[:, 0]), 0, width)
    y0 = np.clip(np.floor(b[:, 1]), 0, height)
    x1 = np.clip(np.ceil(b[:, 2]), 0, width)
    y1 = np.clip(np.ceil(b[:, 3]), 0, height)
    bounds = np.stack([x0, y0, x1, y1], axis=1).astype(np.int64)
    valid = finite & (b[:, 2] > b[:, 0]) & (b[:, 3] > b[:, 1]) & (x1 > x0) & (y1 > y0)
    return bounds, valid


class _RingLayout(NamedTuple):
    """Where the :data:`RING` points lie around a rectangle (top left to right, right side
    down, bottom right to left, left side up, evenly spaced), the same for every box."""

    from_left: npt.NDArray[np.bool_]  # x starts from the left side (else the right)
    x_moves: npt.NDArray[np.bool_]  # x moves along the width (top and bottom sides)
    x_step: npt.NDArray[np.float64]  # by this signed fraction of it
    from_top: npt.NDArray[np.bool_]  # y starts from the top (else the bottom)
    y_moves: npt.NDArray[np.bool_]  # y moves along the height (left and right sides)
    y_step: npt.NDArray[np.float64]  # by this signed fraction of it


def _ring_layout() -> _RingLayout:
    t = (np.arange(RING) + 0.5) / RING * 4
    side, f = np.floor(t), t - np.floor(t)
    return _RingLayout(
        from_left=(side == 0) | (side == 3),
        x_moves=(side == 0) | (side == 2),
        x_step=np.where(side == 0, f, -f),
        from_top=(side == 0) | (side == 1),
        y_moves=(side == 1) | (side == 3),
        y_step=np.where(side == 1, f, -f),
    )


_RING_LAYOUT = _ring_layout()
_GRID_FY = (np.arange(GRID_ROWS) + 0.5) / GRID_ROWS
_GRID_FX = (np.arange(GRID_COLS) + 0.5) / GRID_COLS


def sample_points(
    boxes: npt.NDArray[np.floating], width: int, height: int
) -> tuple[IntArray, IntArray, IntArray, IntArray, npt.NDArray[np.bool_], npt.NDArray[np.bool_]]:
    """Where a box is sampled: rows ``[K, GRID_ROWS]`` and columns ``[K, GRID_COLS]`` of the
    grid inside it (clipped to the image); rows and columns ``[K, RING]`` of the ring around
    it (the box grown by :data:`RING_GROW` of its size each way; clamped into the image) and
    which ring points really are inside the image; which boxes have a pixel in the image.
    Every index is in the image (given one of at least a pixel) whatever the boxes: a box
    with a NaN or infinite coordinate, empty, inverted or outside the image is not valid
    and is sampled as :data:`_HARMLESS` (its descriptor is zeros), and ring points that do
    not come out finite are outside (on the device an index out of range is a device-side
    assert that takes the worker's CUDA context with it).

    The ring layout is worked out once (:data:`_RING_LAYOUT`); a point on a side that does
    not move along an axis takes that side's coordinate exactly, one that moves takes
    ``start + step x extent`` (the same arithmetic, and so the same pixels, as walking each
    side with ``np.select``, at a fraction of the cost for the few boxes of a frame)."""
    bounds, valid = pixel_bounds(boxes, width, height)
    x0, y0, x1, y1 = (bounds[:, i : i + 1].astype(np.float64) for i in range(4))
    ys = np.clip(np.floor(y0 + _GRID_FY * (y1 - y0)), 0, max(height - 1, 0)).astype(np.int64)
    xs = np.clip(np.floor(x0 + _GRID_FX * (x1 - x0)), 0, max(width - 1, 0)).astype(np.int64)
    b = np.where(valid[:, None], np.asarray(boxes, np.float64).reshape(-1, 4), _HARMLESS)
    with np.errstate(over="ignore", invalid="ignore"):  # a huge box: see below
        gx = RING_GROW * (b[:, 2] - b[:, 0])[:, None]
        gy = RING_GROW * (b[:, 3] - b[:, 1])[:, None]
        left, top = b[:, 0:1] - gx, b[:, 1:2] - gy
        right, bottom = b[:, 2:3] + gx, b[:, 3:4] + gy
        ring = _RING_LAYOUT
        start_x = np.where(ring.from_left, left, right)
        start_y = np.where(ring.from_top, top, bottom)
        rx = np.where(ring.x_moves, start_x + ring.x_step * (right - left), start_x)
        ry = np.where(ring.y_moves, start_y + ring.y_step * (bottom - top), start_y)
    # a box so large that its ring overflows (inf - inf): those points are not in the image
    finite = np.isfinite(rx) & np.isfinite(ry)
    rx, ry = np.where(finite, rx, 0.0), np.where(finite, ry, 0.0)
    inside = finite & (rx >= 0) & (rx < width) & (ry >= 0) & (ry < height)
    ring_y = np.clip(np.floor(ry), 0, max(height - 1, 0)).astype(np.int64)
    ring_x = np.clip(np.floor(rx), 0, max(width - 1, 0)).astype(np.int64)
    return ys, xs, ring_y, ring_x, inside, valid


def soft_histograms(
    pixels: npt.NDArray[np.generic], weights: npt.NDArray[np.floating]
) -> npt.NDArray[np.float64]:
    """``[K, N, 3]`` pixels (0..255) with weights ``[K, N]`` -> ``[K, DIMS]`` trilinear
    histograms (each pixel spread over the 8 bins around it), divided by the weights' sum
    (rows of zeros where that is 0).  Each corner's share is (r share x g share) x b share x
    weight, rounded to float32; the lower and upper shares of each channel and the 4 r x g
    products are worked out once for the 8 corners."""
    k, n = pixels.shape[0], pixels.shape[1]
    pos = np.minimum(np.asarray(pixels, np.float32) * ((BINS - 1) / 255.0), BINS - 1 - 1e-4)
    lo = pos.astype(np.int64)
    hi_share = pos - lo
    w = np.asarray(weights, np.float32)
    base = lo[..., 0] * (BINS * BINS) + lo[..., 1] * BINS + lo[..., 2]
    base += np.arange(k)[:, None] * DIMS
    shares = [(1 - hi_share[..., c], hi_share[..., c]) for c in range(3)]  # lower, upper
    rg = [[shares[0][r] * shares[1][g] for g in (0, 1)] for r in (0, 1)]
    index = np.empty((8, k, n), np.int64)
    share = np.empty((8, k, n), np.float32)
    for corner in range(8):
        r, g, b = corner >> 2 & 1, corner >> 1 & 1, corner & 1
        np.add(base, r * BINS * BINS + g * BINS + b, out=index[corner])
        share[corner] = rg[r][g] * shares[2][b] * w
    out = np.bincount(index.ravel(), share.ravel(), k * DIMS).reshape(k, DIMS)
    hist: npt.NDArray[np.float64] = out / np.maximum(w.sum(axis=1, keepdims=True), 1e-9)
    return hist


def from_samples(
    inner: npt.NDArray[np.uint8],
    ring: npt.NDArray[np.uint8],
    ring_inside: npt.NDArray[np.bool_],
    valid: npt.NDArray[np.bool_],
) -> npt.NDArray[np.float32]:
    """Descriptors ``[K, DIMS]`` from the sampled pixels: ``inner`` ``[K, N, 3]``, ``ring``
    ``[K, RING, 3]`` with which ring points are in the image; rows of zeros where not
    ``valid`` (no pixel of the box in the image)."""
    k = len(valid)
    if not k:
        return np.zeros((0, DIMS), np.float32)
    inner, ring = inner.reshape(k, -1, 3), ring.reshape(k, -1, 3)
    weights = ring_inside.reshape(k, -1).astype(np.float32)
    box, around = np.empty((k, DIMS)), np.empty((k, DIMS))
    for rows in (slice(i, i + CHUNK) for i in range(0, k, CHUNK)):
        box[rows] = soft_histograms(inner[rows], np.ones(inner[rows].shape[:2], np.float32))
        around[rows] = soft_histograms(ring[rows], weights[rows])
    left = np.clip(box - around, 0.0, None)
    hist = np.where(left.sum(axis=1, keepdims=True) >= MIN_LEFT, left, box)
    roots = np.sqrt(hist)
    norms = np.linalg.norm(roots, axis=1, keepdims=True)
    out = np.where(valid[:, None] & (norms > 1e-9), roots / np.maximum(norms, 1e-9), 0.0)
    return out.astype(np.float32)


def describe_host(
    image: npt.NDArray[np.uint8], boxes: npt.NDArray[np.floating]
) -> npt.NDArray[np.float32]:
    """Descriptors ``[K, DIMS]`` of ``boxes`` (xyxy, image pixels) on an ``[H, W, 3]`` uint8
    image; rows of zeros for boxes with no pixel inside the image (empty, inverted, outside,
    or with a NaN or infinite coordinate)."""
    height, width = int(image.shape[0]), int(image.shape[1])
    ys, xs, ring_y, ring_x, inside, valid = sample_points(boxes, width, height)
    if not valid.any():
        return np.zeros((len(valid), DIMS), np.float32)
    inner = image[ys[:, :, None], xs[:, None, :]]
    return from_samples(inner, image[ring_y, ring_x], inside, valid)


def describe_host_batch(
    images: Sequence[npt.NDArray[np.uint8]], boxes: Sequence[npt.NDArray[np.floating]]
) -> list[npt.NDArray[np.float32]]:
    """:func:`describe_host` for ``[H, W, 3]`` uint8 images of one size: consecutive frames
    taken together up to :data:`CHUNK` boxes (a frame with more alone), so that the fixed
    cost of each numpy call is paid once per group, not once per frame (a batch's frames
    have a few boxes each), while each pass's arrays stay small.  The same descriptors, to
    the bit, as image by image.  :class:`ValueError` for images not all uint8 of one size."""
    shapes = {(tuple(i.shape), i.dtype) for i in images}
    if len(shapes) > 1 or any(dtype != np.uint8 or len(shape) != 3 for shape, dtype in shapes):
        raise ValueError(f"describe_host_batch takes uint8 [H, W, 3] images of one size: {shapes}")
    out: list[npt.NDArray[np.float32]] = []
    start, held = 0, 0
    for end, frame_boxes in enumerate(boxes):
        if end > start and held + len(frame_boxes) > CHUNK:
            out += _describe_host_group(images[start:end], boxes[start:end])
            start, held = end, 0
        held += len(frame_boxes)
    if len(boxes) > start:
        out += _describe_host_group(images[start:], boxes[start:])
    return out


def _describe_host_group(
    images: Sequence[npt.NDArray[np.uint8]], boxes: Sequence[npt.NDArray[np.floating]]
) -> list[npt.NDArray[np.float32]]:
    """One group of :func:`describe_host_batch`: the sample points of all its boxes worked
    out together, each image's pixels gathered, the histograms made in one pass."""
    if len(images) == 1:
        return [describe_host(images[0], boxes[0])]
    height, width = int(images[0].shape[0]), int(images[0].shape[1])
    flat, counts = _flatten(boxes)
    ys, xs, ring_y, ring_x, inside, valid = sample_points(flat, width, height)
    if not valid.any():
        return _per_frame(np.zeros((len(flat), DIMS), np.float32), counts)
    inner = np.empty((len(flat), GRID_ROWS, GRID_COLS, 3), np.uint8)
    ring = np.empty((len(flat), RING, 3), np.uint8)
    ends = np.cumsum(counts)
    for image, end, n in zip(images, ends, counts, strict=True):
        if n:
            rows = slice(end - n, end)
            inner[rows] = image[ys[rows, :, None], xs[rows, None, :]]
            ring[rows] = image[ring_y[rows], ring_x[rows]]
    return _per_frame(from_samples(inner.reshape(len(flat), -1, 3), ring, inside, valid), counts)


def _flatten(
    boxes: Sequence[npt.NDArray[np.floating]],
) -> tuple[npt.NDArray[np.float64], list[int]]:
    """Several frames' boxes as one ``[K, 4]`` float64 array, and how many each frame had."""
    counts = [len(b) for b in boxes]
    return np.concatenate([np.reshape(np.asarray(b, np.float64), (-1, 4)) for b in boxes]), counts


def _per_frame(
    vectors: npt.NDArray[np.float32], counts: Sequence[int]
) -> list[npt.NDArray[np.float32]]:
    """:func:`_flatten`'s rows given back frame by frame."""
    return list(np.split(vectors, np.cumsum(counts)[:-1]))


def describe_device_batch(
    images: Sequence[Any], boxes: Sequence[npt.NDArray[np.floating]]
) -> list[npt.NDArray[np.float32]]:
    """:func:`describe_host` for ``[H, W, 3]`` uint8 images of one size in GPU memory (objects
    with ``__cuda_array_interface__``, or torch tensors), all at once: every box's sample
    points gathered on the device in one indexing, one copy of ``K x (GRID_ROWS x GRID_COLS
    + RING)`` pixels to the host for the whole batch (one synchronisation, not one per
    frame), the histograms made there as for host images."""
    import torch

    tensors = [
        i if isinstance(i, torch.Tensor) else torch.as_tensor(i, device="cuda") for i in images
    ]
    height, width = int(tensors[0].shape[0]), int(tensors[0].shape[1])
    flat, counts = _flatten(boxes)
    ys, xs, ring_y, ring_x, inside, valid = sample_points(flat, width, height)
    if not valid.any():
        return _per_frame(np.zeros((len(flat), DIMS), np.float32), counts)
    dev = tensors[0].device
    frame = np.repeat(np.arange(len(images)), counts)
    stacked = torch.stack(tensors)  # [B, H, W, 3]
    rows = np.concatenate(
        [np.repeat(ys[:, :, None], GRID_COLS, 2).reshape(len(flat), -1), ring_y], axis=1
    )
    cols = np.concatenate(
        [np.repeat(xs[:, None, :], GRID_ROWS, 1).reshape(len(flat), -1), ring_x], axis=1
    )
    picked = stacked[
        torch.as_tensor(frame, device=dev)[:, None],
        torch.as_tensor(rows, device=dev),
        torch.as_tensor(cols, device=dev),
    ]  # [K, N + RING, 3]
    pixels = picked.cpu().numpy()
    n = GRID_ROWS * GRID_COLS
    out = from_samples(pixels[:, :n], pixels[:, n:], inside, valid)
    return _per_frame(out, counts)


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
    """:func:`describe` for several images: images of one size together, host images with
    numpy (:func:`describe_host_batch`), device images with torch
    (:func:`describe_device_batch`); a batch of mixed sizes or kinds one image at a time."""
    if not images:
        return []
    shapes = {tuple(getattr(i, "shape", ())) for i in images}
    host = [isinstance(i, np.ndarray) for i in images]
    if len(shapes) != 1 or (any(host) and not all(host)):
        return [describe(i, b) for i, b in zip(images, boxes, strict=True)]
    batch = describe_host_batch if all(host) else describe_device_batch
    return [to_bytes(v) for v in batch(images, boxes)]


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
