"""Letterbox geometry: fit a frame into the network input and map boxes back."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from visionflow.pipeline.frames import Letterbox

PAD_VALUE = 114  # the grey YOLOv8 pads with


def letterbox_geometry(src_w: int, src_h: int, dst_w: int, dst_h: int) -> Letterbox:
    """Scale keeping aspect ratio so the frame fits ``dst``, centred, padding the rest."""
    if min(src_w, src_h, dst_w, dst_h) <= 0:
        raise ValueError(f"bad sizes: src {src_w}x{src_h}, dst {dst_w}x{dst_h}")
    scale = min(dst_w / src_w, dst_h / src_h)
    scaled_w = min(dst_w, max(1, round(src_w * scale)))
    scaled_h = min(dst_h, max(1, round(src_h * scale)))
    return Letterbox(
        src_w=src_w,
        src_h=src_h,
        dst_w=dst_w,
        dst_h=dst_h,
        scale=scale,
        pad_x=(dst_w - scaled_w) // 2,
        pad_y=(dst_h - scaled_h) // 2,
        scaled_w=scaled_w,
        scaled_h=scaled_h,
    )


def paste_letterboxed(
    dst: npt.NDArray[np.uint8], scaled: npt.NDArray[np.uint8], lb: Letterbox
) -> None:
    """Write an already-scaled RGB image into ``dst`` (``[H, W, 3]``) and fill the padding."""
    y0, x0 = lb.pad_y, lb.pad_x
    y1, x1 = y0 + lb.scaled_h, x0 + lb.scaled_w
    dst[:y0] = PAD_VALUE
    dst[y1:] = PAD_VALUE
    dst[y0:y1, :x0] = PAD_VALUE
    dst[y0:y1, x1:] = PAD_VALUE
    dst[y0:y1, x0:x1] = scaled


def unletterbox_boxes(boxes: npt.NDArray[np.float32], lb: Letterbox) -> npt.NDArray[np.float32]:
    """Map ``[K, 4]`` xyxy boxes from network-input pixels to frame pixels, clipped."""
    out = boxes.astype(np.float32, copy=True)
    out[:, [0, 2]] = (out[:, [0, 2]] - lb.pad_x) / lb.scale
    out[:, [1, 3]] = (out[:, [1, 3]] - lb.pad_y) / lb.scale
    out[:, [0, 2]] = np.clip(out[:, [0, 2]], 0, lb.src_w)
    out[:, [1, 3]] = np.clip(out[:, [1, 3]], 0, lb.src_h)
    return out


def to_network_input(
    images: npt.NDArray[np.uint8],
    dtype: str = "float32",
    out: npt.NDArray[np.floating] | None = None,
) -> npt.NDArray[np.floating]:
    """``[N, H, W, 3]`` uint8 RGB -> ``[N, 3, H, W]`` float in [0, 1] (written into ``out``,
    of that shape, where given)."""
    chw = images.transpose(0, 3, 1, 2)
    if out is None:
        out = np.empty(chw.shape, dtype=np.dtype(dtype))
    np.multiply(chw, np.float32(1.0 / 255.0), out=out, casting="unsafe")
    return out


def scale_frame_into(frame: object, dst: npt.NDArray[np.uint8], lb: Letterbox) -> None:
    """Scale a decoded PyAV ``VideoFrame`` (swscale, bilinear) and letterbox it into ``dst``."""
    import av

    assert isinstance(frame, av.VideoFrame)
    scaled: npt.NDArray[np.uint8] = frame.reformat(
        width=lb.scaled_w, height=lb.scaled_h, format="rgb24", interpolation="BILINEAR"
    ).to_ndarray()  # type: ignore[assignment]
    paste_letterboxed(dst, scaled, lb)


def letterbox_image(
    image: npt.NDArray[np.uint8], dst_w: int, dst_h: int
) -> tuple[npt.NDArray[np.uint8], Letterbox]:
    """Letterbox an ``[H, W, 3]`` RGB array exactly as the ingest path does."""
    import av

    lb = letterbox_geometry(image.shape[1], image.shape[0], dst_w, dst_h)
    canvas = np.empty((dst_h, dst_w, 3), np.uint8)
    scale_frame_into(
        av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24"), canvas, lb
    )
    return canvas, lb
