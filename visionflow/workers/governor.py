"""Fair shares under overload, wired: ledger counters -> controller -> ingest processes.

Every ``interval_s`` the governor turns the scheduler's ledger into per-stream rates (frames
announced and dropped as ``inference_behind`` per second), asks
:class:`~visionflow.pipeline.share.FairShareController` for each stream's target, and
returns the targets that changed; the pipeline sends them to the ingest processes as
:class:`~visionflow.workers.messages.SetAnalysisRates`, where frames beyond a stream's share
are shed before decode.

Overload is read from ``inference_behind`` drops (a worker with batches queued is not
overloaded: it may be keeping up exactly, but a full per-stream buffer dropping its oldest
frame is) and from the streams' lag behind real time (a decoder that cannot keep up): a
stream is *lagging* past ``lag_limit_s`` and *falling behind* when, lagging, its lag did not
shrink over the interval.
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
        lag_limit_s: float = 1.0,
    ) -> None:
        self.controller = controller or FairShareController()
        self.interval_s, self.clock = interval_s, clock
        self.lag_limit_s = lag_limit_s  # 0: the lag is not a signal
        self._lags: dict[str, float] = {}
        self._last: dict[str, tuple[int, int]] = {}  # announced, inference_behind
        self._at = clock()
        self.sent: dict[str, float | None] = {}

    def pause(self) -> None:
        """Workers are starting or restarting: what they drop now says nothing about their
        capacity, so the next interval starts afresh."""
        self._last.clear()
        self._lags.clear()
        self._at = self.clock()

    def step(
        self,
        ledger: Mapping[str, LedgerSnapshot],
        demand: Mapping[str, float | None],
        lags: Mapping[str, float | None] | None = None,
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
            lagging, falling = self._lagging(sid, (lags or {}).get(sid), dt)
            loads.append(
                StreamLoad(
                    sid, (announced - a0) / dt, (behind - b0) / dt, demand[sid], lagging, falling
                )
            )
        self._at = now
        targets = self.controller.update(loads, saturated=False)
        changed = {sid: t for sid, t in targets.items() if _differs(self.sent.get(sid), t)}
        self.sent.update(changed)
        return changed

    def _lagging(self, sid: str, lag: float | None, dt: float) -> tuple[bool, bool]:
        """(lagging, falling behind) of one stream; its lag is kept for the next interval."""
        if lag is None or self.lag_limit_s <= 0:
            self._lags.pop(sid, None)
            return False, False
        before = self._lags.get(sid)
        self._lags[sid] = lag
        lagging = lag > self.lag_limit_s
        shrinking = before is not None and lag < before - 0.05 * dt
        return lagging, lagging and not shrinking


def _differs(old: float | None, new: float | None) -> bool:
    if old is None or new is None:
        return old is not new
    return abs(new - old) > 0.05 * max(old, 1e-9)
