"""The output layout is found when the model is resolved, from real (tiny) ONNX files."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from visionflow.config import parse_config
from visionflow.engines import create_engine
from visionflow.engines.base import Thresholds
from visionflow.engines.ort import OnnxRuntimeConfig
from visionflow.errors import ConfigError, ModelError
from visionflow.models import ResolvedModel, resolve_model
from visionflow.pipeline.layouts import OutputLayout
from visionflow.pipeline.postprocess import decode_output

COCO_NAMES = {i: f"c{i}" for i in range(80)}


def tiny_model(
    path: Path,
    out_value: np.ndarray,
    declared: list[int | str] | None = None,
    metadata: dict[str, str] | None = None,
) -> Path:
    """An ONNX model with input ``images`` [1, 3, 32, 32] whose output is ``out_value``
    (``images`` is read, scaled by 0, so the graph depends on its input)."""
    const = helper.make_node(
        "Constant", [], ["value"], value=numpy_helper.from_array(out_value, "v")
    )
    zero = helper.make_node("ReduceSum", ["images"], ["total"], keepdims=0)
    scaled = helper.make_node("Mul", ["total", "zero"], ["nothing"])
    add = helper.make_node("Add", ["value", "nothing"], ["output"])
    graph = helper.make_graph(
        [const, zero, scaled, add],
        "tiny",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, 32, 32])],
        [
            helper.make_tensor_value_info(
                "output", TensorProto.FLOAT, declared or list(out_value.shape)
            )
        ],
        initializer=[numpy_helper.from_array(np.zeros((), np.float32), "zero")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    for key, value in (metadata or {}).items():
        model.metadata_props.add(key=key, value=value)
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return path


def resolve(path: Path, **model: object) -> ResolvedModel:
    return resolve_model(parse_config({"model": {"path": str(path), **model}}))


def end2end_output() -> np.ndarray:
    out = np.zeros((1, 300, 6), np.float32)
    out[0, 0] = (4, 4, 20, 28, 0.9, 17)
    out[0, 1] = (5, 4, 21, 28, 0.6, 17)  # overlapping, same class: kept (no NMS)
    return out


def test_an_end2end_export_resolves_with_classes_from_its_metadata(tmp_path):
    path = tiny_model(
        tmp_path / "yolo26n.onnx", end2end_output(), metadata={"names": repr(COCO_NAMES)}
    )
    model = resolve(path)
    assert model.layout is OutputLayout.END_TO_END
    assert model.num_classes == 80 and model.class_names[17] == "c17"  # not 296, not 2
    with create_engine(OnnxRuntimeConfig(), path, 1) as engine:
        raw = engine.infer(np.zeros((1, 3, 32, 32), np.float32))
        (through_engine,) = engine.detect(
            [np.zeros((32, 32, 3), np.uint8)], Thresholds(0.25, 0.45, 300)
        )
    boxes, _, classes = decode_output(raw[0], 0.25, 0.45, 300, model.layout)
    assert classes.tolist() == [17, 17] and boxes[0].tolist() == [4, 4, 20, 28]
    assert through_engine[2].tolist() == [17, 17], "the engine reads the end2end layout too"


def test_end2end_class_names_from_config_or_sidecar_and_none_is_an_error(tmp_path):
    path = tiny_model(tmp_path / "v10.onnx", end2end_output())
    assert resolve(path, class_names=["a", "b", "c"]).class_names == ("a", "b", "c")
    path.with_suffix(".json").write_text(json.dumps({"classes": ["x", "y"]}))
    assert resolve(path).num_classes == 2
    path.with_suffix(".json").unlink()
    with pytest.raises(ConfigError, match=r"model\.class_names.*end2end output \[1, 300, 6\]"):
        resolve(path)


def test_symbolic_output_dims_are_probed_before_the_layout_is_read(tmp_path):
    path = tiny_model(tmp_path / "dyn.onnx", end2end_output(), declared=["batch", "dets", 6])
    assert resolve(path, class_names=["a"]).layout is OutputLayout.END_TO_END


def test_an_anchors_export_still_resolves_and_checks_its_class_count(tmp_path):
    path = tiny_model(tmp_path / "v8.onnx", np.zeros((1, 7, 21), np.float32))
    model = resolve(path)
    assert model.layout is OutputLayout.ANCHORS and model.num_classes == 3
    with pytest.raises(ConfigError, match=r"model\.class_names has 2 names but the model has 3"):
        resolve(path, class_names=["a", "b"])
    meta = tiny_model(
        tmp_path / "meta.onnx", np.zeros((1, 7, 21), np.float32), metadata={"names": "{0: 'p'}"}
    )
    with pytest.raises(ConfigError, match="ONNX metadata 'names' has 1 names"):
        resolve(meta)


def test_the_override_decides_the_one_ambiguous_shape(tmp_path):
    path = tiny_model(tmp_path / "six.onnx", np.zeros((1, 6, 6), np.float32))
    assert resolve(path, class_names=["a"]).layout is OutputLayout.END_TO_END
    forced = resolve(path, output_layout="anchors")
    assert forced.layout is OutputLayout.ANCHORS and forced.num_classes == 2


def test_a_bad_layout_is_refused_at_start_up_naming_shape_and_layouts(tmp_path):
    path = tiny_model(tmp_path / "cls.onnx", np.zeros((1, 84), np.float32))
    with pytest.raises(ModelError) as info:
        resolve(path)
    message = str(info.value)
    assert "cls.onnx" in message and "[1, 84]" in message
    assert "anchors [N, 4+C, A]" in message and "end2end [N, K, 6]" in message
    v8 = tiny_model(tmp_path / "v8.onnx", np.zeros((1, 84, 21), np.float32))
    with pytest.raises(ModelError, match="output_layout is end2end"):
        resolve(v8, output_layout="end2end")


def test_output_layout_is_validated_by_the_config():
    with pytest.raises(ConfigError, match="output_layout"):
        parse_config({"model": {"output_layout": "nms"}})


def test_a_fixed_batch_smaller_than_max_batch_is_a_clear_error_at_load(tmp_path):
    """The engine runs a full batch at load (ONNX Runtime's arena sized once): a model
    exported for batches of exactly 1 with max_batch 8 fails there, naming the setting."""
    path = tiny_model(tmp_path / "b1.onnx", end2end_output())
    with pytest.raises(ModelError, match=r"exactly 1 but batching\.max_batch is 8"):
        create_engine(OnnxRuntimeConfig(), path, 8)
    with create_engine(OnnxRuntimeConfig(), path, 1) as engine:  # what the error says to do
        assert engine.info.max_batch == 1
