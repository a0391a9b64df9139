"""The whole pipeline on a GPU: NVDEC decode, torch-cuda inference, real Redis."""

from __future__ import annotations

import pytest

from tests.conftest import wait_until
from tests.integration.helpers import config, entries, running

pytestmark = [pytest.mark.integration, pytest.mark.gpu]


@pytest.mark.parametrize("decode", ["nvdec", "dali"])
def test_gpu_decode_and_torch_cuda_publish_correct_boxes(
    make_clip, redis_server, redis_client, key_prefix, decode
):
    """Frames decoded on the GPU stay there (CUDA IPC slots) into the torch-cuda worker."""
    from visionflow.scenes.clips import load_truth
    from visionflow.scenes.metrics import Scored, Truth, precision_recall

    clip = make_clip(1280, 720, 8.0, "h264", 22, 10)  # the truth test's "hd" scene
    cfg = config(
        [{"id": "cam", "url": str(clip), "realtime": False}],
        redis_server,
        key_prefix,
        engine={"backend": "torch-cuda", "precision": "fp16"},
        decode=decode,
    )
    with running(cfg, redis_server) as pipeline:
        wait_until(
            lambda: len(entries(redis_client, key_prefix, "cam")) >= 40,
            60,
            lambda: f"{pipeline.status().stream('cam')}",
        )
        worker = pipeline.status().workers[0]
        assert pipeline.status().stream("cam").decode == f"{decode}/device"
    assert worker.backend == "torch-cuda"
    truth = load_truth(clip)
    frames = [
        (
            [Scored(d["class_id"], d["score"], tuple(d["box"])) for d in e.detections],
            [Truth(t.class_id, (t.x1, t.y1, t.x2, t.y2), t.ignorable) for t in truth[e.seq]],
        )
        for e in entries(redis_client, key_prefix, "cam")
        if e.seq in truth
    ]
    pr = precision_recall(frames)
    assert pr.precision >= 0.9 and pr.recall >= 0.9, pr
