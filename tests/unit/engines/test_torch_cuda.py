"""The torch-cuda backend: bucket logic everywhere, the real thing on a GPU."""

from __future__ import annotations

import numpy as np
import pytest

from visionflow.engines import Thresholds, create_engine
from visionflow.engines.ort import OnnxRuntimeConfig
from visionflow.engines.torch_cuda import TorchCudaConfig, batch_buckets, bucket_for
from visionflow.errors import EngineError, EngineUnavailableError
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
@pytest.mark.parametrize("compile", [False, True], ids=["converted", "compiled"])
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_gpu_backend_matches_onnxruntime_and_nms_matches_cpu(precision, compile):
    from visionflow.pipeline.letterbox import letterbox_image, to_network_input
    from visionflow.pipeline.postprocess import decode_output
    from visionflow.scenes.generator import SceneGenerator, SceneSpec

    scene = SceneGenerator(SceneSpec(640, 360, seed=5), horizon_s=30)
    images = np.stack([letterbox_image(scene.render(i * 40)[0], 320, 320)[0] for i in range(5)])
    x = to_network_input(images)
    with (
        create_engine(OnnxRuntimeConfig(), DEMO_MODEL, 8) as ref,
        create_engine(TorchCudaConfig(precision=precision, compile=compile), DEMO_MODEL, 8) as gpu,
    ):
        expected, got = ref.infer(x), gpu.infer(x)  # 5 -> bucket 8: padding must not leak
        assert gpu.info.backend == "torch-cuda" and gpu.info.num_classes == 3
        assert gpu.compile_error is None, gpu.compile_error
        assert ("compiled" in gpu.info.device) == compile
        tol = 2e-2 if precision == "fp16" else 1e-3
        assert np.abs(expected[:, 4:] - got[:, 4:]).max() < tol
        t = Thresholds(0.5, 0.45, 100)
        cpu_dets = [decode_output(o, t.conf, t.iou, t.max_detections) for o in expected]
        gpu_dets = gpu.detect(list(images), t)
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
        create_engine(TorchCudaConfig(cuda_graphs=False, compile=False), DEMO_MODEL, 8) as eager,
        create_engine(TorchCudaConfig(cuda_graphs=True), DEMO_MODEL, 8) as graphs,
    ):
        assert graphs.graph_error is None, graphs.graph_error
        assert "CUDA graphs" in graphs.info.device and "eager" in eager.info.device
        x = torch.from_numpy(images).cuda().permute(0, 3, 1, 2).half() / 255
        for n in (1, 3, 6):  # buckets 1, 4, 8: a partial bucket must not leak into results
            a = eager.forward(x[:n]).float().cpu().numpy()
            b = graphs.forward(x[:n]).float().cpu().numpy()
            assert a.shape == b.shape and np.abs(a - b).max() < 1e-2
        t = Thresholds(0.5, 0.45, 100)
        host = graphs.detect(list(images), t)
        device = [torch.from_numpy(im).cuda() for im in images]
        frames = graphs.detect(device, t)
        mixed = graphs.detect([device[0], images[1], *device[2:]], t)
        # two batches in flight on two streams, collected in order, match one at a time
        first = graphs.submit(device[:3], t)
        second = graphs.submit(list(images[3:]), t)
        with pytest.raises(EngineError, match="in flight"):
            graphs.submit(device[:1], t)
        with pytest.raises(EngineError, match="submit order"):
            second.result()
        inflight = first.result() + second.result()
    assert graphs.capabilities.max_inflight == 2 and graphs.capabilities.device_frames
    assert sum(len(b) for b, _, _ in host) > 6
    for other in (frames, mixed, inflight):
        for (hb, hs, hc), (db, ds, dc) in zip(host, other, strict=True):
            assert np.array_equal(hc, dc) and np.allclose(hb, db) and np.allclose(hs, ds)


@pytest.mark.gpu
def test_a_model_that_cannot_be_compiled_runs_as_converted(monkeypatch):
    import torch

    def broken(module, **_):  # bucket 1 compiles, bucket 2 fails: all must fall back
        def run(x):
            if x.shape[0] == 2:
                raise RuntimeError("inductor says no")
            return module(x)

        return run

    monkeypatch.setattr(torch, "compile", broken)
    x = np.random.default_rng(3).random((2, 3, 320, 320), dtype=np.float32)
    with (
        create_engine(OnnxRuntimeConfig(), DEMO_MODEL, 2) as ref,
        create_engine(TorchCudaConfig(precision="fp32", compile=True), DEMO_MODEL, 2) as gpu,
    ):
        assert gpu.compile_error == "RuntimeError: inductor says no"
        assert "compiled" not in gpu.info.device and gpu.graph_error is None
        assert all(isinstance(m, torch.nn.Module) for m in gpu._modules.values())
        expected, got = ref.infer(x), gpu.infer(x)
        assert np.abs(expected[:, 4:] - got[:, 4:]).max() < 1e-3  # scores
        assert np.allclose(expected[:, :4], got[:, :4], rtol=1e-3, atol=0.05)  # boxes, pixels


def _random_output(rng: np.random.Generator, n: int, classes: int, anchors: int) -> np.ndarray:
    """Raw ``[n, 4+C, A]`` output with boxes clustered around a few centres (long overlap
    chains, many classes) - harder for NMS than a real detector's output."""
    out = np.zeros((n, 4 + classes, anchors), np.float32)
    for i in range(n):
        centres = rng.uniform(20, 300, (8, 2))[rng.integers(0, 8, anchors)]
        out[i, :2] = (centres + rng.normal(0, 6, (anchors, 2))).T
        out[i, 2:4] = rng.uniform(10, 60, (2, anchors))
        out[i, 4:] = rng.uniform(0, 1, (classes, anchors)) ** 3
    return out


@pytest.mark.parametrize("rounds", [1, 8])
def test_fixed_shape_gpu_nms_is_exact_greedy_nms(rounds):
    """:class:`CandidateNms` (run here on the CPU) keeps what the shared CPU decode keeps,
    whether its first rounds converged or :meth:`finish` had to complete them."""
    torch = pytest.importorskip("torch")
    from visionflow.engines.torch_cuda import candidates_nms
    from visionflow.pipeline.postprocess import decode_output

    rng = np.random.default_rng(rounds)
    out = _random_output(rng, 3, 3, 600)
    state = candidates_nms(torch.from_numpy(out), 0.25, 0.45, candidates=1024, rounds=rounds)
    if rounds == 1:
        assert not bool(state.converged()[0])  # this data needs several rounds
    state.finish()
    assert bool(state.converged()[0])
    rows, counts = state.rows(100).numpy(), state.counts(100).numpy()
    assert rows.shape == (3, 100, 6)
    for i in range(3):
        boxes, scores, classes = decode_output(out[i], 0.25, 0.45, 100)
        got = rows[i, : counts[i]]
        assert counts[i] == len(boxes) > 10
        assert np.allclose(got[:, :4], boxes, atol=1e-4) and np.allclose(got[:, 4], scores)
        assert np.array_equal(got[:, 5].astype(np.intp), classes)


def test_gpu_nms_candidates_cap_keeps_the_best_boxes():
    torch = pytest.importorskip("torch")
    from visionflow.engines.torch_cuda import candidates_nms

    out = _random_output(np.random.default_rng(3), 2, 2, 400)
    state = candidates_nms(torch.from_numpy(out), 0.0, 0.45, candidates=16)
    state.finish()
    rows, counts = state.rows(300).numpy(), state.counts(300).numpy()
    assert rows.shape == (2, 16, 6) and (counts <= 16).all() and (counts > 0).all()
    best = out[:, 4:].max(1).max(1)
    assert np.allclose(rows[:, 0, 4], best)  # the best box of each image is always kept
