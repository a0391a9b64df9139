"""The torch-cuda backend: bucket logic everywhere, the real thing on a GPU."""

from __future__ import annotations

import importlib.abc
import logging
import sys
import types

import numpy as np
import pytest

from visionflow.engines import create_engine, torch_cuda
from visionflow.engines.config import OnnxRuntimeConfig, TorchCudaConfig
from visionflow.engines.torch_cuda import (
    batch_buckets,
    bucket_for,
    gpu_decode,
    nms_function,
    split_rows,
)
from visionflow.errors import EngineUnavailableError
from visionflow.models import DEMO_MODEL
from visionflow.pipeline.layouts import OutputLayout


def test_buckets_cover_every_batch_size():
    assert batch_buckets(8) == [1, 2, 4, 8]
    assert batch_buckets(12) == [1, 2, 4, 8, 12]
    assert batch_buckets(1) == [1]
    assert [bucket_for(n, batch_buckets(12)) for n in (1, 3, 5, 9, 12)] == [1, 4, 8, 12, 12]
    with pytest.raises(ValueError):
        bucket_for(13, batch_buckets(12))


def _cuda() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


@pytest.mark.skipif(_cuda(), reason="a CUDA device is present")
def test_without_cuda_the_backend_says_why():
    with pytest.raises(EngineUnavailableError, match="torch-cuda"):
        create_engine(TorchCudaConfig(), DEMO_MODEL, 8)


@pytest.mark.gpu
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_gpu_backend_matches_onnxruntime_and_nms_matches_cpu(precision):
    from visionflow.pipeline.letterbox import letterbox_image, to_network_input
    from visionflow.scenes.generator import SceneGenerator, SceneSpec

    scene = SceneGenerator(SceneSpec(640, 360, seed=5), horizon_s=30)
    x = to_network_input(
        np.stack([letterbox_image(scene.render(i * 40)[0], 320, 320)[0] for i in range(5)])
    )
    with (
        create_engine(OnnxRuntimeConfig(), DEMO_MODEL, 8) as ref,
        create_engine(TorchCudaConfig(precision=precision), DEMO_MODEL, 8) as gpu,
    ):
        expected, got = ref.infer(x), gpu.infer(x)  # 5 -> bucket 8: padding must not leak
        assert gpu.info.backend == "torch-cuda" and gpu.info.num_classes == 3
        tol = 2e-2 if precision == "fp16" else 1e-3
        assert np.abs(expected[:, 4:] - got[:, 4:]).max() < tol
        cpu_dets = ref.detect(x, 0.5, 0.45, 100)
        gpu_dets = gpu.detect(x, 0.5, 0.45, 100)
    for (cb, _, cc), (gb, _, gc) in zip(cpu_dets, gpu_dets, strict=True):
        assert abs(len(cb) - len(gb)) <= 1
        if precision == "fp32" and len(cb) == len(gb):  # equal scores may tie in another order
            assert sorted(cc.tolist()) == sorted(gc.tolist())
            assert np.allclose(np.sort(cb, axis=0), np.sort(gb, axis=0), atol=0.5)


@pytest.mark.gpu
def test_cuda_graphs_replay_what_eager_computes_and_device_frames_match_host():
    import torch

    from visionflow.pipeline.letterbox import letterbox_image
    from visionflow.scenes.generator import SceneGenerator, SceneSpec

    scene = SceneGenerator(SceneSpec(640, 360, seed=9), horizon_s=30)
    images = np.stack([letterbox_image(scene.render(i * 30)[0], 320, 320)[0] for i in range(6)])
    with (
        create_engine(TorchCudaConfig(cuda_graphs=False), DEMO_MODEL, 8) as eager,
        create_engine(TorchCudaConfig(cuda_graphs=True), DEMO_MODEL, 8) as graphs,
    ):
        assert graphs.graph_error is None, graphs.graph_error
        assert "CUDA graphs" in graphs.info.device and "eager" in eager.info.device
        x = torch.from_numpy(images).cuda().permute(0, 3, 1, 2).half() / 255
        for n in (1, 3, 6):  # buckets 1, 4, 8: a partial bucket must not leak into results
            a = eager.forward(x[:n]).float().cpu().numpy()
            b = graphs.forward(x[:n]).float().cpu().numpy()
            assert a.shape == b.shape and np.abs(a - b).max() < 1e-2
        host = graphs.detect_images(images, 0.5, 0.45, 100)
        device = [torch.from_numpy(im).cuda() for im in images]
        frames = graphs.detect_frames(device, 0.5, 0.45, 100)
    assert sum(len(b) for b, _, _ in host) > 6
    for (hb, hs, hc), (db, ds, dc) in zip(host, frames, strict=True):
        assert np.array_equal(hc, dc) and np.allclose(hb, db) and np.allclose(hs, ds)


class _BrokenTorchvision(importlib.abc.MetaPathFinder):
    """Makes ``import torchvision`` fail the way a torchvision built for another torch does."""

    def __init__(self, error: Exception) -> None:
        self.error = error

    def find_spec(self, name, path=None, target=None):
        if name == "torchvision" or name.startswith("torchvision."):
            raise self.error
        return None


@pytest.fixture
def fresh_nms_choice(monkeypatch):
    for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
        monkeypatch.delitem(sys.modules, name)
    nms_function.cache_clear()
    yield
    nms_function.cache_clear()


@pytest.mark.parametrize(
    "error",
    [
        RuntimeError("operator torchvision::nms does not exist"),
        OSError("libtorchvision.so: undefined symbol: _ZN3c10"),
        ImportError("No module named 'torchvision'"),
    ],
)
def test_a_torchvision_that_fails_to_import_falls_back_logging_once(
    fresh_nms_choice, monkeypatch, caplog, error
):
    monkeypatch.setattr(sys, "meta_path", [_BrokenTorchvision(error), *sys.meta_path])
    with caplog.at_level(logging.WARNING, logger="visionflow.engines.torch_cuda"):
        assert nms_function() is torch_cuda._batched_nms
        assert nms_function() is torch_cuda._batched_nms
    (record,) = caplog.records
    assert type(error).__name__ in record.getMessage() and str(error) in record.getMessage()


def test_a_working_torchvision_is_used(fresh_nms_choice, monkeypatch):
    ops = types.ModuleType("torchvision.ops")
    ops.batched_nms = lambda *args: "torchvision"  # type: ignore[attr-defined]
    package = types.ModuleType("torchvision")
    package.ops = ops  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "torchvision", package)
    monkeypatch.setitem(sys.modules, "torchvision.ops", ops)
    assert nms_function() is ops.batched_nms


def test_split_rows_gives_each_image_its_rows_in_order_capped():
    host = np.array(
        [
            [0, 0, 1, 1, 0.9, 3, 1],
            [0, 0, 2, 2, 0.8, 1, 0],
            [0, 0, 3, 3, 0.7, 2, 1],
            [0, 0, 4, 4, 0.6, 0, 1],
        ],
        np.float32,
    )
    first, second, third = split_rows(host, 3, 2)
    assert first[2].tolist() == [1] and second[2].tolist() == [3, 2] and len(third[0]) == 0
    np.testing.assert_allclose(second[1], [0.9, 0.7])
    assert second[2].dtype == np.intp and second[0].shape == (2, 4)


def _torch_or_skip():
    return pytest.importorskip("torch", reason="torch is not installed")


def test_gpu_decode_of_an_end2end_output_matches_the_cpu_decode():
    torch = _torch_or_skip()
    from visionflow.pipeline.postprocess import decode_output

    rng = np.random.default_rng(4)
    out = np.zeros((3, 300, 6), np.float32)
    for i, k in enumerate((0, 5, 300)):
        out[i, :k, :4] = np.sort(rng.uniform(0, 600, (k, 2, 2)), 1).reshape(k, 4)[:, [0, 2, 1, 3]]
        out[i, :k, 4] = rng.uniform(0, 1, k)
        out[i, :k, 5] = rng.integers(0, 80, k)
    got = gpu_decode(torch.from_numpy(out), 0.3, 0.45, 50, OutputLayout.END_TO_END)
    for image, (boxes, scores, classes) in zip(out, got, strict=True):
        ref = decode_output(image, 0.3, 0.45, 50, OutputLayout.END_TO_END)
        np.testing.assert_array_equal(boxes, ref[0])
        np.testing.assert_array_equal(scores, ref[1])
        np.testing.assert_array_equal(classes, ref[2])
    assert len(got[0][0]) == 0 and len(got[2][0]) == 50


def test_gpu_decode_of_an_anchors_output_matches_the_cpu_decode():
    torch = _torch_or_skip()
    from visionflow.pipeline.postprocess import decode_output

    rng = np.random.default_rng(6)
    out = np.zeros((2, 7, 400), np.float32)
    out[:, :2] = rng.uniform(0, 320, (2, 2, 400))
    out[:, 2:4] = rng.uniform(5, 60, (2, 2, 400))
    out[:, 4:] = rng.uniform(0, 1, (2, 3, 400))
    got = gpu_decode(torch.from_numpy(out), 0.5, 0.45, 100)
    for image, (boxes, _, classes) in zip(out, got, strict=True):
        ref_boxes, _, ref_classes = decode_output(image, 0.5, 0.45, 100)
        assert sorted(classes.tolist()) == sorted(ref_classes.tolist())
        np.testing.assert_allclose(np.sort(boxes, 0), np.sort(ref_boxes, 0), atol=1e-3)
