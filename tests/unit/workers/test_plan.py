"""Planning ingest processes: decoder choice, decode placement, frame memory."""

from __future__ import annotations

import pytest

from tests.unit.gpu.recorded_nvml import (
    H100_A,
    H100_FULL,
    MIG_B,
    THREE_GPUS,
    TWO_GPUS,
    A100_7x1G,
    H100_2x3G,
)
from visionflow.config import parse_config
from visionflow.errors import ConfigError
from visionflow.gpu.discovery import discover
from visionflow.streams.probe import DecoderFigures, choose
from visionflow.workers.plan import plan_ingest, resolve_decode


@pytest.fixture(autouse=True)
def _no_cuda_env(monkeypatch):
    """Recorded layouts are read as they are, whatever the machine running the tests sets."""
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.delenv("CUDA_DEVICE_ORDER", raising=False)


def _config(n: int, backend: str = "torch-cuda", **workers: object):
    return parse_config(
        {
            "streams": [{"id": f"c{i}", "url": f"rtsp://cam{i}/s"} for i in range(n)],
            "engine": {"backend": backend},
            "workers": workers,
        }
    )


def test_gpu_decode_on_a_whole_gpu_keeps_frames_on_the_device():
    cfg = _config(20)
    groups = plan_ingest(cfg, cfg.streams, "nvdec", discover(H100_FULL))
    assert len(groups) == 1  # one CUDA context per GPU for decoding (up to 128 streams)
    assert sum(len(g.streams) for g in groups) == 20
    for g in groups:
        assert g.plan.decode == "nvdec" and g.plan.device_frames
        assert dict(g.plan.env) == {"CUDA_VISIBLE_DEVICES": "GPU-5f7c-lent"}


def test_mig_instances_decode_locally_but_hand_frames_over_in_host_memory():
    cfg = _config(6)
    groups = plan_ingest(cfg, cfg.streams, "nvdec", discover(H100_2x3G))
    assert {dict(g.plan.env)["CUDA_VISIBLE_DEVICES"] for g in groups} == {
        "MIG-h100-0",
        "MIG-h100-1",
    }
    assert not any(g.plan.device_frames for g in groups)
    forced = _config(6, frame_transport="device")
    with pytest.raises(ConfigError, match="MIG instance"):
        plan_ingest(forced, forced.streams, "nvdec", discover(H100_2x3G))


def test_slices_without_nvdec_fall_back_to_cpu_decode():
    cfg = _config(3)
    (group,) = plan_ingest(cfg, cfg.streams, "nvdec", discover(A100_7x1G))
    assert group.plan.decode == "cpu" and not group.plan.env and len(group.streams) == 3


def test_device_frames_for_gpu_backends_unless_host_transport_is_forced():
    for backend in ("torch-cuda", "tensorrt"):
        cfg = _config(2, backend)
        groups = plan_ingest(cfg, cfg.streams, "nvdec", discover(TWO_GPUS))
        assert groups and all(g.plan.device_frames for g in groups), backend
    cfg = _config(2, frame_transport="host")
    groups = plan_ingest(cfg, cfg.streams, "nvdec", discover(TWO_GPUS))
    assert groups and not any(g.plan.device_frames for g in groups)
    assert {g.plan.decode for g in groups} == {"nvdec"}


def test_host_reading_backend_cannot_be_forced_onto_device_frames():
    cfg = _config(2, "onnxruntime", frame_transport="device")
    with pytest.raises(ConfigError, match="the onnxruntime backend reads host memory"):
        plan_ingest(cfg, cfg.streams, "nvdec", discover(TWO_GPUS))


def test_cpu_decode_and_decode_auto():
    cfg = _config(9, "onnxruntime")
    groups = plan_ingest(cfg, cfg.streams, "cpu")
    assert [len(g.streams) for g in groups] == [5, 4]
    assert resolve_decode(cfg, probe=lambda: pytest.fail("no probe for CPU backends")) == "cpu"
    assert resolve_decode(_config(1), probe=lambda: "nvdec") == "nvdec"
    empty = _config(0)
    assert len(plan_ingest(empty, [], "nvdec", discover(H100_FULL))) == 1


def test_decode_uses_the_gpus_inference_workers_get(monkeypatch):
    import visionflow.gpu.discovery as discovery

    real = discovery.discover
    asked = []

    def recorded(nvml=None, **kwargs):
        asked.append(kwargs)
        return real(THREE_GPUS, **kwargs)

    monkeypatch.setattr(discovery, "discover", recorded)
    cfg = _config(6, gpus=[MIG_B, 0])
    groups = plan_ingest(cfg, cfg.streams, "nvdec")
    assert asked == [{"gpus": [MIG_B, 0]}]
    assert {dict(g.plan.env)["CUDA_VISIBLE_DEVICES"] for g in groups} == {MIG_B, H100_A}
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1")
    with pytest.raises(ConfigError, match="CUDA_VISIBLE_DEVICES hides"):
        plan_ingest(cfg, cfg.streams, "nvdec")


def test_decoder_choice_rule():
    cpu = DecoderFigures("cpu", 900.0, 1.2)
    nvdec = DecoderFigures("nvdec", 550.0, 2.0)
    dali = DecoderFigures("dali", 250.0, 620.0)
    assert choose([cpu, nvdec, dali]).decoder == "nvdec"
    assert choose([cpu, DecoderFigures("nvdec", error="no NVDEC"), dali]).decoder == "dali"
    slow = choose([cpu, DecoderFigures("nvdec", 60.0, 2.0)])
    assert slow.decoder == "cpu" and "keeps up" in slow.reason and "60 fps" in slow.reason


def test_added_streams_fill_the_least_loaded_gpu_then_start_processes_there():
    from visionflow.workers.ingest import IngestPlan
    from visionflow.workers.plan import GPU_STREAMS_PER_PROCESS, place_added_stream

    gpu0 = IngestPlan("nvdec", (("CUDA_VISIBLE_DEVICES", "0"),), True)
    gpu1 = IngestPlan("nvdec", (("CUDA_VISIBLE_DEVICES", "1"),), True)
    plans = {0: gpu0, 1: gpu1}
    full = GPU_STREAMS_PER_PROCESS
    # the GPU with fewer streams in all, its least-loaded process
    assert place_added_stream(
        {0: 3, 1: 2}, plans, grow=True, max_processes=8, gpu_per_process=full
    ) == (1, gpu1, False)
    # both full: a new process, on the GPU with fewer streams (not always the first one)
    loads = {0: full, 1: full, 2: full}
    three = {**plans, 2: gpu0}
    assert place_added_stream(loads, three, grow=True, max_processes=8, gpu_per_process=full) == (
        3,
        gpu1,
        True,
    )
    # a configured count, or no core left: the least-loaded process takes it anyway
    assert place_added_stream(loads, three, grow=False, max_processes=8, gpu_per_process=full) == (
        1,
        gpu1,
        False,
    )
    assert place_added_stream(loads, three, grow=True, max_processes=3, gpu_per_process=full) == (
        1,
        gpu1,
        False,
    )


def test_a_configured_process_count_is_reached_by_streams_added_at_run_time():
    """``workers.ingest_processes: 2`` and one stream at start-up (one process started):
    the next stream opens the second process, later ones go to the least loaded."""
    from visionflow.workers.ingest import IngestPlan
    from visionflow.workers.plan import place_added_stream

    gpu0 = IngestPlan("nvdec", (("CUDA_VISIBLE_DEVICES", "0"),), True)
    kw = {"grow": False, "max_processes": 16, "gpu_per_process": 128, "configured": 2}
    assert place_added_stream({0: 1}, {0: gpu0}, **kw) == (1, gpu0, True)
    assert place_added_stream({0: 5, 1: 3}, {0: gpu0, 1: gpu0}, **kw) == (1, gpu0, False)


def test_a_configured_process_count_spreads_over_the_gpus_from_an_empty_start():
    """A fleet node starts with no streams (one empty process on GPU 0) and
    ``ingest_processes: 4`` on two GPUs: the empty process is used first, then the GPUs
    take turns, two processes each."""
    from visionflow.workers.ingest import IngestPlan
    from visionflow.workers.plan import place_added_stream

    gpus = [IngestPlan("nvdec", (("CUDA_VISIBLE_DEVICES", str(i)),), True) for i in (0, 1)]
    plans, loads = {0: gpus[0]}, {0: 0}
    for _ in range(8):
        index, plan, new = place_added_stream(
            loads, plans, grow=False, max_processes=16, gpu_per_process=128,
            candidates=gpus, configured=4,
        )  # fmt: skip
        if new:
            plans[index] = plan
        loads[index] = loads.get(index, 0) + 1
    assert len(plans) == 4 and sorted(loads.values()) == [2, 2, 2, 2], loads
    assert sorted(p.env[0][1] for p in plans.values()) == ["0", "0", "1", "1"]


def test_added_streams_on_the_cpu_get_a_new_process_once_each_has_its_share():
    from visionflow.workers.ingest import IngestPlan
    from visionflow.workers.plan import STREAMS_PER_PROCESS, place_added_stream

    cpu = IngestPlan()
    loads = {0: STREAMS_PER_PROCESS - 1}
    assert place_added_stream(loads, {0: cpu}, grow=True, max_processes=2, gpu_per_process=128) == (
        0,
        cpu,
        False,
    )
    loads = {0: STREAMS_PER_PROCESS}
    assert place_added_stream(loads, {0: cpu}, grow=True, max_processes=2, gpu_per_process=128) == (
        1,
        cpu,
        True,
    )


def test_gpu_decode_reads_many_streams_per_process_cpu_decode_few(monkeypatch):
    """Each GPU ingest process is a CUDA context the card time-slices with the worker's:
    128 streams on one GPU take one process; on the CPU they take one per 8 (up to the cores)."""
    from visionflow.workers import plan as planning

    monkeypatch.setattr(planning, "usable_cores", lambda: 16)
    cfg = _config(130)
    one_gpu = discover(H100_FULL)
    groups = planning.plan_ingest(cfg, cfg.streams[:128], "nvdec", one_gpu)
    assert [len(g.streams) for g in groups] == [128]
    assert len(planning.plan_ingest(cfg, cfg.streams, "nvdec", one_gpu)) == 2  # past 128
    assert len(planning.plan_ingest(cfg, cfg.streams[:128], "cpu")) == 16


def test_a_compiled_engine_gets_a_second_gpu_ingest_process_past_64_streams(monkeypatch):
    """With ``engine.compile`` the card has time to spare and one process's readers limit
    (one H200: 80 streams sustained with one process, 96 with two)."""
    from visionflow.config import parse_config
    from visionflow.workers import plan as planning
    from visionflow.workers.ingest import IngestPlan

    monkeypatch.setattr(planning, "usable_cores", lambda: 16)
    streams = [{"id": f"c{i}", "url": f"rtsp://cam{i}/s"} for i in range(96)]
    compiled = parse_config(
        {"streams": streams, "engine": {"backend": "torch-cuda", "compile": True}}
    )
    one_gpu = discover(H100_FULL)
    assert planning.gpu_streams_per_process(compiled) == 64
    groups = planning.plan_ingest(compiled, compiled.streams, "nvdec", one_gpu)
    assert [len(g.streams) for g in groups] == [48, 48]
    assert len(planning.plan_ingest(compiled, compiled.streams[:64], "nvdec", one_gpu)) == 1
    assert planning.gpu_streams_per_process(_config(1)) == 128  # not compiled
    assert planning.gpu_streams_per_process(_config(1, backend="onnxruntime")) == 128
    # streams added at run time: a new process once the one there reads 64
    gpu0 = IngestPlan("nvdec", (("CUDA_VISIBLE_DEVICES", "0"),), True)
    place = planning.place_added_stream
    assert place({0: 63}, {0: gpu0}, grow=True, max_processes=8, gpu_per_process=64) == (
        0,
        gpu0,
        False,
    )
    assert place({0: 64}, {0: gpu0}, grow=True, max_processes=8, gpu_per_process=64) == (
        1,
        gpu0,
        True,
    )


def test_a_node_started_without_streams_spreads_added_ones_over_every_gpu():
    """A fleet node starts with one process on the first GPU and no streams; the decode
    slots' plans are offered as candidates, so added streams reach the other GPU too."""
    from visionflow.workers.ingest import IngestPlan
    from visionflow.workers.plan import place_added_stream

    gpu0 = IngestPlan("nvdec", (("CUDA_VISIBLE_DEVICES", "0"),), True)
    gpu1 = IngestPlan("nvdec", (("CUDA_VISIBLE_DEVICES", "1"),), True)
    plans, loads = {0: gpu0}, {0: 0}
    placed = []
    for _ in range(4):
        index, plan, new = place_added_stream(
            loads, plans, grow=True, max_processes=8, gpu_per_process=128, candidates=[gpu0, gpu1]
        )
        if new:
            plans[index] = plan
        loads[index] = loads.get(index, 0) + 1
        placed.append((index, plan is gpu1, new))
    assert placed == [(0, False, False), (1, True, True), (0, False, False), (1, True, False)]
    # a configured process count (no growth): the candidates are not offered
    assert place_added_stream({0: 0}, {0: gpu0}, grow=False, max_processes=8,
                              gpu_per_process=128, candidates=[gpu0, gpu1]) == (0, gpu0, False)  # fmt: skip
