"""The fused NV12 -> letterboxed RGB kernel: its launch geometry and arguments (CPU), NVRTC
compilation (no GPU needed) and its pixels against the torch path it replaces (GPU)."""

from __future__ import annotations

import ctypes
import importlib.util

import numpy as np
import pytest

from visionflow.gpu.kernels import arch_option
from visionflow.gpu.letterbox_kernel import (
    BLOCK,
    KERNEL_SOURCE,
    KernelArgs,
    compile_letterbox_cubin,
    grid,
)
from visionflow.pipeline.letterbox import PAD_VALUE, letterbox_geometry

needs_nvrtc = pytest.mark.skipif(
    importlib.util.find_spec("cuda") is None or importlib.util.find_spec("cuda.bindings") is None,
    reason="needs cuda-bindings (cuda-python) with the NVRTC wheel",
)


def test_one_thread_per_output_pixel_and_arguments_in_kernel_order():
    lb = letterbox_geometry(1920, 1080, 640, 640)
    gx, gy = grid(lb)
    assert gx * BLOCK[0] >= 640 > (gx - 1) * BLOCK[0] and gy * BLOCK[1] >= 640
    args = KernelArgs()
    address = args.fill(0x1000, 0x2000, 2048, lb, 0x9000, PAD_VALUE)
    expected = [0x1000, 0x2000, 2048, 1920, 1080, 0x9000, 640, 640, lb.pad_x, lb.pad_y,
                lb.scaled_w, lb.scaled_h, PAD_VALUE]  # fmt: skip
    assert args.values() == expected
    # the driver reads argument i at the i-th address: 8 bytes for pointers, 4 for ints
    table = np.ctypeslib.as_array((ctypes.c_uint64 * 13).from_address(address))
    read = [
        ctypes.c_uint64.from_address(int(a)).value if i in (0, 1, 5)
        else ctypes.c_int32.from_address(int(a)).value
        for i, a in enumerate(table)
    ]  # fmt: skip
    assert read == expected
    args.fill(0x3000, 0x4000, 4096, lb, 0xA000, PAD_VALUE)  # refilled in place
    assert args.values()[:3] == [0x3000, 0x4000, 4096] and int(table[0]) == int(args.addresses[0])
    assert KERNEL_SOURCE.count("int ") >= 10


@needs_nvrtc
@pytest.mark.parametrize("arch", [(7, 5), (8, 6), (9, 0)])
def test_kernel_compiles_to_a_cubin(arch):
    assert arch_option(*arch).startswith(b"--gpu-architecture=sm_")
    assert compile_letterbox_cubin(*arch)[:4] == b"\x7fELF"


@pytest.mark.gpu
@pytest.mark.parametrize(
    ("size", "pad_pitch"), [((1920, 1080), 0), ((640, 360), 64), ((320, 240), 0)]
)
def test_kernel_matches_the_torch_letterbox(size, pad_pitch):
    import torch

    from visionflow.gpu.letterbox_kernel import LetterboxKernel
    from visionflow.streams.nvdec import gpu_letterbox

    w, h = size
    rows = h + (8 if h % 16 else 0)  # decoder surfaces pad the height
    gen = torch.Generator(device="cuda").manual_seed(7)
    # a smooth picture (as cameras give), not noise: box vs antialiased bilinear then agree
    yy, xx = torch.meshgrid(torch.arange(rows * 3 // 2), torch.arange(w + pad_pitch), indexing="ij")
    base = ((xx * 3 + yy * 2) % 220 + 16).to(torch.uint8).cuda()
    noise = torch.randint(0, 6, base.shape, generator=gen, device="cuda", dtype=torch.uint8)
    surface = (base + noise)[:, :w]  # a pitch wider than the frame when pad_pitch > 0
    lb = letterbox_geometry(w, h, 640, 640)
    expected = gpu_letterbox(surface, lb)
    got = torch.empty_like(expected)
    major, minor = torch.cuda.get_device_capability()
    kernel = LetterboxKernel(major, minor)
    stream = torch.cuda.current_stream()
    pitch = int(surface.stride(0))
    base_ptr = int(surface.data_ptr())
    kernel.launch(
        base_ptr,
        base_ptr + rows * pitch,
        pitch,
        lb,
        int(got.data_ptr()),
        PAD_VALUE,
        stream.cuda_stream,
    )
    stream.synchronize()
    kernel.close()
    diff = (got.int() - expected.int()).abs()
    inside = diff[lb.pad_y : lb.pad_y + lb.scaled_h, lb.pad_x : lb.pad_x + lb.scaled_w]
    assert float(inside.float().mean()) < 4.0, f"mean |diff| {float(inside.float().mean()):.2f}"
    pad = got.clone()
    pad[lb.pad_y : lb.pad_y + lb.scaled_h, lb.pad_x : lb.pad_x + lb.scaled_w] = PAD_VALUE
    assert bool((pad == PAD_VALUE).all()), "the padding bands are exact"


@pytest.mark.gpu
def test_kernel_launches_from_threads_that_did_not_load_it():
    """Ingest decodes each stream on its own thread: the kernel loaded on one thread must
    launch on another where nothing made a CUDA context current (it failed with
    CUDA_ERROR_INVALID_CONTEXT on every stream's thread before the context was bound)."""
    import threading

    import torch

    from visionflow.gpu.letterbox_kernel import LetterboxKernel

    w, h = 320, 240
    surface = torch.full((h * 3 // 2, w), 128, dtype=torch.uint8, device="cuda")
    lb = letterbox_geometry(w, h, 64, 64)
    major, minor = torch.cuda.get_device_capability()
    kernel = LetterboxKernel(major, minor)
    results: list[object] = []

    def launch() -> None:
        try:
            out = torch.empty((64, 64, 3), dtype=torch.uint8, device="cuda")
            base = int(surface.data_ptr())
            kernel.launch(base, base + h * w, w, lb, int(out.data_ptr()), PAD_VALUE, 0)
            torch.cuda.synchronize()
            results.append(int(out[32, 32, 0]))
        except Exception as exc:  # reported below with the thread's error
            results.append(exc)

    threads = [threading.Thread(target=launch) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    kernel.close()
    assert len(results) == 3 and all(isinstance(r, int) for r in results), results
