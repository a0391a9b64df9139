"""Planning the ingest processes: which decoder, on which GPU, frames in which memory.

- ``decode: auto`` resolves to ``cpu`` for CPU inference backends (their frames are needed in
  host memory anyway) and, for GPU backends, to what :mod:`visionflow.streams.probe`
  measured on this machine.
- GPU decode goes only where NVDEC engines are (``place_decoders``: streams spread over the
  GPUs / MIG instances in proportion to their NVDEC count, CPU decode where there is none);
  each ingest process is pinned to its decode slot with ``CUDA_VISIBLE_DEVICES``.  The slots
  are those inference workers get (``discover``: ``CUDA_VISIBLE_DEVICES`` then
  ``workers.gpus``), so decode never lands on a GPU the run was told not to use.
- Frames stay in GPU memory (CUDA IPC) when they are decoded on the GPU and the inference
  backend reads device memory, except on MIG instances, which cannot map each other's memory:
  there the letterboxed image crosses host shared memory (a 1.2 MB device-to-host and
  host-to-device copy per 640x640 frame).
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from visionflow.config import AppConfig
from visionflow.errors import ConfigError
from visionflow.gpu.discovery import InferenceSlot
from visionflow.gpu.placement import place_decoders
from visionflow.streams.config import StreamConfig
from visionflow.workers.ingest import IngestPlan

log = logging.getLogger("visionflow.plan")
DEVICE_FRAME_BACKENDS = frozenset({"torch-cuda", "tensorrt"})
STREAMS_PER_PROCESS = 8  # CPU decode: each process's cores do the decoding
# GPU decode: the work is on the card, and every ingest process is one more CUDA context the
# card time-slices with the inference worker's, so one process per GPU reads up to this many
# streams (on one H100, 128 streams: 1 process 2,310 published fps at 0 drops, 2-3 processes
# 2,130-2,180 with drops, 16 processes collapsed: bench/README.md, ``procs_n``)
GPU_STREAMS_PER_PROCESS = 128
# ...unless the model leaves the card time to spare: with ``engine.compile`` (torch-cuda, twice
# the images/s) one process's readers became the limit near 2,600 decoded fps and two
# processes per GPU sustained 96 streams against 80 (one H200, bench/README.md, "the compiled
# engine end to end")
GPU_STREAMS_PER_PROCESS_FAST_ENGINE = 64


def gpu_streams_per_process(config: AppConfig) -> int:
    """How many NVDEC streams one automatically planned process reads with this engine."""
    fast = bool(getattr(config.engine, "compile", False))
    return GPU_STREAMS_PER_PROCESS_FAST_ENGINE if fast else GPU_STREAMS_PER_PROCESS


def streams_per_process(plan: IngestPlan, gpu: int) -> int:
    """How many streams one automatically planned process of ``plan`` reads: ``gpu``
    (:func:`gpu_streams_per_process`) for NVDEC; DALI, not measured that way, keeps the CPU
    figure."""
    return gpu if plan.decode == "nvdec" else STREAMS_PER_PROCESS


@dataclass(frozen=True)
class IngestGroup:
    """One ingest process to start: its plan and its streams."""

    plan: IngestPlan
    streams: tuple[StreamConfig, ...]


def resolve_decode(config: AppConfig, probe: Callable[[], str] | None = None) -> str:
    """The decoder ``config.decode`` means on this machine."""
    if config.decode != "auto":
        return config.decode
    if config.engine.backend not in DEVICE_FRAME_BACKENDS:
        return "cpu"
    if probe is None:
        from visionflow.streams.probe import resolve_auto

        return resolve_auto().decoder
    return probe()


def device_frames(config: AppConfig, decode: str, slot: InferenceSlot | None) -> bool:
    """Whether this slot's frames can stay in GPU memory; raises when forced but impossible."""
    why_not = None
    if decode == "cpu" or slot is None:
        why_not = "frames are decoded on the CPU"
    elif config.engine.backend not in DEVICE_FRAME_BACKENDS:
        why_not = f"the {config.engine.backend} backend reads host memory"
    elif slot.is_mig:
        why_not = f"{slot.label} is a MIG instance (no CUDA IPC between instances)"
    mode = config.workers.frame_transport
    if mode == "device" and why_not:
        raise ConfigError(f"workers.frame_transport is 'device' but {why_not}")
    return mode != "host" and why_not is None


def _split(streams: list[StreamConfig], processes: int) -> list[list[StreamConfig]]:
    groups: list[list[StreamConfig]] = [[] for _ in range(max(1, min(processes, len(streams))))]
    for i, stream in enumerate(streams):
        groups[i % len(groups)].append(stream)
    return groups


def usable_cores() -> int:
    """CPU cores this process may run on (affinity and cpusets, as in a container; not the
    host's count)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # no sched_getaffinity on this platform
        return os.cpu_count() or 1


def _process_count(config: AppConfig, share: int, total: int, per_process: int) -> int:
    configured = config.workers.ingest_processes
    if configured:
        return max(1, round(configured * share / max(1, total)))
    return max(1, min(usable_cores(), math.ceil(share / per_process)))


def place_added_stream(
    loads: Mapping[int, int],
    plans: Mapping[int, IngestPlan],
    *,
    grow: bool,
    max_processes: int,
    gpu_per_process: int,
    candidates: Sequence[IngestPlan] = (),
    configured: int = 0,
) -> tuple[int, IngestPlan, bool]:
    """Where a stream added at run time goes: ``(process index, its plan, new process?)``.

    The decode plan (GPU) whose processes read the fewest streams in all -- with ``grow``
    (the automatic count) also each of ``candidates`` (:func:`decode_plans`: every decode
    slot, those without a process yet counting 0), so streams spread over the GPUs even when
    the start-up config had none there (a fleet node starts with no streams); in it, the
    process with the fewest streams; when that one already has :func:`streams_per_process` (or
    the plan has no process yet) and ``grow`` allows, a new process with that plan (at most
    ``max_processes`` in all), so streams added later get processes as those configured at
    start do (``gpu_per_process``: :func:`gpu_streams_per_process`).  ``configured``
    (``workers.ingest_processes``): while fewer than that many run (a pipeline started with
    fewer streams than processes started fewer), a stream that would join a process already
    reading one opens a new process instead, on the GPU with the fewest streams; then the
    least-loaded process."""
    if configured:
        grow, max_processes = True, configured
    room = grow and len(plans) < max_processes
    totals: dict[IngestPlan, int] = {}
    for index in sorted(plans):
        totals[plans[index]] = totals.get(plans[index], 0) + loads.get(index, 0)
    for plan in candidates if room else ():
        totals.setdefault(plan, 0)
    plan = min(totals, key=lambda p: totals[p])  # ties: existing plans first, in index order
    members = [i for i in sorted(plans) if plans[i] == plan]
    if not members:  # a decode slot without a process yet (only offered with room)
        return max(plans) + 1, plan, True
    index = min(members, key=lambda i: (loads.get(i, 0), i))
    load = loads.get(index, 0)
    full = load > 0 if configured else load >= streams_per_process(plan, gpu_per_process)
    if room and full:
        return max(plans) + 1, plan, True
    return index, plan, False


def decode_plans(
    config: AppConfig, decode: str, slots: Sequence[InferenceSlot] | None = None
) -> list[IngestPlan]:
    """The plan of an ingest process on each decode slot (a GPU or MIG instance with NVDEC),
    in order; the CPU plan when decoding is on the CPU or no slot has NVDEC."""
    if decode == "cpu":
        return [IngestPlan()]
    if slots is None:
        from visionflow.gpu.discovery import discover

        slots = discover(gpus=config.workers.gpus)
    plans = [_slot_plan(config, decode, slot) for slot in slots if slot.nvdecs > 0]
    return list(dict.fromkeys(plans)) or [IngestPlan()]


def _slot_plan(config: AppConfig, decode: str, slot: InferenceSlot) -> IngestPlan:
    env = (("CUDA_VISIBLE_DEVICES", slot.uuid),)
    return IngestPlan(decode, env, device_frames(config, decode, slot))


def plan_ingest(
    config: AppConfig,
    streams: Sequence[StreamConfig],
    decode: str,
    slots: Sequence[InferenceSlot] | None = None,
) -> list[IngestGroup]:
    """Ingest processes for ``streams`` (at least one, so streams can be added later)."""
    if decode == "cpu":
        count = _process_count(config, len(streams), len(streams), STREAMS_PER_PROCESS)
        return [IngestGroup(IngestPlan(), tuple(g)) for g in _split(list(streams), count)]
    if slots is None:
        from visionflow.gpu.discovery import discover

        slots = discover(gpus=config.workers.gpus)
    placed = place_decoders([s.id for s in streams], slots)
    by_slot: dict[str | None, list[StreamConfig]] = {}
    for stream in streams:
        slot = placed[stream.id]
        by_slot.setdefault(slot.uuid if slot else None, []).append(stream)
    if not by_slot:  # no streams yet: one process on the first decode slot
        first = next((s for s in slots if s.nvdecs > 0), None)
        by_slot[first.uuid if first else None] = []
    lookup = {s.uuid: s for s in slots}
    groups = []
    for uuid, members in by_slot.items():
        slot = lookup.get(uuid) if uuid else None
        if slot is None:
            log.warning("no NVDEC found: %d stream(s) decode on the CPU", len(members))
            plan = IngestPlan()
        else:
            plan = _slot_plan(config, decode, slot)
        per_process = streams_per_process(plan, gpu_streams_per_process(config))
        count = _process_count(config, len(members), len(streams), per_process)
        for group in _split(members, count):
            groups.append(IngestGroup(plan, tuple(group)))
    return groups
