"""The one CUDA kernel visionflow compiles itself: letterboxed uint8 frames -> network input.

Backends without a tensor library (TensorRT on cuda-python) still need frames that stayed on
the GPU turned into the engine's input batch without a trip through host memory.  The kernel
reads ``n`` frames, each ``[H, W, 3]`` uint8 RGB anywhere in device memory (CUDA IPC slots of
several ingest processes, or one staging buffer), through a device array of frame pointers,
and writes ``[n, 3, H, W]`` float32 or float16 in ``[0, 1]`` straight into the engine's input
binding: the same arithmetic as :func:`visionflow.pipeline.letterbox.to_network_input`
(``u8 * float32(1/255)``, fp16 rounded to nearest even), so results match the CPU path bit
for bit.

It is compiled at run time with NVRTC (``cuda.bindings.nvrtc``) to a cubin for the GPU it runs
on, loaded and launched with the driver API; no CUDA toolkit is needed beyond the
``nvidia-cuda-nvrtc`` wheel.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from visionflow.errors import EngineError
from visionflow.gpu import cuda
from visionflow.gpu.cuda import check

KERNEL_NAME = b"hwc_u8_to_nchw"
THREADS_PER_BLOCK = 256
KERNEL_SOURCE = r"""
extern "C" __global__ void hwc_u8_to_nchw(const unsigned char* const* frames, void* out,
                                          int n, int hw, int half_out)
{
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (long long)n * hw) return;
    int b = (int)(i / hw);
    int p = (int)(i - (long long)b * hw);
    const unsigned char* px = frames[b] + (long long)p * 3;
    const float scale = 1.0f / 255.0f;
    long long base = (long long)b * 3 * hw + p;
    for (int c = 0; c < 3; ++c) {
        float v = (float)px[c] * scale;
        long long at = base + (long long)c * hw;
        if (half_out) {
            unsigned short h;
            asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(v));
            ((unsigned short*)out)[at] = h;
        } else {
            ((float*)out)[at] = v;
        }
    }
}
"""


# ---------------------------------------------------------------------------- pure logic
def frame_pointers(frames: Sequence[Any], height: int, width: int) -> npt.NDArray[np.uint64]:
    """Device addresses of ``frames`` (objects with ``__cuda_array_interface__``), checked to
    be contiguous ``[height, width, 3]`` uint8 arrays: a wrong frame is an error naming it,
    never a garbled batch."""
    pointers = np.empty(len(frames), np.uint64)
    for i, frame in enumerate(frames):
        cai = getattr(frame, "__cuda_array_interface__", None)
        if cai is None:
            raise TypeError(f"frame {i} is not in GPU memory (no __cuda_array_interface__)")
        shape = tuple(int(s) for s in cai["shape"])
        if shape != (height, width, 3) or cai["typestr"] != "|u1":
            raise ValueError(
                f"frame {i} is {cai['typestr']} {shape}; expected |u1 ({height}, {width}, 3)"
            )
        strides = cai.get("strides")
        if strides is not None and tuple(strides) != (width * 3, 3, 1):
            raise ValueError(f"frame {i} is not C-contiguous (strides {tuple(strides)})")
        pointers[i] = int(cai["data"][0])
    return pointers


def staging_pointers(base: int, count: int, height: int, width: int) -> npt.NDArray[np.uint64]:
    """Addresses of ``count`` consecutive ``[height, width, 3]`` uint8 images from ``base``."""
    return np.uint64(base) + np.arange(count, dtype=np.uint64) * np.uint64(height * width * 3)


def grid_for(n: int, hw: int, threads: int = THREADS_PER_BLOCK) -> int:
    """Blocks needed for one thread per pixel of ``n`` images of ``hw`` pixels."""
    if n <= 0 or hw <= 0:
        raise ValueError(f"nothing to convert: n={n}, hw={hw}")
    return (n * hw + threads - 1) // threads


def arch_option(major: int, minor: int) -> bytes:
    """NVRTC's ``--gpu-architecture`` for a device of compute capability ``major.minor``:
    real SASS (``sm_XY``), not PTX, because a driver older than NVRTC cannot JIT newer PTX
    while CUDA's minor-version compatibility does run newer cubins."""
    return f"--gpu-architecture=sm_{major}{minor}".encode()


# ---------------------------------------------------------------------------- CUDA parts
def compile_cubin(options: Sequence[bytes]) -> bytes:
    """NVRTC-compile :data:`KERNEL_SOURCE` for the ``sm_XY`` in ``options``."""
    return compile_source(KERNEL_SOURCE, b"visionflow_input.cu", options)


def compile_source(source: str, name: bytes, options: Sequence[bytes]) -> bytes:
    """NVRTC-compile a kernel source to a cubin for the ``sm_XY`` in ``options``; a compile
    error carries NVRTC's log."""
    nvrtc = cuda.nvrtc()
    prog = check(
        nvrtc.nvrtcCreateProgram(source.encode(), name, 0, [], []),
        "nvrtcCreateProgram",
    )
    try:
        (err,) = nvrtc.nvrtcCompileProgram(prog, len(options), list(options))
        if int(err) != 0:
            size = check(nvrtc.nvrtcGetProgramLogSize(prog), "nvrtcGetProgramLogSize")
            log = b" " * size
            check(nvrtc.nvrtcGetProgramLog(prog, log), "nvrtcGetProgramLog")
            text = log.decode(errors="replace").rstrip("\x00").strip()
            raise EngineError(f"NVRTC could not compile {name.decode()}: {text}")
        size = check(nvrtc.nvrtcGetCUBINSize(prog), "nvrtcGetCUBINSize")
        cubin = b" " * size
        check(nvrtc.nvrtcGetCUBIN(prog, cubin), "nvrtcGetCUBIN")
        return bytes(cubin)
    finally:
        nvrtc.nvrtcDestroyProgram(prog)


class InputKernel:
    """:data:`KERNEL_SOURCE` loaded into the current CUDA context (the runtime's primary
    context of the device the caller selected with ``cudaSetDevice``)."""

    def __init__(self, major: int, minor: int) -> None:
        self._driver = driver = cuda.driver()
        check(driver.cuInit(0), "cuInit")
        cubin = compile_cubin([arch_option(major, minor), b"--fmad=false"])
        image = np.frombuffer(cubin, np.uint8).copy()  # the driver reads it by address
        self._module = check(driver.cuModuleLoadData(image.ctypes.data), "cuModuleLoadData")
        self._function = check(
            driver.cuModuleGetFunction(self._module, KERNEL_NAME), "cuModuleGetFunction"
        )

    def launch(
        self, pointer_table: int, out: int, n: int, hw: int, half: bool, stream: int
    ) -> None:
        """Convert ``n`` frames listed at device address ``pointer_table`` into ``out``."""
        values = (
            np.array([pointer_table], np.uint64),
            np.array([out], np.uint64),
            np.array([n], np.int32),
            np.array([hw], np.int32),
            np.array([1 if half else 0], np.int32),
        )
        args = np.array([v.ctypes.data for v in values], np.uint64)
        check(
            self._driver.cuLaunchKernel(
                self._function,
                grid_for(n, hw),
                1,
                1,
                THREADS_PER_BLOCK,
                1,
                1,
                0,
                self._driver.CUstream(stream),
                args.ctypes.data,
                0,
            ),
            "cuLaunchKernel",
        )

    def close(self) -> None:
        self._driver.cuModuleUnload(self._module)
