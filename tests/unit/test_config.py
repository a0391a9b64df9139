from __future__ import annotations

from pathlib import Path

import pytest

from visionflow.config import load_config, parse_config
from visionflow.errors import ConfigError


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "cams.yaml"
    path.write_text(text)
    return path


def test_valid_file_with_env_substitution(tmp_path, monkeypatch):
    monkeypatch.setenv("CAM_PW", "pa:ss@word")
    cfg = load_config(
        write(
            tmp_path,
            """
streams:
  - id: door
    url: rtsp://admin:${CAM_PW}@10.0.0.5/live
    fps_cap: 5
    labels: {site: hq}
  - id: yard
    url: ${YARD_URL:-clips/yard.mp4}
    enabled: false
batching: {max_batch: 16, max_delay_ms: 25}
engine: {backend: onnxruntime, intra_op_threads: 2}
source: {allowed_schemes: [rtsp, file]}
""",
        )
    )
    assert cfg.streams[0].url == "rtsp://admin:pa:ss@word@10.0.0.5/live"
    assert cfg.streams[1].url == "clips/yard.mp4" and not cfg.streams[1].enabled
    assert cfg.batching.max_batch == 16 and cfg.engine.backend == "onnxruntime"
    assert cfg.base_dir == tmp_path
    assert "pa:ss@word" not in repr(cfg.streams[0])


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (
            "streams:\n  - id: cam1\n    url: rtsp://x/1\n    fps_cap: -3\n",
            ["stream 'cam1'", "streams[0]", "fps_cap"],
        ),
        (
            "streams:\n  - id: cam1\n    url: rtsp://x\n    colour: red\n",
            ["stream 'cam1'", "colour", "xtra"],
        ),
        ("streams:\n  - id: a\n    url: x\n  - id: a\n    url: y\n", ["duplicate stream id 'a'"]),
        ("streams:\n  - id: 'bad id!'\n    url: x\n", ["streams[0]", "'id'"]),
        (
            "streams:\n  - id: c\n    url: ftp://u:pw@h/x\n",
            ["stream 'c'", "unsupported URL scheme 'ftp'"],
        ),
        ("batching: {max_batch: 0}\n", ["batching.max_batch"]),
        ("engine: {backend: magic}\n", ["engine"]),
        ("model: {input_size: [600, 640]}\n", ["model.input_size", "multiples of 32"]),
        ("streams: [\n", ["not valid YAML"]),
        (
            "streams:\n  - id: c\n    url: rtsp://u:${NOPE_NOT_SET}@h\n",
            ["${NOPE_NOT_SET}", "streams[0].url"],
        ),
    ],
)
def test_invalid_files_name_file_stream_and_field(tmp_path, body, expected):
    path = write(tmp_path, body)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert str(path) in message
    for fragment in expected:
        assert fragment in message, message
    assert "pw@" not in message


def test_missing_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_config(tmp_path / "nope.yaml")


def test_empty_document_gives_defaults():
    cfg = parse_config(None)
    assert cfg.streams == [] and cfg.redis.key_prefix == "visionflow"


def test_the_shipped_example_is_valid(monkeypatch):
    monkeypatch.setenv("CAM_PASSWORD", "x")
    cfg = load_config(Path(__file__).resolve().parents[2] / "examples" / "cameras.yaml")
    assert [s.id for s in cfg.streams] == ["entrance", "loading-dock", "recorded"]


def test_batches_queued_per_worker_follow_the_engine_unless_set() -> None:
    """Unset, a worker is kept two engine depths deep (its next batches already with it when one
    finishes); set, the setting wins."""
    from visionflow.config import BatchingConfig
    from visionflow.engines.ort import OnnxRuntimeConfig
    from visionflow.engines.torch_cuda import TorchCudaConfig
    from visionflow.engines.trt import TensorRTConfig

    auto = BatchingConfig()
    assert auto.worker_capacity(OnnxRuntimeConfig()) == 4
    assert auto.worker_capacity(OnnxRuntimeConfig(inflight=1)) == 2
    assert auto.worker_capacity(TorchCudaConfig()) == 4
    assert auto.worker_capacity(TorchCudaConfig(inflight=3)) == 6
    assert auto.worker_capacity(TensorRTConfig(contexts=3)) == 6
    assert BatchingConfig(max_inflight_per_worker=1).worker_capacity(TorchCudaConfig()) == 1


def test_wait_ready_waits_as_long_as_an_engine_may_take_to_load() -> None:
    """Compiling (torch-cuda ``compile``) or building (TensorRT) takes minutes at a first
    start: the default readiness wait must not give up after the 60 s a plain load needs."""
    from visionflow.engines.ort import OnnxRuntimeConfig
    from visionflow.engines.torch_cuda import TorchCudaConfig
    from visionflow.engines.trt import TensorRTConfig

    assert OnnxRuntimeConfig().load_timeout_s() == 60.0
    assert TorchCudaConfig().load_timeout_s() == 60.0
    assert TorchCudaConfig(compile=True).load_timeout_s() >= 600.0
    assert TensorRTConfig().load_timeout_s() >= 600.0
