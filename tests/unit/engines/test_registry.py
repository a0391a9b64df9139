"""The backend registry: discovery, the config union, create_engine, a backend added in one place."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np
import numpy.typing as npt
import pytest
from pydantic import BaseModel, Field, ValidationError

from visionflow.config import parse_config
from visionflow.engines import (
    Backend,
    EngineConfigBase,
    EngineInfo,
    SyncEngine,
    Thresholds,
    backends,
    create_engine,
    engine_config_type,
    register,
)
from visionflow.engines.ort import OnnxRuntimeConfig, OnnxRuntimeEngine
from visionflow.engines.registry import engine_config_adapter, unregister
from visionflow.engines.torch_cuda import TorchCudaConfig
from visionflow.engines.trt import TensorRTConfig
from visionflow.errors import ConfigError
from visionflow.models import DEMO_MODEL


class ToyConfig(EngineConfigBase):
    """A backend that exists only in this test."""

    backend: Literal["toy"] = Field(default="toy", description="Inference backend: toy.")
    score: float = Field(default=0.9, description="Score of the one box it finds.")


class ToyEngine(SyncEngine):
    """Finds one box, of class 1, in the middle of every image."""

    def __init__(self, config: ToyConfig, model_path: Path, max_batch: int) -> None:
        self.score = config.score
        self.info = EngineInfo("toy", "cpu", 64, 32, "float32", max_batch, 2)

    def infer(self, batch: npt.NDArray[np.floating]) -> npt.NDArray[np.float32]:
        out = np.zeros((len(batch), 6, 4), np.float32)
        out[:, :4, 0] = [32, 16, 10, 8]  # cx, cy, w, h
        out[:, 5, 0] = self.score
        return out


@pytest.fixture
def toy():
    backend = register(Backend("toy", ToyConfig, ToyEngine))
    yield backend
    unregister("toy")


def test_builtin_backends_are_discovered_with_their_configs():
    known = backends()
    assert list(known) == ["onnxruntime", "tensorrt", "torch-cuda"]
    assert known["onnxruntime"].config is OnnxRuntimeConfig
    assert known["tensorrt"].config is TensorRTConfig
    assert known["torch-cuda"].config is TorchCudaConfig
    with create_engine(OnnxRuntimeConfig(), DEMO_MODEL, 2) as engine:
        assert isinstance(engine, OnnxRuntimeEngine) and engine.capabilities.max_inflight == 2


def test_a_registered_backend_is_accepted_by_the_union_and_built_by_create_engine(toy):
    config = engine_config_adapter().validate_python({"backend": "toy", "score": 0.7})
    assert isinstance(config, ToyConfig) and config.score == 0.7

    class App(BaseModel):  # what AppConfig does with the union
        engine: engine_config_type() = Field(description="engine")  # type: ignore[valid-type]

    assert isinstance(App.model_validate({"engine": {"backend": "toy"}}).engine, ToyConfig)
    assert isinstance(
        App.model_validate({"engine": {"backend": "tensorrt"}}).engine, TensorRTConfig
    )
    engine = create_engine(config, Path("unused.onnx"), 4)
    assert isinstance(engine, ToyEngine)
    images = [np.full((32, 64, 3), 100, np.uint8)] * 3
    dets = engine.detect(images, Thresholds(0.5, 0.45, 10))
    assert len(dets) == 3
    for boxes, scores, classes in dets:
        assert boxes.tolist() == [[27, 12, 37, 20]] and classes.tolist() == [1]
        assert np.allclose(scores, [0.7])


def test_unknown_backend_names_the_known_keys():
    with pytest.raises(ConfigError) as info:
        parse_config({"engine": {"backend": "magic"}})
    message = str(info.value)
    assert "'magic'" in message and "engine" in message
    for key in ("'onnxruntime'", "'tensorrt'", "'torch-cuda'"):
        assert key in message, message
    with pytest.raises(ValidationError, match="toy"):
        engine_config_adapter().validate_python({"backend": "toy"})  # not registered here


def test_backend_fields_are_checked_per_backend():
    with pytest.raises(ConfigError, match="contexts"):  # a TensorRT field under torch-cuda
        parse_config({"engine": {"backend": "torch-cuda", "contexts": 2}})
    cfg = parse_config({"engine": {"backend": "torch-cuda", "inflight": 3}})
    assert isinstance(cfg.engine, TorchCudaConfig) and cfg.engine.inflight == 3
    assert TorchCudaConfig().inflight == 2
    with pytest.raises(ConfigError, match="inflight"):
        parse_config({"engine": {"backend": "torch-cuda", "inflight": 0}})


def test_a_backend_must_declare_the_key_its_config_carries(toy):
    with pytest.raises(TypeError, match=r"Literal\['other'\]"):
        Backend("other", ToyConfig, ToyEngine)
    with pytest.raises(ValueError, match="already registered"):
        register(Backend("onnxruntime", OnnxRuntimeConfig, ToyEngine))
    assert register(toy) is toy  # the same declaration again is fine
