"""Drawing boxes on frames and writing PNG snapshots (no imaging library needed)."""

from __future__ import annotations

import struct
import zlib
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import numpy.typing as npt

_PALETTE = ((255, 56, 56), (56, 255, 56), (56, 128, 255), (255, 200, 0), (255, 0, 255))


def draw_box(
    image: npt.NDArray[np.uint8],
    box: tuple[float, float, float, float],
    colour: tuple[int, int, int],
    thickness: int = 2,
) -> None:
    """Draw a rectangle outline in place (clipped to the image)."""
    H, W = image.shape[:2]
    x1, y1, x2, y2 = (round(v) for v in box)
    x1, x2 = max(0, min(W - 1, x1)), max(0, min(W - 1, x2))
    y1, y2 = max(0, min(H - 1, y1)), max(0, min(H - 1, y2))
    t = thickness
    image[y1 : y1 + t, x1 : x2 + 1] = colour
    image[max(y1, y2 - t + 1) : y2 + 1, x1 : x2 + 1] = colour
    image[y1 : y2 + 1, x1 : x1 + t] = colour
    image[y1 : y2 + 1, max(x1, x2 - t + 1) : x2 + 1] = colour


def annotate(
    image: npt.NDArray[np.uint8],
    boxes: Iterable[tuple[int, tuple[float, float, float, float]]],
) -> npt.NDArray[np.uint8]:
    """Copy of ``image`` with ``(class_id, xyxy)`` boxes drawn in per-class colours."""
    out = np.ascontiguousarray(image).copy()
    thickness = max(2, image.shape[0] // 240)
    for class_id, box in boxes:
        draw_box(out, box, _PALETTE[class_id % len(_PALETTE)], thickness)
    return out


def write_png(path: str | Path, image: npt.NDArray[np.uint8]) -> Path:
    """Write an ``[H, W, 3]`` RGB uint8 image as PNG."""
    image = np.ascontiguousarray(image, dtype=np.uint8)
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected [H, W, 3] RGB, got {image.shape}")
    H, W = image.shape[:2]
    raw = b"".join(b"\x00" + image[row].tobytes() for row in range(H))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data))
            + kind
            + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
        )

    png = (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", W, H, 8, 2, 0, 0, 0))
        + chunk(b"IDAT", zlib.compress(raw, 6))
        + chunk(b"IEND", b"")
    )
    path = Path(path)
    path.write_bytes(png)
    return path
