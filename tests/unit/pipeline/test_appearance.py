"""Appearance descriptors: what a box of known colours gives, edges, empty boxes, transport."""

from __future__ import annotations

import hashlib
import pickle
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

from visionflow.pipeline import appearance
from visionflow.pipeline.appearance import (
    BINS,
    DESCRIPTOR_BYTES,
    DIMS,
    AppearanceHook,
    decode,
    describe,
    describe_host,
)
from visionflow.pipeline.frames import Detection, FrameRef, Letterbox
from visionflow.pipeline.postprocess import to_detections


def _two_tone(h: int = 40, w: int = 20) -> np.ndarray:
    """An image of 100 x 100: a box of ``h`` x ``w`` at (30, 10), red above, blue below, on
    a grey background."""
    image = np.full((100, 100, 3), 128, np.uint8)
    image[10 : 10 + h // 2, 30 : 30 + w] = (200, 0, 0)
    image[10 + h // 2 : 10 + h, 30 : 30 + w] = (0, 0, 200)
    return image


def _bin(colour: tuple[int, int, int]) -> int:
    """The histogram bin a colour on the bins' grid falls in (0, 85, 170, 255 per channel)."""
    r, g, b = (round(c * (BINS - 1) / 255) for c in colour)
    return r * BINS * BINS + g * BINS + b


BOX = np.array([[30, 10, 50, 50]], np.float32)


def test_a_box_gives_its_own_colours_without_its_surroundings():
    image = np.full((100, 100, 3), 85, np.uint8)  # grey on the bins' grid
    image[10:30, 30:50] = (255, 0, 0)
    image[30:50, 30:50] = (0, 0, 255)
    got = describe_host(image, BOX)[0]
    assert got.shape == (DIMS,) and DIMS == BINS**3
    assert np.linalg.norm(got) == pytest.approx(1.0)
    want = np.zeros(DIMS)
    want[[_bin((255, 0, 0)), _bin((0, 0, 255))]] = np.sqrt(0.5)  # half red, half blue
    np.testing.assert_allclose(got, want, atol=0.01)  # the grey around: taken out
    # the same object on another background looks the same
    image[:10], image[50:], image[:, :30], image[:, 50:] = 170, 170, 170, 170
    np.testing.assert_allclose(describe_host(image, BOX)[0], want, atol=0.01)


def test_a_thin_object_in_a_box_of_background_is_told_by_its_colour():
    """A bicycle: a few lines in a box that is mostly background.  Two of other colours on
    the same background differ; one on another background stays itself."""

    def bike(colour: tuple[int, int, int], background: int) -> np.ndarray:
        image = np.full((100, 100, 3), background, np.uint8)
        image[20:60:8, 20:80] = colour  # every eighth row: 5 of 40 rows of the box
        return image

    box = np.array([[20, 20, 80, 60]], np.float32)
    green, green_elsewhere = (
        describe_host(bike((40, 200, 40), 110), box)[0],
        describe_host(bike((40, 200, 40), 150), box)[0],
    )
    magenta = describe_host(bike((200, 40, 200), 110), box)[0]
    assert float(green @ green_elsewhere) > 0.9
    assert float(green @ magenta) < 0.3


def test_a_brighter_copy_stays_close():
    image = _two_tone()
    brighter = np.clip(image.astype(np.int32) * 11 // 10, 0, 255).astype(np.uint8)
    a, b = describe_host(image, BOX)[0], describe_host(brighter, BOX)[0]
    assert float(a @ b) > 0.95


def test_a_box_past_the_image_edge_samples_what_is_inside():
    image = np.zeros((100, 100, 3), np.uint8)
    image[:, 90:] = (255, 255, 0)  # a yellow strip at the right edge, black elsewhere
    clipped = describe_host(image, np.array([[90, 20, 130, 60]], np.float32))[0]
    want = np.zeros(DIMS)
    want[_bin((255, 255, 0))] = 1.0  # the ring's part in the image is black: nothing to take
    np.testing.assert_allclose(clipped, want, atol=0.01)


def test_a_box_one_pixel_high_still_has_a_descriptor():
    image = np.zeros((10, 10, 3), np.uint8)
    image[4, 2:6] = (0, 255, 0)
    got = describe_host(image, np.array([[2, 4, 6, 5]], np.float32))[0]
    assert got[_bin((0, 255, 0))] == pytest.approx(1.0, abs=1e-3)


def test_a_box_like_its_surroundings_keeps_its_own_histogram():
    image = np.full((100, 100, 3), (170, 85, 0), np.uint8)  # one colour everywhere
    got = describe_host(image, BOX)[0]
    assert got[_bin((170, 85, 0))] == pytest.approx(1.0, abs=1e-3)


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
    assert len(pickle.dumps(described)) - len(pickle.dumps(plain)) < DESCRIPTOR_BYTES + 40


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


def test_a_coloured_box_is_stable_under_noise():
    rng = np.random.default_rng(11)
    boxes = np.array([[20, 20, 60, 100]], np.float32)

    def noisy(colour: tuple[int, int, int]) -> np.ndarray:
        image = np.full((120, 80, 3), 100, np.int16)
        image[20:100, 20:60] = colour
        return np.clip(image + rng.integers(-3, 4, image.shape), 0, 255).astype(np.uint8)

    a, b = (appearance.describe(noisy((200, 60, 40)), boxes)[0] for _ in range(2))
    assert a is not None and b is not None
    assert float(appearance.decode(a) @ appearance.decode(b)) > 0.99


def test_a_large_box_costs_a_fixed_sample_of_its_pixels_and_keeps_its_colours():
    image = np.zeros((640, 640, 3), np.uint8)
    image[:320] = (255, 0, 0)  # red top half, blue bottom half
    image[320:] = (0, 0, 255)
    ys, xs, ring_y, _, _, _ = appearance.sample_points(
        np.array([[0, 0, 640, 640]], np.float32), 640, 640
    )
    assert ys.shape == (1, appearance.GRID_ROWS) and xs.shape == (1, appearance.GRID_COLS)
    assert ring_y.shape == (1, appearance.RING)
    got = appearance.describe_host(image, np.array([[0, 0, 640, 640]], np.float32))[0]
    want = np.zeros(DIMS)
    want[[_bin((255, 0, 0)), _bin((0, 0, 255))]] = np.sqrt(0.5)
    np.testing.assert_allclose(got, want, atol=0.01)


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


#: sha256 of the float32 descriptors of :func:`_golden_cases` as the first version of the
#: histogram descriptor (commit a44eb8d, before the faster sampling and histograms) made them
GOLDEN_SHA256 = "b05bb32a3ecad340d449f8447d5e6ee5a1005c646ef45ea04c93e6d1f2d24dcd"
GOLDEN_DESCRIPTORS = 987


def _golden_cases() -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Seeded images and boxes: noise and flat colours on the bins' grid, boxes inside,
    across the edges, outside, inverted and of whole pixels."""
    rng = np.random.default_rng(20261126)
    for trial in range(120):
        h, w = int(rng.integers(1, 200)), int(rng.integers(1, 200))
        if trial % 3:
            image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        else:  # flat colours on the bins' grid: shares of exactly 0 and 1
            image = (rng.integers(0, 4, (h, w, 3)) * 85).astype(np.uint8)
        k = int(rng.integers(0, 25))
        xy = rng.uniform(-0.3, 1.1, (k, 2)) * [w, h]
        wh = rng.uniform(-0.2 if trial % 5 == 0 else 0, 0.6, (k, 2)) * [w, h]
        boxes = np.concatenate([xy, xy + wh], 1)
        yield image, np.round(boxes) if trial % 7 == 0 else boxes.astype(np.float32)


def test_the_descriptors_are_bit_identical_to_the_first_histogram_version():
    """The sampling and histograms were made cheaper without changing a single byte of the
    descriptors (the tracker's tuning and held-out figures stand)."""
    digest = hashlib.sha256()
    made = 0
    for image, boxes in _golden_cases():
        if len(boxes):
            looks = describe_host(image, boxes)
            digest.update(looks.tobytes())
            made += int(looks.any(axis=1).sum())
    assert made == GOLDEN_DESCRIPTORS
    assert digest.hexdigest() == GOLDEN_SHA256
