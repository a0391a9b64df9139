"""Fair shares under overload, wired: ledger counters -> controller -> ingest processes.

Every ``interval_s`` the governor turns the scheduler's ledger into per-stream rates (frames
announced and dropped as ``inference_behind`` per second), asks
:class:`~visionflow.pipeline.share.FairShareController` for each stream's target, and
returns the targets that changed; the pipeline sends them to the ingest processes as
:class:`~visionflow.workers.messages.SetAnalysisRates`, where frames beyond a stream's share
are shed before decode.

Overload is read from ``inference_behind`` drops alone: a worker with batches queued is not
overloaded (it may be keeping up exactly), but a full per-stream buffer dropping its oldest
frame is.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping

from visionflow.pipeline.ledger import LedgerSnapshot
from visionflow.pipeline.share import FairShareController, StreamLoad


class ShareGovernor:
    """Samples saturation, steps the controller once per interval."""

    def __init__(
        self,
        controller: FairShareController | None = None,
        interval_s: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.controller = controller or FairShareController()
        self.interval_s, self.clock = interval_s, clock
        self._last: dict[str, tuple[int, int]] = {}  # announced, inference_behind
        self._at = clock()
        self.sent: dict[str, float | None] = {}

    def pause(self) -> None:
        """Workers are starting or restarting: what they drop now says nothing about their
        capacity, so the next interval starts afresh."""
        self._last.clear()
        self._at = self.clock()

    def step(
        self, ledger: Mapping[str, LedgerSnapshot], demand: Mapping[str, float | None]
    ) -> dict[str, float | None] | None:
        """Targets that changed since the last step (None before the interval is up)."""
        now = self.clock()
        dt = now - self._at
        if dt < self.interval_s:
            return None
        loads = []
        for sid, snap in ledger.items():
            if sid not in demand:
                continue
            announced, behind = snap.announced, snap.drops.get("inference_behind", 0)
            a0, b0 = self._last.get(sid, (announced, behind))
            self._last[sid] = (announced, behind)
            loads.append(StreamLoad(sid, (announced - a0) / dt, (behind - b0) / dt, demand[sid]))
        self._at = now
        targets = self.controller.update(loads, saturated=False)
        changed = {sid: t for sid, t in targets.items() if _differs(self.sent.get(sid), t)}
        self.sent.update(changed)
        return changed


def _differs(old: float | None, new: float | None) -> bool:
    if old is None or new is None:
        return old is not new
    return abs(new - old) > 0.05 * max(old, 1e-9)
