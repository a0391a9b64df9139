"""Fair shares under overload, wired: ledger counters -> controller -> ingest processes.

Every ``interval_s`` the governor turns the scheduler's ledger into per-stream rates (frames
announced and dropped as ``inference_behind`` per second), asks
:class:`~visionflow.pipeline.share.FairShareController` for each stream's target, and
returns the targets that changed; the pipeline sends them to the ingest processes as
:class:`~visionflow.workers.messages.SetAnalysisRates`, where frames beyond a stream's share
are shed before decode.

Overload is read from ``inference_behind`` drops (a worker with batches queued is not
overloaded: it may be keeping up exactly, but a full per-stream buffer dropping its oldest
frame is) and from the streams the ingest processes report *behind* real time (their
``lags``): such a stream is *falling behind* when its lag grew by at least
``FALLING_S_PER_S`` a second since the previous interval, and *catching up* when it shrank by
as much (a stream's first interval behind is neither: nothing to compare with, e.g. right
after start-up; a lag that holds still, a stalled stream's last value, is neither).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping

from visionflow.pipeline.ledger import LedgerSnapshot
from visionflow.pipeline.share import FairShareController, StreamLoad

#: a lag growing by this much a second (a tenth of real time) is falling behind; shrinking
#: by as much, catching up
FALLING_S_PER_S = 0.1


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
        self._lags: dict[str, float] = {}  # lag of each stream behind at the last step
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
        lags: Mapping[str, float] | None = None,
    ) -> dict[str, float | None] | None:
        """Targets that changed since the last step (None before the interval is up).
        ``lags``: the streams behind real time, and their lag."""
        now = self.clock()
        dt = now - self._at
        if dt < self.interval_s:
            return None
        loads = []
        behind = lags or {}
        previous, self._lags = self._lags, {}
        for sid, snap in ledger.items():
            if sid not in demand:
                continue
            announced, dropped = snap.announced, snap.drops.get("inference_behind", 0)
            a0, b0 = self._last.get(sid, (announced, dropped))
            self._last[sid] = (announced, dropped)
            lag = behind.get(sid)
            if lag is not None:
                self._lags[sid] = lag
            slope = _slope(lag, previous.get(sid), dt)
            loads.append(
                StreamLoad(
                    sid,
                    offered_fps=(announced - a0) / dt,
                    dropped_fps=(dropped - b0) / dt,
                    demand_fps=demand[sid],
                    falling_behind=slope >= FALLING_S_PER_S,
                    catching_up=slope <= -FALLING_S_PER_S,
                )
            )
        self._at = now
        targets = self.controller.update(loads, saturated=False)
        changed = {sid: t for sid, t in targets.items() if _differs(self.sent.get(sid), t)}
        self.sent.update(changed)
        return changed


def _slope(lag: float | None, before: float | None, dt: float) -> float:
    """Seconds of lag gained per second since the last step (0 unless behind at both)."""
    if lag is None or before is None or dt <= 0:
        return 0.0
    return (lag - before) / dt


def _differs(old: float | None, new: float | None) -> bool:
    if old is None or new is None:
        return old is not new
    return abs(new - old) > 0.05 * max(old, 1e-9)
