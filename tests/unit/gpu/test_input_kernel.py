"""The input kernel: frame-pointer tables (checked on the CPU), NVRTC compilation (runs
wherever the nvidia-cuda-nvrtc wheel is, no GPU needed) and the conversion itself (GPU)."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

from visionflow.errors import EngineError
from visionflow.gpu.kernels import (
    arch_option,
    compile_cubin,
    frame_pointers,
    grid_for,
    staging_pointers,
)
from visionflow.pipeline.letterbox import to_network_input

needs_nvrtc = pytest.mark.skipif(
    importlib.util.find_spec("cuda") is None or importlib.util.find_spec("cuda.bindings") is None,
    reason="needs cuda-bindings (cuda-python) with the NVRTC wheel",
)


class _Frame:
    """A device-array stand-in: only its ``__cuda_array_interface__`` is read."""

    def __init__(self, pointer: int, shape: tuple[int, ...], typestr="|u1", strides=None):
        self.__cuda_array_interface__ = {
            "shape": shape,
            "typestr": typestr,
            "data": (pointer, False),
            "strides": strides,
            "version": 3,
        }


def test_frame_pointers_lists_addresses_in_batch_order():
    frames = [_Frame(4096 * (i + 1), (4, 6, 3)) for i in range(3)]
    assert frame_pointers(frames, 4, 6).tolist() == [4096, 8192, 12288]
    contiguous = _Frame(1, (4, 6, 3), strides=(18, 3, 1))
    assert frame_pointers([contiguous], 4, 6).tolist() == [1]


@pytest.mark.parametrize(
    ("frame", "message"),
    [
        (_Frame(1, (6, 4, 3)), r"frame 0 is \|u1 \(6, 4, 3\); expected \|u1 \(4, 6, 3\)"),
        (_Frame(1, (4, 6, 3), typestr="<f4"), "frame 0 is <f4"),
        (_Frame(1, (4, 6, 3), strides=(36, 6, 2)), "frame 0 is not C-contiguous"),
    ],
)
def test_frame_pointers_refuses_frames_the_kernel_would_misread(frame, message):
    with pytest.raises(ValueError, match=message):
        frame_pointers([frame], 4, 6)


def test_frame_pointers_refuses_host_arrays():
    with pytest.raises(TypeError, match="frame 1 is not in GPU memory"):
        frame_pointers([_Frame(1, (4, 6, 3)), np.zeros((4, 6, 3), np.uint8)], 4, 6)


def test_staging_pointers_and_grid():
    assert staging_pointers(1000, 3, 2, 2).tolist() == [1000, 1012, 1024]
    assert grid_for(1, 256) == 1 and grid_for(2, 640 * 640) == 3200 and grid_for(1, 257) == 2
    with pytest.raises(ValueError, match="nothing to convert"):
        grid_for(0, 10)
    assert arch_option(9, 0) == b"--gpu-architecture=sm_90"


@needs_nvrtc
@pytest.mark.parametrize("arch", [(7, 5), (8, 6), (9, 0)])
def test_kernel_compiles_to_a_cubin(arch):
    cubin = compile_cubin([arch_option(*arch), b"--fmad=false"])
    assert cubin[:4] == b"\x7fELF", "NVRTC did not return an ELF cubin"


@needs_nvrtc
def test_compile_error_carries_nvrtcs_log():
    with pytest.raises(EngineError, match="unrecognized option --no-such-flag"):
        compile_cubin([b"--no-such-flag"])


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_kernel_matches_the_cpu_normalisation_bit_for_bit(dtype):
    from visionflow.gpu.cuda import check, runtime
    from visionflow.gpu.ipc import DeviceArray, ExportedMemory
    from visionflow.gpu.kernels import InputKernel

    rt = runtime()
    height, width, n = 96, 160, 3
    rng = np.random.default_rng(7)
    images = rng.integers(0, 256, (n, height, width, 3), dtype=np.uint8)
    slots = [ExportedMemory(height * width * 3) for _ in range(n)]  # scattered, like IPC slots
    out_bytes = n * 3 * height * width * np.dtype(dtype).itemsize
    out = int(check(rt.cudaMalloc(out_bytes), "cudaMalloc"))
    table = int(check(rt.cudaMalloc(n * 8), "cudaMalloc"))
    stream = int(check(rt.cudaStreamCreate(), "cudaStreamCreate"))
    h2d, d2h = rt.cudaMemcpyKind.cudaMemcpyHostToDevice, rt.cudaMemcpyKind.cudaMemcpyDeviceToHost
    try:
        for i, slot in enumerate(reversed(slots)):  # batch order != allocation order
            check(rt.cudaMemcpy(slot.pointer, images[i].ctypes.data, images[i].nbytes, h2d), "up")
        frames = [DeviceArray(s.pointer, (height, width, 3)) for s in reversed(slots)]
        pointers = frame_pointers(frames, height, width)
        check(rt.cudaMemcpy(table, pointers.ctypes.data, pointers.nbytes, h2d), "table")
        props = check(rt.cudaGetDeviceProperties(0), "props")
        kernel = InputKernel(props.major, props.minor)
        kernel.launch(table, out, n, height * width, dtype == "float16", stream)
        check(rt.cudaStreamSynchronize(stream), "sync")
        got = np.empty((n, 3, height, width), dtype)
        check(rt.cudaMemcpy(got.ctypes.data, out, got.nbytes, d2h), "down")
        kernel.close()
    finally:
        rt.cudaFree(out)
        rt.cudaFree(table)
        rt.cudaStreamDestroy(stream)
        for slot in slots:
            slot.close()
    expected = to_network_input(images, dtype)
    assert got.dtype == expected.dtype
    mismatch = np.flatnonzero(got.view(np.uint8) != expected.view(np.uint8))
    assert mismatch.size == 0, f"{mismatch.size} bytes differ from to_network_input"
