"""GPU utilisation and memory through NVML (``nvidia-ml-py``), for ``GET /workers``.

Optional: without pynvml, without a GPU, or for a worker whose GPU is on another host
(``visionflow api`` elsewhere), the answer is None.  A worker's GPU is found by the UUID (or
its shortened start) in its placement (``GPU 1 (H100 80GB HBM3, GPU-8f3a…)``).  For a MIG
instance NVML reports memory but no utilisation.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from dataclasses import dataclass
from typing import Any

log = logging.getLogger("visionflow.api")
_UUID = re.compile(r"\b(?:GPU|MIG)-[0-9A-Fa-f-]+")


@dataclass(frozen=True)
class GpuStats:
    uuid: str
    utilization_percent: float | None
    memory_used_mb: float
    memory_total_mb: float


class GpuProbe:
    """Reads every GPU and MIG instance of this host at most once per ``max_age_s``; after
    an NVML failure (no driver, no pynvml, a transient error) not again for
    ``retry_after_s`` (no GPU figures meanwhile)."""

    def __init__(
        self, nvml: Any | None = None, max_age_s: float = 1.0, retry_after_s: float = 60.0
    ) -> None:
        self._nvml, self.max_age_s, self.retry_after_s = nvml, max_age_s, retry_after_s
        self._lock = threading.Lock()
        self._cache: tuple[float, list[GpuStats]] = (0.0, [])
        self._broken = False

    def stats_for(self, placement: str) -> GpuStats | None:
        found = _UUID.search(placement or "")
        if found is None:
            return None
        start = found.group(0)
        matches = [g for g in self.devices() if g.uuid.startswith(start)]
        return matches[0] if len(matches) == 1 else None

    def devices(self) -> list[GpuStats]:
        with self._lock:
            taken, cached = self._cache
            wait = self.retry_after_s if self._broken else self.max_age_s
            if time.monotonic() - taken < wait:
                return cached
            try:
                cached = self._read()
            except Exception as exc:  # no driver, no pynvml, NVML error: no GPU figures
                log.debug("NVML unavailable (next try in %.0f s): %s", self.retry_after_s, exc)
                self._broken, cached = True, []
            else:
                self._broken = False
            self._cache = (time.monotonic(), cached)
            return cached

    def _read(self) -> list[GpuStats]:
        nvml = self._nvml
        if nvml is None:
            import pynvml

            nvml = self._nvml = pynvml
        nvml.nvmlInit()
        try:
            out: list[GpuStats] = []
            for index in range(nvml.nvmlDeviceGetCount()):
                handle = nvml.nvmlDeviceGetHandleByIndex(index)
                out.append(_stats(nvml, handle, utilisation=True))
                out += [_stats(nvml, mig, utilisation=False) for mig in _migs(nvml, handle)]
            return out
        finally:
            nvml.nvmlShutdown()


def _migs(nvml: Any, handle: Any) -> list[Any]:
    try:
        count = nvml.nvmlDeviceGetMaxMigDeviceCount(handle)
    except Exception:  # not MIG-capable
        return []
    handles = []
    for position in range(count):
        try:
            handles.append(nvml.nvmlDeviceGetMigDeviceHandleByIndex(handle, position))
        except Exception:  # an empty position
            continue
    return handles


def _stats(nvml: Any, handle: Any, utilisation: bool) -> GpuStats:
    uuid = nvml.nvmlDeviceGetUUID(handle)
    memory = nvml.nvmlDeviceGetMemoryInfo(handle)
    util: float | None = None
    if utilisation:
        try:
            util = float(nvml.nvmlDeviceGetUtilizationRates(handle).gpu)
        except Exception:  # MIG mode on: utilisation is not reported for the whole GPU
            util = None
    return GpuStats(
        uuid=uuid.decode() if isinstance(uuid, bytes) else str(uuid),
        utilization_percent=util,
        memory_used_mb=round(int(memory.used) / 2**20, 1),
        memory_total_mb=round(int(memory.total) / 2**20, 1),
    )
