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
``lags``): each stream's lag slope is the least-squares fit over its last
``SLOPE_SAMPLES`` intervals behind (fewer than ``MIN_SLOPE_SAMPLES`` in a row, e.g. right
after start-up or a pause, give none); such a stream is *falling behind* when the slope is at
least ``FALLING_S_PER_S`` and *catching up* when it is at most minus that (a lag that holds
still, a stalled stream's last value, is neither).  A fit over a few seconds rather than one
interval's difference lets a small overload (a few per cent of real time) show through the
lag's jitter.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence

from visionflow.pipeline.ledger import LedgerSnapshot
from visionflow.pipeline.share import FairShareController, StreamLoad

#: a lag growing by this much a second (4 % of real time) is falling behind; shrinking by as
#: much, catching up
FALLING_S_PER_S = 0.04
#: the lag slope is fitted over this many intervals behind ...
SLOPE_SAMPLES = 4
#: ... and needs at least this many in a row
MIN_SLOPE_SAMPLES = 3


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
        # (time, lag) of each stream behind, over its last SLOPE_SAMPLES steps in a row
        self._lags: dict[str, deque[tuple[float, float]]] = {}
        self._last: dict[str, tuple[int, int]] = {}  # announced, inference_behind
        self._at = clock()
        self.sent: dict[str, float | None] = {}
        # the targets sent come from a decoder cut: streams given a share decode GOP heads
        self.decoder_bound = False

    def pause(self) -> None:
        """Workers are starting or restarting: what they drop now says nothing about their
        capacity, so the next interval starts afresh (and a decoder cut awaiting judgement is
        not judged on the slopes lost with it)."""
        self._last.clear()
        self._lags.clear()
        self._at = self.clock()
        self.controller.forget_pending_cut()

    def forget(self, stream_ids: Sequence[str]) -> None:
        """Streams whose readers start afresh (their ingest process restarted, or removed):
        the next step sends them their target and the decoder flag again."""
        for sid in stream_ids:
            self.sent.pop(sid, None)
            self._last.pop(sid, None)
            self._lags.pop(sid, None)

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
        for sid, snap in ledger.items():
            if sid not in demand:
                continue
            announced, dropped = snap.announced, snap.drops.get("inference_behind", 0)
            a0, b0 = self._last.get(sid, (announced, dropped))
            self._last[sid] = (announced, dropped)
            slope = self._track_lag(sid, now, behind.get(sid))
            loads.append(
                StreamLoad(
                    sid,
                    offered_fps=(announced - a0) / dt,
                    dropped_fps=(dropped - b0) / dt,
                    demand_fps=demand[sid],
                    falling_behind=slope is not None and slope >= FALLING_S_PER_S,
                    catching_up=slope is not None and slope <= -FALLING_S_PER_S,
                    lag_slope=slope,
                )
            )
        for sid in set(self._lags) - set(demand):
            del self._lags[sid]
        self._at = now
        targets = self.controller.update(loads, saturated=False)
        bound = self.controller.decoder_limited
        if bound != self.decoder_bound:  # every stream hears of it, with its target
            self.decoder_bound, changed = bound, dict(targets)
        else:
            changed = {sid: t for sid, t in targets.items() if _differs(self.sent.get(sid), t)}
        self.sent.update(changed)
        return changed

    def _track_lag(self, sid: str, now: float, lag: float | None) -> float | None:
        """Record a stream's lag (None: not behind, which ends its run of samples) and
        return its slope, or None while it has fewer than MIN_SLOPE_SAMPLES in a row."""
        if lag is None:
            self._lags.pop(sid, None)
            return None
        samples = self._lags.setdefault(sid, deque(maxlen=SLOPE_SAMPLES))
        samples.append((now, lag))
        return fitted_slope(samples) if len(samples) >= MIN_SLOPE_SAMPLES else None


def fitted_slope(samples: Sequence[tuple[float, float]]) -> float:
    """Least-squares slope of ``(t, y)`` samples (0 when they share one time)."""
    n = len(samples)
    mt = sum(t for t, _ in samples) / n
    my = sum(y for _, y in samples) / n
    var = sum((t - mt) ** 2 for t, _ in samples)
    if var <= 0:
        return 0.0
    return sum((t - mt) * (y - my) for t, y in samples) / var


def _differs(old: float | None, new: float | None) -> bool:
    if old is None or new is None:
        return old is not new
    return abs(new - old) > 0.05 * max(old, 1e-9)
