"""Worker status as Redis and the status table get it: where each worker runs."""

from __future__ import annotations

from tests.unit.gpu.recorded_nvml import MIG_A, THREE_GPUS
from visionflow.gpu.placement import plan_gpu_workers
from visionflow.workers.status import WorkerStatus


def _status(**kwargs: object) -> WorkerStatus:
    base: dict[str, object] = dict(
        worker_id=0,
        state="ready",
        backend="torch-cuda",
        device="cuda:0",
        batches=4,
        frames=10,
        inflight=1,
        restarts=0,
        error=None,
    )
    return WorkerStatus(**(base | kwargs))


def test_placement_reaches_redis():
    (placed,) = plan_gpu_workers(1, [MIG_A], nvml=THREE_GPUS, environ={})
    fields = _status(placement=placed.label).redis_fields()
    assert fields["placement"] == "GPU 2 MIG 3g.40gb (MIG-5e6f7a8b…)"
    assert fields["mean_batch"] == "2.50" and fields["error"] == ""


def test_placement_defaults_to_empty_for_cpu_workers():
    status = _status(backend="onnxruntime", device="cpu")
    assert status.placement == "" and status.redis_fields()["placement"] == ""
