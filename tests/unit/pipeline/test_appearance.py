"""Appearance descriptors: what a box of known colours gives, edges, empty boxes, transport."""

from __future__ import annotations

import pickle
from typing import Any

import numpy as np
import pytest

from visionflow.pipeline import appearance
from visionflow.pipeline.appearance import (
    DESCRIPTOR_BYTES,
    DIMS,
    GRID_ROWS,
    AppearanceHook,
    decode,
    describe,
    describe_host,
)
from visionflow.pipeline.frames import Detection, FrameRef, Letterbox
from visionflow.pipeline.postprocess import to_detections


def _expected(*row_colours: tuple[int, int, int]) -> np.ndarray:
    """The unit vector of a box whose cell rows have these colours (top to bottom)."""
    raw = np.array([c for c in row_colours], np.float64).reshape(-1) / 127.5 - 1.0
    return raw / np.linalg.norm(raw)


def _two_tone(h: int = 40, w: int = 20) -> np.ndarray:
    """An image of ``h`` x ``w``: red above, blue below, on a grey background of 100 px."""
    image = np.full((100, 100, 3), 128, np.uint8)
    image[10 : 10 + h // 2, 30 : 30 + w] = (200, 0, 0)
    image[10 + h // 2 : 10 + h, 30 : 30 + w] = (0, 0, 200)
    return image


def test_a_box_of_known_colours_gives_their_layout():
    image = _two_tone()
    got = describe_host(image, np.array([[30, 10, 50, 50]], np.float32))[0]
    want = _expected((200, 0, 0), (200, 0, 0), (0, 0, 200), (0, 0, 200))
    assert got.shape == (DIMS,) and DIMS == GRID_ROWS * 3
    np.testing.assert_allclose(got, want, atol=1e-6)
    assert np.linalg.norm(got) == pytest.approx(1.0)


def test_the_layout_tells_top_from_bottom_and_a_brighter_copy_stays_close():
    image = _two_tone()
    flipped = image.copy()
    flipped[10:50, 30:50] = image[10:50, 30:50][::-1]  # blue above, red below
    box = np.array([[30, 10, 50, 50]], np.float32)
    a, b = describe_host(image, box)[0], describe_host(flipped, box)[0]
    assert float(a @ b) < 0.5
    brighter = np.clip(image.astype(np.int32) * 11 // 10, 0, 255).astype(np.uint8)
    assert float(a @ describe_host(brighter, box)[0]) > 0.97


def test_fractional_boxes_cover_the_pixels_they_touch():
    image = _two_tone()
    exact = describe_host(image, np.array([[30, 10, 50, 50]], np.float32))[0]
    fractional = describe_host(image, np.array([[30.4, 10.2, 49.6, 49.9]], np.float32))[0]
    np.testing.assert_allclose(fractional, exact, atol=1e-6)


def test_a_box_past_the_image_edge_is_clipped_to_what_is_inside():
    image = np.zeros((100, 100, 3), np.uint8)
    image[:, 90:] = (250, 250, 0)  # a yellow strip at the right edge
    clipped = describe_host(image, np.array([[90, 20, 130, 60]], np.float32))[0]
    np.testing.assert_allclose(clipped, _expected(*[(250, 250, 0)] * 4), atol=1e-6)
    above = describe_host(image, np.array([[92, -30, 100, 10]], np.float32))[0]
    np.testing.assert_allclose(above, clipped, atol=1e-6)


def test_a_box_one_pixel_high_still_fills_every_cell():
    image = np.zeros((10, 10, 3), np.uint8)
    image[4, 2:6] = (0, 255, 0)
    got = describe_host(image, np.array([[2, 4, 6, 5]], np.float32))[0]
    np.testing.assert_allclose(got, _expected(*[(0, 255, 0)] * 4), atol=1e-6)


def test_empty_and_outside_boxes_have_no_descriptor():
    image = _two_tone()
    boxes = np.array(
        [
            [30, 10, 30, 50],  # zero width
            [30, 10, 50, 10],  # zero height
            [120, 10, 150, 50],  # right of the image
            [-40, -40, -1, -1],  # above and left
            [50, 50, 40, 60],  # inverted
            [30, 10, 50, 50],  # a real one
        ],
        np.float32,
    )
    vectors = describe_host(image, boxes)
    assert not vectors[:5].any() and vectors[5].any()
    looks = describe(image, boxes)
    assert looks[:5] == [None] * 5 and looks[5] is not None
    assert describe(image, np.zeros((0, 4), np.float32)) == []


def test_descriptors_travel_as_small_float16_bytes():
    image = _two_tone()
    (look,) = describe(image, np.array([[30, 10, 50, 50]], np.float32))
    assert isinstance(look, bytes) and len(look) == DESCRIPTOR_BYTES == DIMS * 2
    np.testing.assert_allclose(
        decode(look), describe_host(image, np.array([[30, 10, 50, 50]]))[0], atol=2e-3
    )
    plain = Detection(0, "person", 0.9, 1.0, 2.0, 3.0, 4.0)
    described = Detection(0, "person", 0.9, 1.0, 2.0, 3.0, 4.0, appearance=look)
    assert len(pickle.dumps(described)) - len(pickle.dumps(plain)) < 80


def test_to_detections_keeps_each_descriptor_with_its_box():
    lb = Letterbox(100, 100, 100, 100, 1.0, 0, 0, 100, 100)
    boxes = np.array([[30, 10, 50, 50], [60, 60, 60, 70], [0, 0, 10, 10]], np.float32)
    decoded = (boxes, np.array([0.9, 0.8, 0.7], np.float32), np.zeros(3, np.intp))
    looks = [b"a" * DESCRIPTOR_BYTES, b"b" * DESCRIPTOR_BYTES, None]
    dets = to_detections(decoded, lb, ["person"], looks)
    assert [d.score for d in dets] == [0.9, 0.7]  # the empty box is dropped with its look
    assert [d.appearance for d in dets] == [looks[0], None]
    assert all(d.appearance is None for d in to_detections(decoded, lb, ["person"]))


class _Pools:
    def __init__(self, image: Any) -> None:
        self.image_ = image

    def get(self, name: str) -> _Pools:
        return self

    def image(self, slot: int) -> Any:
        return self.image_


def _frame(stream_id: str) -> FrameRef:
    lb = Letterbox(100, 100, 100, 100, 1.0, 0, 0, 100, 100)
    return FrameRef(stream_id, 1, None, 0.0, 1.0, "pool", 0, lb)


def test_the_worker_hook_describes_only_the_streams_that_asked():
    hook = AppearanceHook(frozenset({"door"}), worker_id=0)
    pools = _Pools(_two_tone())
    boxes = np.array([[30, 10, 50, 50]], np.float32)
    assert hook.of(pools, _frame("street"), boxes) is None  # type: ignore[arg-type]
    looks = hook.of(pools, _frame("door"), boxes)  # type: ignore[arg-type]
    assert looks is not None and looks[0] is not None
    assert hook.of(pools, _frame("door"), np.zeros((0, 4), np.float32)) is None  # type: ignore[arg-type]


def test_a_failing_descriptor_costs_the_descriptors_not_the_frame(caplog):
    hook = AppearanceHook(frozenset({"door"}), worker_id=3)
    pools = _Pools(object())  # neither numpy nor a device array
    boxes = np.array([[30, 10, 50, 50]], np.float32)
    assert hook.of(pools, _frame("door"), boxes) is None  # type: ignore[arg-type]
    assert hook.of(pools, _frame("door"), boxes) is None  # type: ignore[arg-type]
    warnings = [r for r in caplog.records if "no appearance descriptors" in r.getMessage()]
    assert len(warnings) == 1


def coloured_noise(rng: np.random.Generator, size: tuple[int, int]) -> np.ndarray:
    """Random pixels whose means are far from mid-grey (uniform noise averages to grey, which
    has no descriptor): a red-heavy, green-light image."""
    red = rng.integers(150, 256, size)
    green = rng.integers(0, 100, size)
    blue = rng.integers(0, 256, size)
    return np.stack([red, green, blue], axis=-1).astype(np.uint8)


def test_the_torch_path_matches_numpy():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(3)
    image = coloured_noise(rng, (64, 80))
    boxes = np.array(
        [[3.5, 2, 40, 50], [70, 30, 95, 70], [10, 10, 10, 20], [0, 0, 1, 1], [-5, 50, 5, 90]],
        np.float32,
    )
    want = appearance.describe_host(image, boxes)
    got = appearance.describe_device(torch.from_numpy(image), boxes)
    assert want[:2].any(axis=1).all()  # descriptors to compare, not zeros
    np.testing.assert_allclose(got, want, atol=1e-5)


@pytest.mark.gpu
def test_a_slot_in_gpu_memory_gives_the_host_descriptors():
    """The inference worker's real input: a device slot seen through its CUDA array interface
    (:class:`visionflow.gpu.ipc.DeviceArray`), not a torch tensor."""
    import torch

    from visionflow.gpu.ipc import DeviceArray

    rng = np.random.default_rng(5)
    image = coloured_noise(rng, (640, 640))
    on_device = torch.from_numpy(image).cuda()
    slot = DeviceArray(on_device.data_ptr(), tuple(on_device.shape))
    # small enough for the host path to average every pixel (a large box's is a sample)
    boxes = np.array([[3.5, 2, 40, 50], [620, 600, 660, 650], [100, 100, 100, 120]], np.float32)
    got = appearance.describe(slot, boxes)
    want = appearance.describe(image, boxes)
    assert got[2] is None and want[2] is None  # no pixel: no descriptor
    for g, w in zip(got[:2], want[:2], strict=True):
        assert g is not None and w is not None
        np.testing.assert_allclose(appearance.decode(g), appearance.decode(w), atol=2e-3)


def test_a_near_grey_box_has_no_descriptor_and_a_coloured_one_is_stable_under_noise():
    """Around mid-grey a vector's direction is the noise's: no descriptor there, so the gate
    never splits a grey object's track; a coloured box moves by little under the same noise."""
    rng = np.random.default_rng(11)
    boxes = np.array([[0, 0, 40, 80]], np.float32)

    def noisy(colour: tuple[int, int, int]) -> np.ndarray:
        base = np.broadcast_to(np.array(colour, np.int16), (80, 40, 3))
        return np.clip(base + rng.integers(-3, 4, base.shape), 0, 255).astype(np.uint8)

    assert appearance.describe(noisy((132, 128, 124)), boxes) == [None]
    a, b = (appearance.describe(noisy((200, 60, 40)), boxes)[0] for _ in range(2))
    assert a is not None and b is not None
    assert float(appearance.decode(a) @ appearance.decode(b)) > 0.99


def test_a_large_box_costs_a_sample_of_its_pixels_and_keeps_its_colours():
    image = np.zeros((640, 640, 3), np.uint8)
    image[:320] = (220, 40, 40)  # red top half, blue bottom half
    image[320:] = (40, 40, 220)
    got = appearance.describe_host(image, np.array([[0, 0, 640, 640]], np.float32))[0]
    want = appearance.normalise(np.array([[220, 40, 40] * 2 + [40, 40, 220] * 2], np.float64))[0]
    np.testing.assert_allclose(got, want, atol=1e-6)


@pytest.mark.gpu
def test_a_batch_of_device_slots_gives_each_frame_its_host_descriptors():
    """The worker describes a batch's device frames together (one copy back): each frame's
    boxes get that frame's descriptors, a frame without boxes none."""
    import torch

    from visionflow.gpu.ipc import DeviceArray

    rng = np.random.default_rng(6)
    images = [coloured_noise(rng, (96, 128)) for _ in range(3)]
    tensors = [torch.from_numpy(i).cuda() for i in images]
    slots = [DeviceArray(t.data_ptr(), tuple(t.shape)) for t in tensors]
    boxes = [
        np.array([[3, 2, 40, 50], [100, 60, 140, 100]], np.float32),
        np.zeros((0, 4), np.float32),
        np.array([[10, 10, 30, 90]], np.float32),
    ]
    got = appearance.describe_batch(slots, boxes)
    want = [appearance.describe(i, b) for i, b in zip(images, boxes, strict=True)]
    assert [len(g) for g in got] == [2, 0, 1]
    assert all(g is not None for frame in got for g in frame)
    for g_frame, w_frame in zip(got, want, strict=True):
        for g, w in zip(g_frame, w_frame, strict=True):
            assert (g is None) == (w is None)
            if g is not None and w is not None:
                np.testing.assert_allclose(appearance.decode(g), appearance.decode(w), atol=2e-3)
