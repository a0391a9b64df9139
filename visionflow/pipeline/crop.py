"""Copy the picture out of a letterboxed frame slot (host or GPU memory) into host memory.

A slot holds the network input: the frame scaled by ``letterbox.scale`` and padded.  The
content, ``[scaled_h, scaled_w, 3]`` at ``(pad_x, pad_y)``, is what a snapshot shows: boxes in
original pixels times ``scale`` land on it.  A GPU slot (a
:class:`~visionflow.gpu.ipc.DeviceArray`) is copied with one strided ``cudaMemcpy2DAsync`` on
a non-blocking stream of its own, so it never waits for the engine's work on other streams.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

from visionflow.pipeline.frames import Letterbox


def copy_content(image: Any, lb: Letterbox) -> npt.NDArray[np.uint8]:
    """A host copy of the content region of a letterboxed ``[H, W, 3]`` slot."""
    y, x, h, w = lb.pad_y, lb.pad_x, lb.scaled_h, lb.scaled_w
    if isinstance(image, np.ndarray):
        return np.array(image[y : y + h, x : x + w], dtype=np.uint8, copy=True)
    return _copy_from_device(image, x, y, w, h)


class _CopyStream:
    """One non-blocking CUDA stream per process, created on first use."""

    handle: Any = None


def _copy_from_device(image: Any, x: int, y: int, w: int, h: int) -> npt.NDArray[np.uint8]:
    from visionflow.gpu.cuda import check, runtime

    rt = runtime()
    if _CopyStream.handle is None:
        _CopyStream.handle = check(
            rt.cudaStreamCreateWithFlags(rt.cudaStreamNonBlocking), "cudaStreamCreateWithFlags"
        )
    pitch = int(image.shape[1]) * 3
    src = int(image.pointer) + y * pitch + x * 3
    out = np.empty((h, w, 3), np.uint8)
    check(
        rt.cudaMemcpy2DAsync(
            out.ctypes.data,
            w * 3,
            src,
            pitch,
            w * 3,
            h,
            rt.cudaMemcpyKind.cudaMemcpyDeviceToHost,
            _CopyStream.handle,
        ),
        "cudaMemcpy2DAsync (snapshot frame)",
    )
    check(rt.cudaStreamSynchronize(_CopyStream.handle), "cudaStreamSynchronize")
    return out
