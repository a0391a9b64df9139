from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from visionflow.config import parse_config
from visionflow.engines import create_engine
from visionflow.engines.config import OnnxRuntimeConfig
from visionflow.errors import ConfigError, ModelError
from visionflow.models import DEMO_MODEL, resolve_model
from visionflow.pipeline.letterbox import letterbox_image, to_network_input
from visionflow.pipeline.postprocess import detections_for_frame
from visionflow.scenes.generator import SceneGenerator, SceneSpec


def test_demo_model_resolves_with_classes_threshold_and_size():
    model = resolve_model(parse_config({}))
    assert model.class_names == ("person", "car", "bicycle")
    assert model.input_size == (320, 320) and 0 < model.conf_threshold < 1
    assert DEMO_MODEL.stat().st_size <= 5 * 1024 * 1024


def test_dynamic_batch_gives_identical_per_image_output():
    with create_engine(OnnxRuntimeConfig(), DEMO_MODEL, 8) as engine:
        x = np.random.default_rng(0).random((3, 3, 320, 320), dtype=np.float32)
        batched = engine.infer(x)
        single = engine.infer(x[1:2])
    assert batched.shape == (3, 7, 2100) and engine.info.num_classes == 3
    np.testing.assert_allclose(batched[1], single[0], atol=1e-4)


def test_demo_model_finds_the_generated_objects():
    image, truth = SceneGenerator(SceneSpec(640, 360, seed=99), horizon_s=30).render(200)
    canvas, lb = letterbox_image(image, 320, 320)
    model = resolve_model(parse_config({}))
    with create_engine(OnnxRuntimeConfig(), DEMO_MODEL, 1) as engine:
        out = engine.infer(to_network_input(canvas[None]))
    dets = detections_for_frame(out[0], lb, model.class_names, model.conf_threshold, 0.45, 100)
    visible = [t for t in truth if not t.ignorable]
    found = sum(
        any(
            d.class_id == t.class_id and abs(d.x1 - t.x1) < 15 and abs(d.y2 - t.y2) < 15
            for d in dets
        )
        for t in visible
    )
    assert visible and found >= len(visible) - 1, (dets, visible)


def test_bad_model_files_are_clear_errors(tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not onnx")
    with pytest.raises(ModelError, match=r"bad\.onnx"):
        create_engine(OnnxRuntimeConfig(), bad, 1)
    with pytest.raises(ModelError, match="not found"):
        create_engine(OnnxRuntimeConfig(), tmp_path / "none.onnx", 1)
    with pytest.raises(ConfigError, match="model file not found"):
        resolve_model(parse_config({"model": {"path": str(tmp_path / "none.onnx")}}))
    with pytest.raises(ConfigError, match=r"3 classes"):
        resolve_model(parse_config({"model": {"class_names": ["a"]}}))
    assert Path(DEMO_MODEL).with_suffix(".json").is_file()
