"""Finding the GPUs and MIG instances a worker can be pinned to, through NVML.

Each result is an :class:`InferenceSlot`: a whole GPU (MIG off) or one MIG instance, with the
UUID that ``CUDA_VISIBLE_DEVICES`` takes and the number of NVDEC engines it owns (MIG slices
of the A100 ``1g`` profiles own none, so decode must not be placed there).  ``nvml`` is the
``pynvml`` module (nvidia-ml-py) or an object with the same functions — tests feed recorded
answers of MIG layouts that cannot be switched on where they run.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

#: NVDEC engines of a whole GPU, by name fragment (NVML has no direct query outside MIG).
NVDEC_BY_NAME = {
    "H100": 7,
    "H200": 7,
    "H20": 7,
    "A100": 5,
    "A30": 4,
    "L40": 3,
    "L4": 4,
    "A10": 1,
    "T4": 2,
    "B200": 7,
}


@dataclass(frozen=True)
class InferenceSlot:
    """Somewhere one inference worker (or decoder) can run."""

    uuid: str  # GPU-... or MIG-...: what CUDA_VISIBLE_DEVICES takes
    name: str  # e.g. "NVIDIA H100 80GB HBM3" or "NVIDIA H100 80GB HBM3 MIG 3g.40gb"
    parent_index: int
    memory_mb: int
    nvdecs: int
    is_mig: bool
    compute_capability: str

    @property
    def label(self) -> str:
        return f"gpu{self.parent_index}:{self.name.split('MIG ')[-1] if self.is_mig else 'full'}"


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _nvdecs_of_gpu(nvml: Any, handle: Any, name: str) -> int:
    try:
        nvml.nvmlDeviceGetDecoderUtilization(handle)
    except Exception:  # NVML raises NotSupported on GPUs without NVDEC
        return 0
    for fragment, count in NVDEC_BY_NAME.items():
        if fragment in name:
            return count
    return 1


def _mig_enabled(nvml: Any, handle: Any) -> bool:
    try:
        current, _pending = nvml.nvmlDeviceGetMigMode(handle)
    except Exception:  # not MIG-capable
        return False
    return bool(current == nvml.NVML_DEVICE_MIG_ENABLE)


def discover(nvml: Any | None = None) -> list[InferenceSlot]:
    """Every whole GPU (MIG off) and every MIG instance (MIG on), in NVML order."""
    if nvml is None:
        import pynvml  # nvidia-ml-py

        nvml = pynvml
    assert nvml is not None
    nvml.nvmlInit()
    try:
        slots: list[InferenceSlot] = []
        for index in range(nvml.nvmlDeviceGetCount()):
            handle = nvml.nvmlDeviceGetHandleByIndex(index)
            name = _text(nvml.nvmlDeviceGetName(handle))
            major, minor = nvml.nvmlDeviceGetCudaComputeCapability(handle)
            capability = f"{major}.{minor}"
            if _mig_enabled(nvml, handle):
                slots.extend(_mig_slots(nvml, handle, index, capability))
                continue
            slots.append(
                InferenceSlot(
                    uuid=_text(nvml.nvmlDeviceGetUUID(handle)),
                    name=name,
                    parent_index=index,
                    memory_mb=int(nvml.nvmlDeviceGetMemoryInfo(handle).total) >> 20,
                    nvdecs=_nvdecs_of_gpu(nvml, handle, name),
                    is_mig=False,
                    compute_capability=capability,
                )
            )
        return slots
    finally:
        nvml.nvmlShutdown()


def _mig_slots(nvml: Any, handle: Any, index: int, capability: str) -> list[InferenceSlot]:
    out = []
    for position in range(nvml.nvmlDeviceGetMaxMigDeviceCount(handle)):
        try:
            mig = nvml.nvmlDeviceGetMigDeviceHandleByIndex(handle, position)
        except Exception:  # NVML_ERROR_NOT_FOUND: an empty position
            continue
        attrs = nvml.nvmlDeviceGetAttributes(mig)
        out.append(
            InferenceSlot(
                uuid=_text(nvml.nvmlDeviceGetUUID(mig)),
                name=_text(nvml.nvmlDeviceGetName(mig)),
                parent_index=index,
                memory_mb=int(nvml.nvmlDeviceGetMemoryInfo(mig).total) >> 20,
                nvdecs=int(attrs.decoderCount),
                is_mig=True,
                compute_capability=capability,
            )
        )
    return out
