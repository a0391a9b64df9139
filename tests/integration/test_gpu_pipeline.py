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


def test_killed_nvdec_ingest_leaves_no_cuda_ipc_pool_behind(make_clip, redis_server, key_prefix):
    """An NVDEC ingest process SIGKILLed three times: every restart allocates new device frame
    pools, and the inference worker closes its CUDA IPC mappings of the dead ones
    (``PoolClosed``).  A mapping kept open keeps the dead process's allocation alive on the
    card, so the GPU's used memory would grow by the pools' size at every kill; it must not."""
    import os
    import signal

    import pynvml

    clip = make_clip(1280, 720, 8.0, "h264", 22, 10)
    streams = [{"id": c, "url": str(clip), "loop": True} for c in ("a", "b")]
    slots = 64
    cfg = config(
        streams,
        redis_server,
        key_prefix,
        engine={"backend": "torch-cuda", "precision": "fp16"},
        decode="nvdec",
        workers={"ingest_processes": 1, "slots_per_stream": slots},
    )
    pynvml.nvmlInit()
    try:
        gpu = pynvml.nvmlDeviceGetHandleByIndex(0)
        with running(cfg, redis_server) as pipeline:
            width, height = pipeline.model.input_size
            pools_bytes = len(streams) * slots * width * height * 3
            _published_more(pipeline, 30)
            before = pynvml.nvmlDeviceGetMemoryInfo(gpu).used
            for _ in range(3):
                child = pipeline.group.children["ingest-0"]
                old = child.process
                os.kill(old.pid, signal.SIGKILL)
                wait_until(
                    lambda: child.process is not old and child.alive,  # noqa: B023
                    30,
                    "the ingest process was not restarted",
                )
                _published_more(pipeline, 30)
            grown = pynvml.nvmlDeviceGetMemoryInfo(gpu).used - before
            assert pipeline.status().stream("a").decode == "nvdec/device"
    finally:
        pynvml.nvmlShutdown()
    mib = 2**20
    print(
        f"GPU memory after 3 ingest kills: {grown / mib:+.0f} MiB (pools {pools_bytes / mib:.0f})"
    )
    assert grown < pools_bytes / 2, f"{grown / 2**20:.0f} MiB more: dead pools still mapped"


def _published_more(pipeline, n: int) -> None:  # type: ignore[no-untyped-def]
    before = {s.stream_id: s.published for s in pipeline.status().streams}
    wait_until(
        lambda: all(s.published >= before[s.stream_id] + n for s in pipeline.status().streams),
        60,
        lambda: f"streams did not publish {n} more: {pipeline.status().streams}",
    )
