"""TensorRT backend logic that does not need TensorRT (it cannot be installed here)."""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest

from visionflow.engines import create_engine
from visionflow.engines.config import TensorRTConfig
from visionflow.engines.trt import (
    CalibrationBatches,
    EngineKey,
    EngineRepository,
    decode_in_engine_nms,
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


def test_in_engine_nms_outputs_are_decoded_per_image():
    boxes = np.zeros((2, 5, 4), np.float32)
    boxes[0, 1] = [10, 10, 20, 20]
    boxes[1, 3] = [1, 2, 3, 4]
    scores = np.zeros((2, 5, 3), np.float32)
    scores[0, 1, 2], scores[1, 3, 0], scores[0, 4, 1] = 0.9, 0.8, 0.7
    boxes[0, 4] = [30, 30, 40, 40]
    selected = np.array([[0, 2, 1], [1, 0, 3], [0, 1, 4], [9, 9, 9]], np.int32)  # last: padding
    out = decode_in_engine_nms(selected, 3, boxes, scores, batch=2, max_detections=10)
    assert out[0][2].tolist() == [2, 1] and np.allclose(out[0][1], [0.9, 0.7])
    assert out[1][0].tolist() == [[1, 2, 3, 4]] and out[1][2].tolist() == [0]


def test_version_parsing():
    assert trt_major("10.13.0.35") == 10 and trt_major("11.4.1") == 11
    with pytest.raises(EngineError):
        trt_major("dev")


@pytest.mark.skipif(importlib.util.find_spec("tensorrt") is not None, reason="TensorRT installed")
def test_missing_tensorrt_is_a_clear_error():
    with pytest.raises(EngineUnavailableError, match="TensorRT is not installed"):
        create_engine(TensorRTConfig(), DEMO_MODEL, 8)
