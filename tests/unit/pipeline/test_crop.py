"""Copying a letterboxed slot's content out, from host memory and from GPU memory."""

from __future__ import annotations

import numpy as np
import pytest

from visionflow.pipeline.crop import copy_content
from visionflow.pipeline.letterbox import letterbox_geometry

LB = letterbox_geometry(1280, 720, 320, 320)  # content 320x180 at pad_y 70


def _slot() -> np.ndarray:
    rng = np.random.default_rng(3)
    return rng.integers(0, 255, (320, 320, 3), dtype=np.uint8)


def test_host_slot_content_is_copied_without_padding() -> None:
    slot = _slot()
    out = copy_content(slot, LB)
    assert (LB.pad_x, LB.pad_y, LB.scaled_w, LB.scaled_h) == (0, 70, 320, 180)
    np.testing.assert_array_equal(out, slot[70:250, 0:320])
    assert out.flags.c_contiguous and not np.shares_memory(out, slot)


@pytest.mark.gpu
def test_device_slot_content_matches_the_host_copy() -> None:
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("needs an NVIDIA GPU")
    from visionflow.gpu.ipc import DeviceArray

    slot = _slot()
    tall = letterbox_geometry(360, 640, 320, 320)  # pillarboxed: content at pad_x > 0
    on_gpu = torch.from_numpy(slot).cuda()
    torch.cuda.synchronize()
    image = DeviceArray(on_gpu.data_ptr(), (320, 320, 3))
    for lb in (LB, tall):
        y, x = lb.pad_y, lb.pad_x
        expected = slot[y : y + lb.scaled_h, x : x + lb.scaled_w]
        np.testing.assert_array_equal(copy_content(image, lb), expected)
