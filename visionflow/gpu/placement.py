"""Placing inference workers and GPU decoders on discovered slots.

- one inference worker per slot (GPU or MIG instance), or ``workers_per_slot`` of them, each
  pinned with ``CUDA_VISIBLE_DEVICES=<uuid>`` (a MIG instance is only reachable that way);
- GPU decode only on slots that own NVDEC engines, streams spread in proportion to them;
  streams stay on CPU decode when no slot has one.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from visionflow.gpu.discovery import InferenceSlot


@dataclass(frozen=True)
class WorkerPlacement:
    """One inference worker and where it runs."""

    worker_id: int
    slot: InferenceSlot

    @property
    def env(self) -> dict[str, str]:
        return {"CUDA_VISIBLE_DEVICES": self.slot.uuid}


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


def gpu_worker_envs(workers_per_slot: int, nvml: object | None = None) -> list[dict[str, str]]:
    """One ``CUDA_VISIBLE_DEVICES`` environment per inference worker for a GPU backend."""
    from visionflow.errors import EngineUnavailableError
    from visionflow.gpu.discovery import discover

    try:
        slots = discover(nvml)
    except ImportError as exc:
        raise EngineUnavailableError(f"GPU backends need nvidia-ml-py (pynvml): {exc}") from exc
    except Exception as exc:  # NVML raises its own errors when there is no driver or GPU
        raise EngineUnavailableError(f"no NVIDIA GPU found through NVML: {exc}") from exc
    if not slots:
        raise EngineUnavailableError("NVML found no GPU or MIG instance to run inference on")
    return [w.env for w in place_workers(slots, workers_per_slot)]
