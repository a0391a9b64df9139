from __future__ import annotations

import shutil

import pytest

from tests.unit.gpu.recorded_nvml import H100_FULL, H100_MIXED, TWO_GPUS, A100_7x1G, H100_2x3G
from visionflow.gpu.discovery import discover
from visionflow.gpu.placement import place_decoders, place_workers


@pytest.fixture(autouse=True)
def _no_cuda_env(monkeypatch):
    """Recorded layouts are read as they are, whatever the machine running the tests sets."""
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.delenv("CUDA_DEVICE_ORDER", raising=False)


def test_a100_seven_1g_slices_give_seven_workers_and_no_gpu_decode():
    slots = discover(A100_7x1G)
    assert [s.uuid for s in slots] == [f"MIG-a100-{i}" for i in range(7)]
    assert all(s.is_mig and s.nvdecs == 0 and s.memory_mb == 9728 for s in slots)
    workers = place_workers(slots)
    assert [w.env["CUDA_VISIBLE_DEVICES"] for w in workers] == [s.uuid for s in slots]
    assert set(place_decoders(["a", "b"], slots).values()) == {None}
    assert A100_7x1G.calls[-1] == "shutdown"


def test_h100_two_3g_slices_split_decode_evenly():
    slots = discover(H100_2x3G)
    assert [(s.label, s.nvdecs) for s in slots] == [("gpu0:3g.40gb", 3), ("gpu0:3g.40gb", 3)]
    decode = place_decoders([f"cam{i}" for i in range(6)], slots)
    assert sorted(s.uuid for s in decode.values()) == ["MIG-h100-0"] * 3 + ["MIG-h100-1"] * 3


def test_mixed_layout_weights_decode_by_nvdec_count():
    slots = discover(H100_MIXED)
    decode = place_decoders([f"c{i}" for i in range(14)], slots)
    per = {u: sum(1 for s in decode.values() if s.uuid == u) for u in (s.uuid for s in slots)}
    assert per == {"MIG-h100m-0": 8, "MIG-h100m-1": 4, "MIG-h100m-2": 2}


def test_full_gpu_and_several_workers_per_gpu():
    (slot,) = discover(H100_FULL)
    assert not slot.is_mig and slot.nvdecs == 7 and slot.compute_capability == "9.0"
    workers = place_workers([slot], workers_per_slot=3)
    assert [w.worker_id for w in workers] == [0, 1, 2]
    assert {w.env["CUDA_VISIBLE_DEVICES"] for w in workers} == {"GPU-5f7c-lent"}
    with pytest.raises(ValueError):
        place_workers([slot], 0)


def test_mixed_host_lists_whole_gpus_and_mig_instances():
    slots = discover(TWO_GPUS)
    assert [(s.parent_index, s.uuid, s.nvdecs) for s in slots] == [
        (0, "GPU-0", 7),
        (1, "MIG-1-0", 2),
        (1, "MIG-1-1", 0),
    ]


@pytest.mark.gpu
def test_discovery_on_the_real_card():
    pytest.importorskip("pynvml")
    assert shutil.which("nvidia-smi")
    slots = discover()
    assert slots and all(s.uuid.startswith(("GPU-", "MIG-")) for s in slots)
    assert all(s.memory_mb > 1000 for s in slots)


def test_gpu_backends_get_one_pinned_worker_per_slot():
    from visionflow.gpu.placement import gpu_worker_envs

    assert gpu_worker_envs(1, A100_7x1G) == [
        {"CUDA_VISIBLE_DEVICES": f"MIG-a100-{i}"} for i in range(7)
    ]
    assert gpu_worker_envs(2, TWO_GPUS) == [
        {"CUDA_VISIBLE_DEVICES": u}
        for u in ("GPU-0", "GPU-0", "MIG-1-0", "MIG-1-0", "MIG-1-1", "MIG-1-1")
    ]


def test_no_gpu_is_a_clear_engine_error():
    from tests.unit.gpu.recorded_nvml import RecordedNvml
    from visionflow.errors import EngineUnavailableError
    from visionflow.gpu.placement import gpu_worker_envs

    with pytest.raises(EngineUnavailableError, match="no GPU"):
        gpu_worker_envs(1, RecordedNvml([]))
