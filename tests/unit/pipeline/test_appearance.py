"""Appearance descriptors: what a box of known colours gives, edges, empty boxes, transport."""

from __future__ import annotations

import hashlib
import pickle
import platform
import sys
import types
from collections.abc import Iterator
from pathlib import Path
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
    """Random pixels of a few bins only (a red-heavy, green-light image), unlike the
    background a box's ring may see: descriptors far from flat to compare."""
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


class _StandInTensor:
    """What :func:`appearance.describe_device_batch` uses of a torch tensor, on numpy, with
    CUDA's strictness: an index out of range is an error (a device-side assert there), not
    numpy's wrap-around of negative indices."""

    def __init__(self, array: np.ndarray, device: str = "cuda") -> None:
        self.array, self.device = np.asarray(array), device

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.array.shape)

    def __getitem__(self, index: Any) -> _StandInTensor:
        index = index if isinstance(index, tuple) else (index,)
        plain = tuple(i.array if isinstance(i, _StandInTensor) else i for i in index)
        for axis, i in enumerate(plain):
            if isinstance(i, np.ndarray) and i.dtype.kind in "iu":
                size = self.array.shape[axis]
                if i.size and (int(i.min()) < 0 or int(i.max()) >= size):
                    raise RuntimeError(f"device-side assert: index out of range for {size}")
        return _StandInTensor(self.array[plain], self.device)

    def cpu(self) -> _StandInTensor:
        return _StandInTensor(self.array, "cpu")

    def numpy(self) -> np.ndarray:
        return self.array


@pytest.fixture
def stand_in_torch(monkeypatch: pytest.MonkeyPatch) -> types.ModuleType:
    """A ``torch`` module of :class:`_StandInTensor` (torch is not installed for the CPU
    tests): the device path's index arithmetic, run here."""
    fake = types.ModuleType("torch")
    fake.Tensor = _StandInTensor  # type: ignore[attr-defined]
    fake.as_tensor = lambda a, device=None: _StandInTensor(np.asarray(a), device or "cuda")  # type: ignore[attr-defined]
    fake.stack = lambda ts: _StandInTensor(np.stack([t.array for t in ts]), ts[0].device)  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "torch", fake)
    return fake


#: boxes with no descriptor that once reached index arithmetic: NaN cast to int64 is
#: INT_MIN, an infinite side gives inf - inf = NaN on the ring (an IndexError on the host,
#: a device-side assert that killed the worker's CUDA context on an H100 with the first)
NON_FINITE = [
    [0, 0, np.inf, 5],
    [np.nan, 1, 20, 30],
    [5, 5, 20, np.nan],
    [-np.inf, 0, 20, 30],
    [0, -np.inf, 20, np.inf],
    [np.inf, np.inf, np.inf, np.inf],
    [-np.inf, -np.inf, np.inf, np.inf],
    [np.nan, np.nan, np.nan, np.nan],
]
NO_PIXEL = [
    [10, 10, 10, 30],  # zero width
    [10, 10, 30, 10],  # zero height
    [10, 10, 10, 10],  # a point
    [200, 10, 260, 50],  # right of the image
    [-60, -60, -2, -2],  # above and left
    [30, 30, 20, 40],  # inverted
]
REAL = [[3.5, 2, 40, 50], [60, 30, 95, 70]]


def _invalid_and_real(huge: bool = True) -> np.ndarray:
    """Real boxes between the invalid ones, so that a row's descriptor can't be another's,
    and a box over the whole plane (``huge``: so large that its ring is inf - inf; float64
    only, float32 makes it infinite)."""
    plane = [-1e308, -1e308, 1e308, 1e308] if huge else [-1e30, -1e30, 1e30, 1e30]
    return np.array([REAL[0], *NON_FINITE, *NO_PIXEL, REAL[1], plane])


def test_non_finite_and_empty_boxes_have_no_descriptor_on_the_host():
    image = coloured_noise(np.random.default_rng(8), (64, 80))
    bad = slice(1, 1 + len(NON_FINITE) + len(NO_PIXEL))
    for dtype in (np.float64, np.float32):
        boxes = _invalid_and_real(huge=dtype == np.float64).astype(dtype)
        got = describe_host(image, boxes)
        alone = describe_host(image, np.array(REAL, dtype))
        np.testing.assert_array_equal(got[0], alone[0])  # the real ones are untouched
        np.testing.assert_array_equal(got[bad.stop], alone[1])
        assert not got[bad].any()  # no descriptor, no IndexError
        assert got[bad.stop + 1 :].any(axis=1).all()  # a plane covering the image has one
        looks = describe(image, boxes)
        assert looks[bad] == [None] * (bad.stop - 1) and looks[0] is not None


def test_sample_points_are_in_the_image_whatever_the_boxes():
    ys, xs, ring_y, ring_x, _, valid = appearance.sample_points(_invalid_and_real(), 80, 64)
    for index, size in ((ys, 64), (xs, 80), (ring_y, 64), (ring_x, 80)):
        assert index.min() >= 0 and index.max() < size
    assert valid.tolist() == [True] + [False] * (len(NON_FINITE) + len(NO_PIXEL)) + [True, True]
    only_invalid = np.array(NON_FINITE, np.float64)
    assert not describe_host(np.zeros((64, 80, 3), np.uint8), only_invalid).any()


def test_the_device_path_gives_the_host_descriptors_for_bad_boxes(stand_in_torch):
    rng = np.random.default_rng(9)
    images = [coloured_noise(rng, (64, 80)) for _ in range(2)]
    boxes = [_invalid_and_real(), np.array(NON_FINITE + NO_PIXEL, np.float32)]
    got = appearance.describe_device_batch([stand_in_torch.as_tensor(i) for i in images], boxes)
    for g, image, b in zip(got, images, boxes, strict=True):
        np.testing.assert_array_equal(g, describe_host(image, b))  # the same, to the bit
    assert got[0][[0, -2, -1]].any(axis=1).all() and not got[0][1:-2].any()
    assert not got[1].any()
    # one image, and a batch of only bad boxes (no gather at all)
    one = appearance.describe_device(stand_in_torch.as_tensor(images[0]), boxes[0])
    np.testing.assert_array_equal(one, got[0])
    assert not appearance.describe_device(stand_in_torch.as_tensor(images[1]), boxes[1]).any()


def test_the_stand_in_catches_an_index_out_of_range(stand_in_torch):
    """The stand-in fails where CUDA would (else the test above could not)."""
    t = stand_in_torch.as_tensor(np.zeros((4, 5, 3), np.uint8))
    with pytest.raises(RuntimeError, match="device-side assert"):
        t[stand_in_torch.as_tensor(np.array([np.iinfo(np.int64).min])), 0]


def test_the_device_path_on_the_stand_in_matches_numpy(stand_in_torch):
    rng = np.random.default_rng(3)
    image = coloured_noise(rng, (64, 80))
    boxes = np.array(
        [[3.5, 2, 40, 50], [70, 30, 95, 70], [10, 10, 10, 20], [0, 0, 1, 1], [-5, 50, 5, 90]],
        np.float32,
    )
    got = appearance.describe_device(stand_in_torch.as_tensor(image), boxes)
    np.testing.assert_array_equal(got, describe_host(image, boxes))


@pytest.mark.gpu
def test_bad_boxes_on_a_gpu_slot_have_no_descriptor_and_keep_the_context():
    """The crash this guards against: box [0, 0, inf, 5] on a device slot was an index out of
    range, a device-side assert, and every later CUDA call of the worker failed."""
    import torch

    from visionflow.gpu.ipc import DeviceArray

    image = coloured_noise(np.random.default_rng(10), (64, 80))
    on_device = torch.from_numpy(image).cuda()
    slot = DeviceArray(on_device.data_ptr(), tuple(on_device.shape))
    boxes = _invalid_and_real(huge=False).astype(np.float32)
    got = appearance.describe_device(slot, boxes)
    torch.cuda.synchronize()  # an assert would surface here at the latest
    np.testing.assert_allclose(got, describe_host(image, boxes), atol=1e-5)
    assert not got[1:-2].any() and got[[0, -2, -1]].any(axis=1).all()
    assert int((on_device[:1, :1].sum() + 1).item()) >= 1  # the context still works


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
    # one box inside, one across the corner (part of its ring outside), one empty
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


#: the first version of the histogram descriptor (commit a44eb8d, before the faster sampling
#: and histograms): its float32 descriptors of the first :data:`GOLDEN_CASES` of
#: :func:`_golden_cases`, written by that commit's ``describe_host`` (``boxes_per_case``, which
#: rows are ``described`` and those rows' ``descriptors``; rows of zeros are not stored)
GOLDEN = Path(__file__).with_name("appearance_golden.npz")
GOLDEN_CASES = 40
#: sha256 of the float32 bytes of all 120 cases' descriptors from that commit, as numpy 2.4
#: on x86-64 made them: a stricter check, skipped elsewhere (the last bit of a float32 may
#: differ with another numpy or CPU without anything being wrong)
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


def test_the_descriptors_are_those_of_the_first_histogram_version():
    """The sampling and histograms were made cheaper without changing the descriptors (the
    tracker's tuning and held-out figures stand)."""
    with np.load(GOLDEN) as golden:
        counts, described = golden["boxes_per_case"], golden["described"]
        want = np.zeros((len(described), DIMS), np.float32)
        want[described] = golden["descriptors"]
    got = []
    for (image, boxes), k in zip(_golden_cases(), counts, strict=False):
        assert len(boxes) == k
        got.append(describe_host(image, boxes) if k else np.zeros((0, DIMS), np.float32))
    assert len(got) == GOLDEN_CASES
    got_all = np.concatenate(got)
    np.testing.assert_array_equal(got_all.any(axis=1), described)
    np.testing.assert_allclose(got_all, want, rtol=0, atol=1e-6)


def test_the_descriptors_are_bit_identical_to_the_first_histogram_version():
    if platform.machine() not in ("x86_64", "AMD64") or not np.__version__.startswith("2.4."):
        pytest.skip("the digest was taken with numpy 2.4 on x86-64")
    digest = hashlib.sha256()
    made = 0
    for image, boxes in _golden_cases():
        if len(boxes):
            looks = describe_host(image, boxes)
            digest.update(looks.tobytes())
            made += int(looks.any(axis=1).sum())
    assert made == GOLDEN_DESCRIPTORS
    assert digest.hexdigest() == GOLDEN_SHA256


@pytest.mark.parametrize("per_frame", [[3, 0, 1, 5], [appearance.CHUNK + 3, 2, 0], [0, 0], [7] * 9])
def test_a_batch_of_host_frames_gives_each_frame_its_own_descriptors_to_the_bit(per_frame):
    """The worker describes a batch's host frames in groups (one numpy pass per group of up
    to CHUNK boxes): every frame's rows are what that frame alone gives, bad boxes included,
    a frame without boxes gets none."""
    rng = np.random.default_rng(12)
    images = [coloured_noise(rng, (64, 80)) for _ in per_frame]
    boxes = []
    for n in per_frame:
        xy = rng.uniform(-10, 70, (n, 2))
        b = np.concatenate([xy, xy + rng.uniform(1, 40, (n, 2))], 1)
        if n > 2:
            b[1] = NON_FINITE[0]  # one box with no descriptor among the good ones
        boxes.append(b.astype(np.float32))
    got = appearance.describe_host_batch(images, boxes)
    assert [len(g) for g in got] == per_frame
    for g, image, b in zip(got, images, boxes, strict=True):
        np.testing.assert_array_equal(g, describe_host(image, b))
    looks = appearance.describe_batch(images, boxes)
    assert looks == [describe(i, b) for i, b in zip(images, boxes, strict=True)]


def test_more_boxes_than_one_pass_takes_give_each_box_its_own_descriptor_to_the_bit():
    """``from_samples`` makes its histograms CHUNK boxes at a time: every box of a frame with
    more, past the first pass too, gets what it gets alone."""
    rng = np.random.default_rng(13)
    image = coloured_noise(rng, (96, 128))
    n = 2 * appearance.CHUNK + 5
    xy = rng.uniform(-5, 110, (n, 2))
    boxes = np.concatenate([xy, xy + rng.uniform(2, 50, (n, 2))], 1).astype(np.float32)
    got = describe_host(image, boxes)
    for i in range(n):
        np.testing.assert_array_equal(got[i], describe_host(image, boxes[i : i + 1])[0])


def test_a_host_batch_of_mixed_sizes_or_types_is_refused():
    small, large = np.zeros((32, 32, 3), np.uint8), np.zeros((64, 64, 3), np.uint8)
    box = [np.array([[1, 1, 9, 9]], np.float32)] * 2
    with pytest.raises(ValueError, match="of one size"):
        appearance.describe_host_batch([small, large], box)
    with pytest.raises(ValueError, match="uint8"):
        appearance.describe_host_batch([small, small.astype(np.float32)], box)
    assert len(appearance.describe_batch([small, large], box)) == 2  # one image at a time
