"""Which GPUs / MIG instances a run uses: CUDA_VISIBLE_DEVICES, then workers.gpus (issue #12).

NVML lists every GPU of the host whatever CUDA_VISIBLE_DEVICES says; discovery must apply it
as CUDA does (rules as PyTorch's ``torch.cuda._parse_visible_devices`` reproduces them).
"""

from __future__ import annotations

import logging

import pytest

from tests.unit.gpu.recorded_nvml import (
    A100_MIG,
    H100_A,
    H100_B,
    MIG_A,
    MIG_B,
    THREE_GPUS,
    TWO_GPUS,
    Gpu,
    H100_2x3G,
    RecordedNvml,
)
from visionflow.config import parse_config
from visionflow.errors import ConfigError, EngineUnavailableError
from visionflow.gpu.discovery import discover, scan, visible_slots
from visionflow.gpu.placement import gpu_worker_envs, plan_gpu_workers


def uuids(visible: str | None, nvml: RecordedNvml = THREE_GPUS, **env: str) -> list[str]:
    environ = dict(env)
    if visible is not None:
        environ["CUDA_VISIBLE_DEVICES"] = visible
    return [s.uuid for s in discover(nvml, environ=environ)]


ALL = [H100_A, H100_B, MIG_A, MIG_B]


# ---- CUDA_VISIBLE_DEVICES --------------------------------------------------------------------
def test_unset_means_every_gpu_and_empty_means_none():
    assert uuids(None) == ALL
    assert uuids("") == []


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("0", [H100_A]),
        ("1,0", [H100_B, H100_A]),  # CUDA's order, not NVML's
        ("2", [MIG_A, MIG_B]),  # a GPU with MIG on stands for its instances
        ("2,0", [MIG_A, MIG_B, H100_A]),
        (" 1 , 0 ", [H100_B, H100_A]),  # spaces around indices are skipped
        ("1gpu,0", [H100_B, H100_A]),  # read like strtoul: the leading integer
        ("+1", [H100_B]),
    ],
)
def test_indices(value, expected):
    assert uuids(value, CUDA_DEVICE_ORDER="PCI_BUS_ID") == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("0,7,1", [H100_A]),  # out of range: it and what follows are ignored
        ("0,-1,1", [H100_A]),  # negative
        ("1,,0", [H100_B]),  # empty entry
        ("1,x,0", [H100_B]),  # not a number
        ("x", []),
        ("-1", []),
        (" ", []),
    ],
)
def test_the_first_invalid_index_ends_the_list(value, expected, caplog):
    with caplog.at_level(logging.WARNING, "visionflow.gpu"):
        assert uuids(value, CUDA_DEVICE_ORDER="PCI_BUS_ID") == expected
    assert "CUDA ignores it and what follows" in caplog.text


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (H100_B, [H100_B]),
        (f"{H100_B},{H100_A}", [H100_B, H100_A]),
        ("GPU-8f3a9", [H100_B]),  # a unique start of a UUID is enough
        ("GPU-c0ff", [MIG_A, MIG_B]),  # a GPU with MIG on by UUID: its instances
        ("GPU-8f3a9,GPU-8f3a1", [H100_B, H100_A]),
        ("GPU-8f3a,GPU-8f3a9", []),  # ambiguous prefix: invalid, the list ends there
        ("GPU-8f3a9,GPU-dead,GPU-8f3a1", [H100_B]),  # unknown UUID ends the list
        ("GPU-8f3a9,0", [H100_B]),  # the first entry decides: UUIDs; an index ends it
        ("0,GPU-8f3a9", [H100_A]),  # ... indices; a UUID ends it
        (MIG_B, [MIG_B]),  # a MIG UUID: that instance alone
        ("MIG-5e6fb,MIG-5e6f7", [MIG_B, MIG_A]),
        (f"MIG-5e6fb,{H100_A}", [MIG_B]),  # MIG list: a GPU UUID ends it
        ("MIG-5e6f", []),  # ambiguous
        (f"{A100_MIG}", [MIG_A, MIG_B]),
    ],
)
def test_uuids_and_uuid_prefixes(value, expected):
    assert uuids(value) == expected


@pytest.mark.parametrize("value", ["0,0", "1,0,1", "GPU-8f3a9,GPU-8f3a9d4e", "MIG-5e6fb,MIG-5e6fb"])
def test_a_device_named_twice_hides_every_device(value, caplog):
    with caplog.at_level(logging.WARNING, "visionflow.gpu"):
        assert uuids(value, CUDA_DEVICE_ORDER="PCI_BUS_ID") == []
    assert "twice" in caplog.text


def test_indices_on_mixed_models_warn_unless_pci_bus_order(caplog):
    gpus = scan(TWO_GPUS)  # an H100 and an A100: CUDA's default order may differ from NVML's
    with caplog.at_level(logging.WARNING, "visionflow.gpu"):
        assert [s.uuid for s in visible_slots(gpus, "0")] == ["GPU-0"]
    assert "CUDA_DEVICE_ORDER=PCI_BUS_ID" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, "visionflow.gpu"):
        visible_slots(gpus, "0", device_order="PCI_BUS_ID")
        visible_slots(gpus, "GPU-0")  # UUIDs need no order
        visible_slots(scan(H100_2x3G), "0")  # one model: every order agrees
    assert not caplog.text


# ---- workers.gpus ----------------------------------------------------------------------------
def selected(gpus: list[str | int], visible: str | None = None) -> list[str]:
    environ = {} if visible is None else {"CUDA_VISIBLE_DEVICES": visible}
    cfg = parse_config({"workers": {"gpus": gpus}})
    return [s.uuid for s in discover(THREE_GPUS, gpus=cfg.workers.gpus, environ=environ)]


def test_workers_gpus_by_index_uuid_and_mig_uuid_in_the_order_listed():
    assert selected([1]) == [H100_B]
    assert selected(["1", 0]) == [H100_B, H100_A]  # "1" from YAML strings is index 1
    assert selected([H100_B, "GPU-8f3a1"]) == [H100_B, H100_A]
    assert selected([2]) == [MIG_A, MIG_B]
    assert selected([MIG_B, 0]) == [MIG_B, H100_A]
    assert selected(["MIG-5e6f7"]) == [MIG_A]


def test_workers_gpus_apply_after_cuda_visible_devices():
    assert selected([2], visible="2,0") == [MIG_A, MIG_B]
    assert selected([2], visible=MIG_B) == [MIG_B]  # only the instance CUDA may see
    with pytest.raises(
        ConfigError, match=r"workers.gpus: 1 is GPU 1 .* CUDA_VISIBLE_DEVICES hides"
    ):
        selected([1], visible="0")
    with pytest.raises(ConfigError, match="hidden by CUDA_VISIBLE_DEVICES"):
        selected([MIG_A], visible=MIG_B)


@pytest.mark.parametrize("entry", [3, "GPU-dead", "MIG-beef"])
def test_unknown_entry_is_named_with_what_exists(entry):
    with pytest.raises(ConfigError) as err:
        selected([0, entry])
    text = str(err.value)
    assert text.startswith(f"workers.gpus: no GPU or MIG instance {entry!r} on this machine")
    for uuid in (H100_A, H100_B, A100_MIG, MIG_A, MIG_B):
        assert uuid in text
    assert "NVIDIA H100 80GB HBM3" in text and "NVIDIA A100-SXM4-80GB, MIG on" in text
    assert "MIG 3g.40gb" in text


def test_ambiguous_prefix_and_overlapping_entries():
    with pytest.raises(ConfigError, match=f"start of several UUIDs \\({H100_A}, {H100_B}\\)"):
        selected(["GPU-8f3a"])
    with pytest.raises(ConfigError, match=r"'MIG-5e6fb' and 2 both name GPU 2 MIG 3g.40gb"):
        selected([2, "MIG-5e6fb"])
    with pytest.raises(ConfigError, match="both name GPU 0"):
        selected([0, "GPU-8f3a1b"])


def test_mig_gpu_without_instances_is_explained():
    empty = RecordedNvml([Gpu("NVIDIA A100-SXM4-80GB", "GPU-a", 81920, (8, 0), mig=[])])
    with pytest.raises(ConfigError, match="MIG on but no MIG instance"):
        discover(empty, gpus=[0], environ={})


@pytest.mark.parametrize(
    ("gpus", "message"),
    [
        ([0, "0"], "'0' is listed twice"),
        ([H100_A, f" {H100_A}"], "is listed twice"),
        (["cuda:0"], "neither an NVML index"),
        ([-1], "not an NVML index"),
        ([True], "not true/false"),
        ([], "at least 1 item"),
    ],
)
def test_config_rejects_duplicates_and_malformed_entries(gpus, message):
    with pytest.raises(ConfigError, match=f"workers.gpus.*{message}"):
        parse_config({"workers": {"gpus": gpus}})


def test_config_default_is_every_gpu():
    assert parse_config({}).workers.gpus is None


# ---- placement -------------------------------------------------------------------------------
def test_worker_placements_carry_env_uuid_and_label():
    placed = plan_gpu_workers(1, nvml=THREE_GPUS, environ={})
    assert [(w.worker_id, w.uuid, w.env, w.label) for w in placed] == [
        (0, H100_A, {"CUDA_VISIBLE_DEVICES": H100_A}, "GPU 0 (H100 80GB HBM3, GPU-8f3a1b2c…)"),
        (1, H100_B, {"CUDA_VISIBLE_DEVICES": H100_B}, "GPU 1 (H100 80GB HBM3, GPU-8f3a9d4e…)"),
        (2, MIG_A, {"CUDA_VISIBLE_DEVICES": MIG_A}, "GPU 2 MIG 3g.40gb (MIG-5e6f7a8b…)"),
        (3, MIG_B, {"CUDA_VISIBLE_DEVICES": MIG_B}, "GPU 2 MIG 3g.40gb (MIG-5e6fb0b0…)"),
    ]
    assert placed[0].env_items == (("CUDA_VISIBLE_DEVICES", H100_A),)
    two = plan_gpu_workers(
        2, [MIG_B, 1], nvml=THREE_GPUS, environ={"CUDA_DEVICE_ORDER": "PCI_BUS_ID"}
    )
    assert [w.label for w in two] == ["GPU 2 MIG 3g.40gb (MIG-5e6fb0b0…)"] * 2 + [
        "GPU 1 (H100 80GB HBM3, GPU-8f3a9d4e…)"
    ] * 2
    assert [w.worker_id for w in two] == [0, 1, 2, 3]


def test_gpu_worker_envs_keeps_its_old_call_and_takes_gpus():
    assert gpu_worker_envs(1, THREE_GPUS, environ={}) == [{"CUDA_VISIBLE_DEVICES": u} for u in ALL]
    assert gpu_worker_envs(1, THREE_GPUS, gpus=[MIG_A], environ={}) == [
        {"CUDA_VISIBLE_DEVICES": MIG_A}
    ]
    assert gpu_worker_envs(1, THREE_GPUS, environ={"CUDA_VISIBLE_DEVICES": "1"}) == [
        {"CUDA_VISIBLE_DEVICES": H100_B}
    ]


def test_nothing_visible_is_an_engine_error_and_bad_gpus_a_config_error():
    with pytest.raises(EngineUnavailableError, match="CUDA_VISIBLE_DEVICES=''"):
        plan_gpu_workers(1, nvml=THREE_GPUS, environ={"CUDA_VISIBLE_DEVICES": ""})
    with pytest.raises(ConfigError, match="no GPU or MIG instance 9"):
        plan_gpu_workers(1, [9], nvml=THREE_GPUS, environ={})
