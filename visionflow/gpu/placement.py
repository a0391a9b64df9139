"""Placing inference workers and GPU decoders on discovered slots.

- one inference worker per slot (GPU or MIG instance), or ``workers_per_slot`` of them, each
  pinned with ``CUDA_VISIBLE_DEVICES=<uuid>`` (a MIG instance is only reachable that way);
- GPU decode only on slots that own NVDEC engines, streams spread in proportion to them;
  streams stay on CPU decode when no slot has one.

The slots come from :func:`visionflow.gpu.discovery.discover`: NVML's list, less what
``CUDA_VISIBLE_DEVICES`` hides, narrowed to ``workers.gpus``.  :func:`plan_gpu_workers` gives
each inference worker its environment and a placement label for the status table and Redis.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from visionflow.gpu.discovery import InferenceSlot


@dataclass(frozen=True)
class WorkerPlacement:
    """One inference worker and where it runs."""

    worker_id: int
    slot: InferenceSlot

    @property
    def env(self) -> dict[str, str]:
        """What the worker process's environment gets: its slot, by UUID."""
        return {"CUDA_VISIBLE_DEVICES": self.slot.uuid}

    @property
    def env_items(self) -> tuple[tuple[str, str], ...]:
        """:attr:`env` as pairs (hashable, as ``IngestPlan.env`` takes them)."""
        return tuple(self.env.items())

    @property
    def uuid(self) -> str:
        """The GPU or MIG instance UUID the worker is pinned to."""
        return self.slot.uuid

    @property
    def label(self) -> str:
        """For people (``WorkerStatus.placement``): ``GPU 1 (H100 80GB HBM3, GPU-8f3a…)``
        or ``GPU 0 MIG 3g.40gb (MIG-4e1f…)``."""
        return self.slot.placement


def place_workers(
    slots: Sequence[InferenceSlot], workers_per_slot: int = 1
) -> list[WorkerPlacement]:
    """Worker ids in slot order, ``workers_per_slot`` on each."""
    if workers_per_slot < 1:
        raise ValueError("workers_per_slot must be >= 1")
    placements: list[WorkerPlacement] = []
    for slot in slots:
        for _ in range(workers_per_slot):
            placements.append(WorkerPlacement(len(placements), slot))
    return placements


def place_decoders(
    stream_ids: Sequence[str], slots: Sequence[InferenceSlot]
) -> dict[str, InferenceSlot | None]:
    """Each stream's decode slot (None: decode on the CPU), weighted by NVDEC count."""
    decoders = [s for s in slots if s.nvdecs > 0]
    if not decoders:
        return dict.fromkeys(stream_ids)
    load = {s.uuid: 0 for s in decoders}
    out: dict[str, InferenceSlot | None] = {}
    for stream_id in stream_ids:
        best = min(decoders, key=lambda s: ((load[s.uuid] + 1) / s.nvdecs, s.parent_index, s.uuid))
        load[best.uuid] += 1
        out[stream_id] = best
    return out


def plan_gpu_workers(
    workers_per_gpu: int,
    gpus: Sequence[str | int] | None = None,
    *,
    nvml: object | None = None,
    environ: Mapping[str, str] | None = None,
) -> list[WorkerPlacement]:
    """The inference workers of a GPU backend: ``workers_per_gpu`` on each selected slot.

    Slots are what NVML finds, less what ``CUDA_VISIBLE_DEVICES`` (in ``environ``, default
    ``os.environ``) hides, narrowed to ``gpus`` (``workers.gpus``; None: all of them).
    Raises ConfigError for a ``gpus`` entry that does not fit this machine and
    EngineUnavailableError when there is no NVML, no GPU or nothing left to run on.
    """
    from visionflow.errors import ConfigError, EngineUnavailableError
    from visionflow.gpu.discovery import discover

    try:
        slots = discover(nvml, gpus=gpus, environ=environ)
    except ConfigError:
        raise
    except ImportError as exc:
        raise EngineUnavailableError(f"GPU backends need nvidia-ml-py (pynvml): {exc}") from exc
    except Exception as exc:  # NVML raises its own errors when there is no driver or GPU
        raise EngineUnavailableError(f"no NVIDIA GPU found through NVML: {exc}") from exc
    if not slots:
        hidden = (os.environ if environ is None else environ).get("CUDA_VISIBLE_DEVICES")
        why = f" that CUDA_VISIBLE_DEVICES={hidden!r} lets through" if hidden is not None else ""
        raise EngineUnavailableError(f"NVML found no GPU or MIG instance to run inference on{why}")
    return place_workers(slots, workers_per_gpu)


def gpu_worker_envs(
    workers_per_slot: int,
    nvml: object | None = None,
    *,
    gpus: Sequence[str | int] | None = None,
    environ: Mapping[str, str] | None = None,
) -> list[dict[str, str]]:
    """One ``CUDA_VISIBLE_DEVICES`` environment per inference worker for a GPU backend
    (:func:`plan_gpu_workers` without the labels)."""
    placements = plan_gpu_workers(workers_per_slot, gpus, nvml=nvml, environ=environ)
    return [w.env for w in placements]
