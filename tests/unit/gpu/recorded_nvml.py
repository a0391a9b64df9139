"""NVML answers recorded from MIG layouts (MIG cannot be switched on where tests run).

The layouts follow NVIDIA's MIG user guide ("Supported MIG Profiles"): A100-SXM4-80GB as
7 × 1g.10gb (0 NVDEC each), H100 80GB as 2 × 3g.40gb (3 NVDECs each), a mixed H100, and a
non-MIG H100 as read on the lent machine (driver 580.159.04).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any


class NVMLError(Exception):
    pass


@dataclass
class Gpu:
    name: str
    uuid: str
    memory_mb: int
    capability: tuple[int, int]
    mig: list[tuple[str, str, int, int]] | None = None  # (profile name, uuid, memory MB, nvdecs)
    decoder: bool = True


@dataclass
class RecordedNvml:
    gpus: list[Gpu]
    calls: list[str] = field(default_factory=list)
    NVML_DEVICE_MIG_ENABLE = 1

    def nvmlInit(self) -> None:
        self.calls.append("init")

    def nvmlShutdown(self) -> None:
        self.calls.append("shutdown")

    def nvmlDeviceGetCount(self) -> int:
        return len(self.gpus)

    def nvmlDeviceGetHandleByIndex(self, i: int) -> Any:
        return ("gpu", i)

    def nvmlDeviceGetCudaComputeCapability(self, h: Any) -> tuple[int, int]:
        return self.gpus[h[1]].capability

    def _dev(self, h: Any) -> Any:
        gpu = self.gpus[h[1]]
        return gpu if h[0] == "gpu" else gpu.mig[h[2]]

    def nvmlDeviceGetName(self, h: Any) -> bytes:
        gpu = self.gpus[h[1]]
        return (gpu.name if h[0] == "gpu" else f"{gpu.name} MIG {gpu.mig[h[2]][0]}").encode()

    def nvmlDeviceGetUUID(self, h: Any) -> str:
        return self.gpus[h[1]].uuid if h[0] == "gpu" else self.gpus[h[1]].mig[h[2]][1]

    def nvmlDeviceGetMemoryInfo(self, h: Any) -> Any:
        mb = self.gpus[h[1]].memory_mb if h[0] == "gpu" else self.gpus[h[1]].mig[h[2]][2]
        return SimpleNamespace(total=mb << 20)

    def nvmlDeviceGetMigMode(self, h: Any) -> tuple[int, int]:
        gpu = self.gpus[h[1]]
        if gpu.mig is None and "A100" not in gpu.name and "H100" not in gpu.name:
            raise NVMLError("NotSupported")
        return (1, 1) if gpu.mig is not None else (0, 0)

    def nvmlDeviceGetMaxMigDeviceCount(self, h: Any) -> int:
        return 7

    def nvmlDeviceGetMigDeviceHandleByIndex(self, h: Any, j: int) -> Any:
        if j >= len(self.gpus[h[1]].mig or []):
            raise NVMLError("NotFound")
        return ("mig", h[1], j)

    def nvmlDeviceGetAttributes(self, h: Any) -> Any:
        return SimpleNamespace(decoderCount=self.gpus[h[1]].mig[h[2]][3])

    def nvmlDeviceGetDecoderUtilization(self, h: Any) -> tuple[int, int]:
        if not self.gpus[h[1]].decoder:
            raise NVMLError("NotSupported")
        return (0, 167000)


A100_7x1G = RecordedNvml(
    [
        Gpu(
            "NVIDIA A100-SXM4-80GB",
            "GPU-a100",
            81920,
            (8, 0),
            mig=[("1g.10gb", f"MIG-a100-{i}", 9728, 0) for i in range(7)],
        )
    ]
)
H100_2x3G = RecordedNvml(
    [
        Gpu(
            "NVIDIA H100 80GB HBM3",
            "GPU-h100",
            81559,
            (9, 0),
            mig=[("3g.40gb", f"MIG-h100-{i}", 40192, 3) for i in range(2)],
        )
    ]
)
H100_MIXED = RecordedNvml(
    [
        Gpu(
            "NVIDIA H100 80GB HBM3",
            "GPU-h100m",
            81559,
            (9, 0),
            mig=[
                ("4g.40gb", "MIG-h100m-0", 40192, 4),
                ("2g.20gb", "MIG-h100m-1", 20096, 2),
                ("1g.10gb", "MIG-h100m-2", 9856, 1),
            ],
        )
    ]
)
H100_FULL = RecordedNvml([Gpu("NVIDIA H100 80GB HBM3", "GPU-5f7c-lent", 81559, (9, 0))])
TWO_GPUS = RecordedNvml(
    [
        Gpu("NVIDIA H100 80GB HBM3", "GPU-0", 81559, (9, 0)),
        Gpu(
            "NVIDIA A100-SXM4-80GB",
            "GPU-1",
            81920,
            (8, 0),
            mig=[("3g.40gb", "MIG-1-0", 40192, 2), ("1g.10gb", "MIG-1-1", 9728, 0)],
        ),
    ]
)
#: Three GPUs with UUIDs shaped like real ones: two H100s whose UUIDs share the start
#: "GPU-8f3a" (so that prefix is ambiguous) and an A100 with MIG on, two 3g.40gb instances
#: whose UUIDs share "MIG-5e6f".
H100_A = "GPU-8f3a1b2c-1111-4a5b-9c0d-0123456789ab"
H100_B = "GPU-8f3a9d4e-2222-4a5b-9c0d-0123456789ab"
A100_MIG = "GPU-c0ffee00-3333-4a5b-9c0d-0123456789ab"
MIG_A = "MIG-5e6f7a8b-4444-5c6d-8e9f-0123456789ab"
MIG_B = "MIG-5e6fb0b0-5555-5c6d-8e9f-0123456789ab"
THREE_GPUS = RecordedNvml(
    [
        Gpu("NVIDIA H100 80GB HBM3", H100_A, 81559, (9, 0)),
        Gpu("NVIDIA H100 80GB HBM3", H100_B, 81559, (9, 0)),
        Gpu(
            "NVIDIA A100-SXM4-80GB",
            A100_MIG,
            81920,
            (8, 0),
            mig=[("3g.40gb", MIG_A, 40192, 2), ("3g.40gb", MIG_B, 40192, 2)],
        ),
    ]
)
