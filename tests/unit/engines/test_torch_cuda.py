"""The torch-cuda backend: bucket logic everywhere, the real thing on a GPU."""

from __future__ import annotations

import numpy as np
import pytest

from visionflow.engines import create_engine
from visionflow.engines.config import OnnxRuntimeConfig, TorchCudaConfig
from visionflow.engines.torch_cuda import batch_buckets, bucket_for
from visionflow.errors import EngineUnavailableError
from visionflow.models import DEMO_MODEL


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
