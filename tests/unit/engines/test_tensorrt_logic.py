"""TensorRT backend logic that does not need TensorRT (it cannot be installed here)."""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest

from visionflow.engines import create_engine
from visionflow.engines.trt import (
    GrowingBuffers,
    TensorRTConfig,
    batch_pointers,
    decode_in_engine_nms,
    grown_capacity,
    trt_capabilities,
)
from visionflow.engines.trt_build import (
    CalibrationBatches,
    EngineKey,
    EngineRepository,
    calibration_input,
    profile_for,
    trt_major,
)
from visionflow.errors import EngineError, EngineUnavailableError
from visionflow.models import DEMO_MODEL


def key(**changes):
    base = dict(
        model_sha256="ab" * 32,
        gpu_name="NVIDIA H100 80GB HBM3",
        compute_capability="9.0",
        trt_version="10.13.0.35",
        precision="fp16",
        profile=profile_for(32, 16, 640, 640),
    )
    base.update(changes)
    return EngineKey(**base)


def test_profile_from_batching_policy():
    p = profile_for(32, None, 640, 480)
    assert (p.min, p.opt, p.max) == ((1, 3, 640, 480), (32, 3, 640, 480), (32, 3, 640, 480))
    assert profile_for(32, 8, 640, 640).opt[0] == 8
    assert profile_for(4, 99, 320, 320).opt[0] == 4
    with pytest.raises(ValueError):
        profile_for(0, None, 1, 1)


def test_engine_key_changes_with_everything_it_depends_on():
    k = key()
    assert k.digest() == key().digest()
    for change in (
        dict(gpu_name="NVIDIA A100-SXM4-40GB"),
        dict(compute_capability="8.0"),
        dict(trt_version="11.4.0"),
        dict(precision="int8"),
        dict(model_sha256="cd" * 32),
        dict(profile=profile_for(64, None, 640, 640)),
        dict(nms_in_engine=True),
        dict(nms_max_per_class=100),
    ):
        assert key(**change).digest() != k.digest(), change
    assert k.filename().startswith(
        "abababababab-nvidia-h100-80gb-hbm3-sm90-trt10.13.0.35-fp16-b32-"
    )


def test_repository_builds_once_then_reuses_and_rebuilds_on_mismatch(tmp_path):
    repo = EngineRepository(tmp_path)
    builds = []

    def build() -> bytes:
        builds.append(1)
        return b"plan-%d" % len(builds)

    assert repo.get_or_build(key(), build) == b"plan-1"
    assert repo.get_or_build(key(), build) == b"plan-1" and len(builds) == 1
    engine, meta = repo.paths(key())
    recorded = json.loads(meta.read_text())
    recorded["trt_version"] = "10.0.0"  # an engine left by another TensorRT under the same name
    meta.write_text(json.dumps(recorded))
    assert repo.get_or_build(key(), build) == b"plan-2" and len(builds) == 2
    assert engine.read_bytes() == b"plan-2"


def test_calibration_batches_are_full_and_bounded():
    frames = (np.full((3, 4, 4), i, np.float32) for i in range(10))
    batches = CalibrationBatches(frames, batch_size=4, max_frames=10)
    first, second = batches.next_batch(), batches.next_batch()
    assert first.shape == (4, 3, 4, 4) and first[3, 0, 0, 0] == 3 and second[0, 0, 0, 0] == 4
    assert batches.next_batch() is None and batches.taken == 8  # 2 left over: no partial batch


def test_in_engine_nms_rows_are_split_per_image_best_first():
    # rows as the engine gathers them: (image, class, anchor), centre/size boxes, scores
    selected = np.array([[0, 2, 1], [1, 0, 3], [0, 1, 4], [0, 0, 2]], np.int32)
    boxes = np.array([[15, 15, 10, 10], [2, 3, 2, 2], [35, 35, 10, 10], [0, 0, 2, 2]], np.float32)
    scores = np.array([0.7, 0.8, 0.9, 0.6], np.float32)
    out = decode_in_engine_nms(selected, boxes, scores, batch=3, max_detections=2)
    xyxy, s0, c0 = out[0]
    assert c0.tolist() == [1, 2] and np.allclose(s0, [0.9, 0.7])  # best first, capped at 2
    assert xyxy.tolist() == [[30, 30, 40, 40], [10, 10, 20, 20]]
    assert out[1][0].tolist() == [[1, 2, 3, 4]] and out[1][2].tolist() == [0]
    assert len(out[2][1]) == 0 and out[2][0].shape == (0, 4)  # an image with nothing kept


def test_nms_output_buffers_grow_by_powers_of_two_and_are_freed():
    live: dict[int, int] = {}
    counter = iter(range(1, 100))

    def malloc(size: int) -> int:
        pointer = next(counter)
        live[pointer] = size
        return pointer

    buffers = GrowingBuffers(malloc, lambda p: live.pop(p))
    first = buffers.ensure("selected_indices", 1000)
    assert live == {first: 1 << 16}  # small requests share the minimum
    assert buffers.ensure("selected_indices", 60_000) == first  # fits: no reallocation
    bigger = buffers.ensure("selected_indices", 70_000)
    assert bigger != first and first not in live and live[bigger] == 1 << 17
    buffers.ensure("selected_scores", 4)
    buffers.close()
    assert live == {} and grown_capacity(0) == 1 << 16 and grown_capacity(1 << 20) == 1 << 20


def test_tensorrt_config_defaults_to_in_engine_nms():
    config = TensorRTConfig()
    assert config.nms_in_engine and config.nms_max_per_class == 300
    with pytest.raises(ValueError, match="nms_max_per_class"):
        TensorRTConfig(nms_max_per_class=0)


def test_version_parsing():
    assert trt_major("10.13.0.35") == 10 and trt_major("11.4.1") == 11
    with pytest.raises(EngineError):
        trt_major("dev")


@pytest.mark.skipif(importlib.util.find_spec("tensorrt") is not None, reason="TensorRT installed")
def test_missing_tensorrt_is_a_clear_error():
    with pytest.raises(EngineUnavailableError, match="TensorRT is not installed"):
        create_engine(TensorRTConfig(), DEMO_MODEL, 8)


def test_int8_calibration_reads_the_cache_or_the_frames_calibrate_saved(tmp_path):
    config = TensorRTConfig(precision="int8", engine_dir=str(tmp_path))
    cache = tmp_path / "engine.calib"
    with pytest.raises(EngineError, match="run 'visionflow calibrate -c <config>'"):
        calibration_input(config, cache, (4, 6))

    images = np.random.default_rng(0).integers(0, 256, (3, 4, 6, 3), dtype=np.uint8)
    np.save(tmp_path / "calibration.npy", images)
    frames = list(calibration_input(config, cache, (4, 6)))
    assert len(frames) == 3 and frames[0].shape == (3, 4, 6)
    assert np.allclose(frames[1], images[1].transpose(2, 0, 1) / 255.0)

    with pytest.raises(
        EngineError, match=r"holds uint8 \(3, 4, 6, 3\); the model takes \[N, 8, 8, 3\]"
    ):
        calibration_input(config, cache, (8, 8))

    cache.write_bytes(b"cache")  # TensorRT reads the cache itself: no frames needed
    assert calibration_input(config, cache, (8, 8)) is None


class DeviceFrame:
    """Looks like a frame in GPU memory at ``address`` (never dereferenced here)."""

    def __init__(self, address: int, shape=(4, 6, 3), strides=None) -> None:
        self.__cuda_array_interface__ = {
            "shape": shape,
            "typestr": "|u1",
            "data": (address, True),
            "strides": strides,
            "version": 3,
        }


def test_frame_table_reads_device_frames_in_place_and_host_frames_from_staging():
    frames = [DeviceFrame(0x1000), np.zeros((4, 6, 3), np.uint8), DeviceFrame(0x9000)]
    table = batch_pointers(frames, [True, False, True], staging=0x100000, height=4, width=6)
    assert table.dtype == np.uint64
    assert table.tolist() == [0x1000, 0x100000 + 4 * 6 * 3, 0x9000]
    all_host = batch_pointers(frames[1:2] * 2, [False, False], 0x100000, 4, 6)
    assert all_host.tolist() == [0x100000, 0x100000 + 72]
    with pytest.raises(EngineError, match="not C-contiguous"):
        batch_pointers([DeviceFrame(0x1000, strides=(36, 6, 1))], [True], 0x100000, 4, 6)


def test_one_batch_in_flight_per_context():
    caps = trt_capabilities(TensorRTConfig(contexts=3))
    assert caps.max_inflight == 3 and caps.device_frames and caps.host_frames
    assert (
        caps.nms_in_engine
        and not trt_capabilities(TensorRTConfig(nms_in_engine=False)).nms_in_engine
    )
