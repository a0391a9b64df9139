"""GpuProbe: NVML figures for a worker's placement (recorded NVML answers: no GPU here)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from visionflow.api.gpu import GpuProbe

GPU0 = "GPU-8f3a1b2c-1111-2222-3333-444455556666"
MIG0 = "MIG-5e6f7a8b-aaaa-bbbb-cccc-ddddeeeeffff"


class RecordedNvml:
    """Answers of an H100 with MIG on (one 3g.40gb instance) and a plain A10."""

    def __init__(self) -> None:
        self.inits = 0

    def nvmlInit(self):
        self.inits += 1

    def nvmlShutdown(self):
        pass

    def nvmlDeviceGetCount(self):
        return 2

    def nvmlDeviceGetHandleByIndex(self, i):
        return ("gpu", i)

    def nvmlDeviceGetUUID(self, h):
        return {("gpu", 0): b"GPU-0000", ("gpu", 1): GPU0, ("mig", 0): MIG0}[h]

    def nvmlDeviceGetMemoryInfo(self, h):
        return SimpleNamespace(used=2**30 if h[0] == "mig" else 3 * 2**30, total=40 * 2**30)

    def nvmlDeviceGetUtilizationRates(self, h):
        if h == ("gpu", 0):
            raise RuntimeError("NVML_ERROR_NOT_SUPPORTED")  # MIG on
        return SimpleNamespace(gpu=73)

    def nvmlDeviceGetMaxMigDeviceCount(self, h):
        if h == ("gpu", 1):
            raise RuntimeError("not MIG capable")
        return 2

    def nvmlDeviceGetMigDeviceHandleByIndex(self, h, pos):
        if pos:
            raise RuntimeError("NVML_ERROR_NOT_FOUND")
        return ("mig", 0)


def test_whole_gpu_and_mig_instance_by_placement():
    nvml = RecordedNvml()
    probe = GpuProbe(nvml, max_age_s=60)
    whole = probe.stats_for("GPU 1 (A10, GPU-8f3a1b2c…)")
    assert whole is not None and whole.uuid == GPU0
    assert whole.utilization_percent == 73 and whole.memory_used_mb == 3072
    mig = probe.stats_for("GPU 0 MIG 3g.40gb (MIG-5e6f7a8b…)")
    assert mig is not None and mig.utilization_percent is None and mig.memory_total_mb == 40960
    assert probe.stats_for("") is None and probe.stats_for("GPU 2 (X, GPU-ffff0000…)") is None
    assert nvml.inits == 1, "NVML read once per max_age_s"


def test_no_nvml_means_no_figures():
    class Broken:
        def nvmlInit(self):
            raise RuntimeError("NVML Shared Library Not Found")

    assert GpuProbe(Broken()).stats_for("GPU 0 (H100, GPU-8f3a1b2c…)") is None


@pytest.mark.gpu
def test_real_nvml_reports_every_gpu():
    devices = GpuProbe().devices()
    assert devices, "NVML found no GPU on a GPU machine"
    for gpu in devices:
        assert gpu.uuid.startswith(("GPU-", "MIG-")) and gpu.memory_total_mb > 0
        assert gpu.memory_used_mb <= gpu.memory_total_mb
        placement = f"GPU 0 (x, {gpu.uuid[:12]}…)"
        assert GpuProbe().stats_for(placement) is not None
