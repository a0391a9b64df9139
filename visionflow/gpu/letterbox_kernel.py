"""One kernel from a decoded NV12 surface to the letterboxed RGB frame slot.

The torch path (:func:`visionflow.streams.nvdec.gpu_letterbox`) turns a 1080p NV12 surface
into a 640x640 letterboxed image with about twenty kernels over full-resolution float planes
(upsampled chroma, a float RGB frame, an antialiased resize, rounding, padding): on the H200
the ingest processes' GPU work kept the card 87-97 % busy at 64 streams
(``bench/results/h200-20261126/procs.json``).  This kernel does it in one launch, one thread
per output pixel: BT.601 limited-range NV12 -> RGB (the same coefficients as the torch path and
swscale's default), an area (box) average over the source pixels an output pixel covers when
shrinking (what swscale's bilinear does when downscaling), bilinear when enlarging, the pad
value outside the image.  It reads only the source pixels it needs, once.

Compiled at run time with NVRTC like :mod:`visionflow.gpu.kernels`, launched with the driver
API on the caller's CUDA stream.
"""

from __future__ import annotations

import ctypes
import functools
import os
import threading
from typing import Any

import numpy as np

from visionflow.errors import EngineError
from visionflow.gpu import cuda
from visionflow.gpu.cuda import check
from visionflow.pipeline.frames import Letterbox

KERNEL_NAME = b"nv12_letterbox"
BLOCK = (32, 8)
KERNEL_SOURCE = r"""
__device__ __forceinline__ void yuv_at(const unsigned char* y_plane, const unsigned char* uv,
                                       int pitch, int x, int y, float* acc)
{
    float Y = (float)y_plane[(long long)y * pitch + x];
    const unsigned char* c = uv + (long long)(y >> 1) * pitch + ((x >> 1) << 1);
    acc[0] += Y; acc[1] += (float)c[0]; acc[2] += (float)c[1];
}

extern "C" __global__ void nv12_letterbox(
    const unsigned char* y_plane, const unsigned char* uv, int pitch, int src_w, int src_h,
    unsigned char* out, int dst_w, int dst_h, int pad_x, int pad_y, int scaled_w, int scaled_h,
    int pad_value)
{
    int x = blockIdx.x * blockDim.x + threadIdx.x;
    int y = blockIdx.y * blockDim.y + threadIdx.y;
    if (x >= dst_w || y >= dst_h) return;
    unsigned char* o = out + ((long long)y * dst_w + x) * 3;
    int sx = x - pad_x, sy = y - pad_y;
    if (sx < 0 || sy < 0 || sx >= scaled_w || sy >= scaled_h) {
        o[0] = o[1] = o[2] = (unsigned char)pad_value;
        return;
    }
    float rx = (float)src_w / scaled_w, ry = (float)src_h / scaled_h;
    float acc[3] = {0.f, 0.f, 0.f};
    float n = 0.f;
    if (rx > 1.f || ry > 1.f) {  // shrinking: average the source box this pixel covers
        int x0 = (int)(sx * rx), x1 = max(x0 + 1, min(src_w, (int)ceilf((sx + 1) * rx)));
        int y0 = (int)(sy * ry), y1 = max(y0 + 1, min(src_h, (int)ceilf((sy + 1) * ry)));
        for (int j = y0; j < y1; ++j)
            for (int i = x0; i < x1; ++i) { yuv_at(y_plane, uv, pitch, i, j, acc); n += 1.f; }
        acc[0] /= n; acc[1] /= n; acc[2] /= n;
    } else {  // enlarging: bilinear between the four nearest source pixels
        float fx = fmaxf((sx + 0.5f) * rx - 0.5f, 0.f), fy = fmaxf((sy + 0.5f) * ry - 0.5f, 0.f);
        int x0 = min((int)fx, src_w - 1), y0 = min((int)fy, src_h - 1);
        int x1 = min(x0 + 1, src_w - 1), y1 = min(y0 + 1, src_h - 1);
        float ax = fx - x0, ay = fy - y0;
        float a[3] = {0.f, 0.f, 0.f}, b[3] = {0.f, 0.f, 0.f};
        float c[3] = {0.f, 0.f, 0.f}, d[3] = {0.f, 0.f, 0.f};
        yuv_at(y_plane, uv, pitch, x0, y0, a); yuv_at(y_plane, uv, pitch, x1, y0, b);
        yuv_at(y_plane, uv, pitch, x0, y1, c); yuv_at(y_plane, uv, pitch, x1, y1, d);
        for (int k = 0; k < 3; ++k) {
            float top = a[k] * (1.f - ax) + b[k] * ax, bottom = c[k] * (1.f - ax) + d[k] * ax;
            acc[k] = top * (1.f - ay) + bottom * ay;
        }
    }
    float luma = (acc[0] - 16.f) * 1.164f, u = acc[1] - 128.f, v = acc[2] - 128.f;
    float rgb[3] = {luma + 1.596f * v, luma - 0.392f * u - 0.813f * v, luma + 2.017f * u};
    for (int k = 0; k < 3; ++k) o[k] = (unsigned char)fminf(fmaxf(rintf(rgb[k]), 0.f), 255.f);
}
"""


def grid(letterbox: Letterbox) -> tuple[int, int]:
    """Blocks for one thread per output pixel."""
    bx, by = BLOCK
    return (letterbox.dst_w + bx - 1) // bx, (letterbox.dst_h + by - 1) // by


_POINTERS = frozenset({0, 1, 5})  # argument positions that are 8-byte pointers; the rest int32


class KernelArgs:
    """The kernel's 13 arguments in one preallocated buffer (8 bytes a slot; an int32 in the
    low half) and the array of their addresses that ``cuLaunchKernel`` reads: filled in place
    for each launch.  One per thread; building 13 small arrays per frame instead cost an
    ingest process ~10 % of its GIL time at 96 streams."""

    COUNT = 13

    def __init__(self) -> None:
        self.slots = np.zeros(self.COUNT, np.uint64)
        self._ints = self.slots.view(np.int32)  # little-endian: slot i's low half is 2 * i
        base = self.slots.ctypes.data
        self.addresses = np.array([base + 8 * i for i in range(self.COUNT)], np.uint64)
        self._table = int(self.addresses.ctypes.data)

    def fill(
        self, y_plane: int, uv_plane: int, pitch: int, lb: Letterbox, out: int, pad_value: int
    ) -> int:
        """Write the arguments in kernel order; returns the address of the address array."""
        ordered = (y_plane, uv_plane, pitch, lb.src_w, lb.src_h, out, lb.dst_w, lb.dst_h,
                   lb.pad_x, lb.pad_y, lb.scaled_w, lb.scaled_h, pad_value)  # fmt: skip
        for i, value in enumerate(ordered):
            if i in _POINTERS:
                self.slots[i] = value
            else:
                self._ints[2 * i] = value
        return self._table

    def values(self) -> list[int]:
        """The arguments as the kernel will read them (for tests)."""
        return [
            int(self.slots[i]) if i in _POINTERS else int(self._ints[2 * i])
            for i in range(self.COUNT)
        ]


@functools.cache
def _ctypes_launch() -> Any:
    """``cuLaunchKernel`` from the driver library through ctypes, which releases the GIL for
    the call (an ingest process launches from 100+ reader threads at once: through
    cuda-python the launch was a fifth of the process's GIL time at 128 streams); None where
    the library cannot be loaded (cuda-python's binding is used then)."""
    try:
        lib = ctypes.CDLL("libcuda.so.1")
    except OSError:
        return None
    fn = lib.cuLaunchKernel
    uint = ctypes.c_uint
    fn.argtypes = [ctypes.c_void_p, uint, uint, uint, uint, uint, uint, uint,
                   ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p]  # fmt: skip
    fn.restype = ctypes.c_int
    return fn


def compile_letterbox_cubin(major: int, minor: int) -> bytes:
    from visionflow.gpu.kernels import arch_option, compile_source

    return compile_source(KERNEL_SOURCE, b"visionflow_letterbox.cu", [arch_option(major, minor)])


class LetterboxKernel:
    """The kernel loaded into the current CUDA context (the ingest process's device)."""

    def __init__(self, major: int, minor: int) -> None:
        self._driver = driver = cuda.driver()
        check(driver.cuInit(0), "cuInit")
        # the module lives in this context; every thread that launches must have it current
        # (an ingest process decodes each stream on its own thread, where nothing made any
        # context current: cuLaunchKernel answered CUDA_ERROR_INVALID_CONTEXT there)
        self._context = check(driver.cuCtxGetCurrent(), "cuCtxGetCurrent")
        if self._context is None or int(self._context) == 0:
            raise EngineError("no current CUDA context to load the letterbox kernel into")
        self._bound = threading.local()
        image = np.frombuffer(compile_letterbox_cubin(major, minor), np.uint8).copy()
        self._module = check(driver.cuModuleLoadData(image.ctypes.data), "cuModuleLoadData")
        self._function = check(
            driver.cuModuleGetFunction(self._module, KERNEL_NAME), "cuModuleGetFunction"
        )
        self._function_ptr = int(self._function)
        self._c_launch = (
            None if os.environ.get("VISIONFLOW_LAUNCH") == "cuda-python" else (_ctypes_launch())
        )

    def _bind_context(self) -> Any:
        """Make the kernel's context current on the calling thread (once per thread); the
        thread's argument buffer and stream handle."""
        bound = self._bound
        if getattr(bound, "done", False):
            return bound
        current = check(self._driver.cuCtxGetCurrent(), "cuCtxGetCurrent")
        if current is None or int(current) != int(self._context):
            check(self._driver.cuCtxSetCurrent(self._context), "cuCtxSetCurrent")
        bound.args, bound.stream, bound.stream_handle = KernelArgs(), None, None
        bound.done = True
        return bound

    def launch(
        self,
        y_plane: int,
        uv_plane: int,
        pitch: int,
        letterbox: Letterbox,
        out: int,
        pad_value: int,
        stream: int,
    ) -> None:
        if pitch < letterbox.src_w:
            raise EngineError(f"NV12 pitch {pitch} is narrower than the frame ({letterbox.src_w})")
        bound = self._bind_context()
        args = bound.args.fill(y_plane, uv_plane, pitch, letterbox, out, pad_value)
        gx, gy = grid(letterbox)
        if self._c_launch is not None:  # ctypes lets the GIL go for the driver call
            rc = self._c_launch(self._function_ptr, gx, gy, 1, *BLOCK, 1, 0, stream, args, None)
            if rc != 0:
                raise EngineError(f"cuLaunchKernel failed: CUresult {rc}")
            return
        if bound.stream_handle != stream:
            bound.stream, bound.stream_handle = self._driver.CUstream(stream), stream
        check(
            self._driver.cuLaunchKernel(
                self._function,
                gx,
                gy,
                1,
                BLOCK[0],
                BLOCK[1],
                1,
                0,
                bound.stream,
                args,
                0,
            ),
            "cuLaunchKernel",
        )

    def close(self) -> None:
        self._driver.cuModuleUnload(self._module)
