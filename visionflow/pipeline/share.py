"""Fair shares of inference capacity under overload (max-min fair, AIMD on the capacity).

Every control interval the scheduler reports, per stream, the frames it announced per second,
its ``inference_behind`` drops per second and (when known) what the stream would send without
a limit (its source rate, capped by its own ``analysis_fps``); plus whether the inference
workers are saturated.  :meth:`FairShareController.update` returns each stream's target fps
(``None``: no limit), which the ingest process applies with
:meth:`visionflow.workers.ingest.StreamReader.set_share` so that frames the pipeline cannot
serve are shed *before* decode instead of being dropped after it.

- **Capacity estimate** ``C`` (frames/s the workers can serve): overloaded (saturated, or
  more than ``tolerance`` of what was offered dropped) -> ``C = beta * min(C, served)``,
  where ``served`` is what got through; otherwise, while some stream is held below its
  demand, ``C`` grows by ``alpha`` per interval - only once every ``release_after`` intervals
  while those streams do not use what they are given (fewer than half of the held streams
  that offer anything offer 85 % of their target, or none offers anything: ``C`` is not what
  limits them, and growing it every interval only made a number, which on a GPU run reached
  2.3 x what the card served, so that the next overload started from there; a stream that
  never delivers its demand still sees its limit grow past it and released; while none
  offers anything, a stall, ``C`` holds) - and, whenever a stream is held and something is
  offered, at once back to ``beta`` times the best
  recently served rate (``peak``, decaying slowly) -- so a transient (a worker restarting,
  engines warming up) that briefly served nothing does not leave the pipeline throttled for
  minutes (a known cost: a card that got slower for good is jumped back towards its old rate
  after each cut until ``peak`` has decayed, about 55 intervals, each jump an overload
  dropped after decode); when no stream has been limited for ``release_after`` intervals the
  limit is released (``None`` everywhere).
- **Max-min fair split** of ``C``: streams that ask for less than an equal share keep what
  they ask; the rest split what is left equally (round-robin by stream, like the batcher).
  Every stream's target is the water level ``L`` (``sum(min(demand, L)) == C``), so a
  stream asking less than ``L`` is not held by it.
- **Floor**: no stream is given less than ``floor_fps``.
- **Decoder behind** (with ``source.shed_lag_limit_s`` > 0, 1 s by default: see its
  description for the known limits): the drops above measure inference;
  when the *decoder* is what cannot keep up (NVDEC shared by hundreds of streams, the CPU),
  streams fall behind real time instead.  The ingest processes report the streams *behind*
  (read more than the lag limit behind real time); the governor fits each one's lag slope
  over its last few intervals behind and marks it *falling behind* at ``FALLING_S_PER_S`` or
  more (never before it has a few samples in a row; a lag that holds still - a relay's
  delay, a camera clock a little slow - never does).  When :func:`shared_decoder_behind`
  holds for them (a quarter of the streams, and never fewer than two: one slow stream or link
  is its own problem, not a shared decoder's), the decoder is taken as overloaded:
  ``C = beta * min(C, served)`` as for drops, the same max-min split, and streams given a
  share by it decode only their GOPs' heads (:mod:`visionflow.streams.shedding`), so the
  decoder's load falls with the share.  A decoder cut is held for ``decoder_hold``
  intervals (the new share takes effect at each stream's next keyframe; ``C`` does not grow
  meanwhile), then judged: if the mean lag slope of the streams it was made for fell by less
  than a quarter, shedding decode did not help - the lags are not the decoder's (a site-wide
  network slowdown) - so the cut is undone and lags are ignored for ``decoder_distrust``
  intervals, doubling with each futile cut in a row up to ``max_distrust`` and back to
  ``decoder_distrust`` after ``max_distrust`` intervals without one (``futile_cuts`` counts
  them).  Whether the shares in force come from a decoder cut is one flag for all streams
  (:attr:`decoder_limited`), as the capacity is one; an inference cut below a decoder cut
  keeps it (the decoder was the limit a moment ago, and bringing back decode-all would put
  it behind again), a release or an undone cut clears it.  While a quarter of the streams catch
  up (lag shrinking), ``C`` does not grow either.

Pure: no processes, no I/O; time comes from the injected clock (only used for ``age``).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

#: a decoder is shared-and-behind when this share of its streams (at least two) are behind
SHARED_DECODER_FRACTION = 0.25
#: the capacity grows every interval only while this share of the held streams use it ...
USED_STREAMS = 0.5
#: ... that is, offer at least this fraction of their target
USED_TARGET = 0.85


def shared_decoder_behind(behind: int, streams: int) -> bool:
    """``behind`` of ``streams`` streams behind real time: the decoder
    they share is overloaded (a quarter of them, never fewer than two)."""
    return streams > 0 and behind >= max(2, math.ceil(SHARED_DECODER_FRACTION * streams))


@dataclass(frozen=True)
class StreamLoad:
    """One stream over the last control interval."""

    stream_id: str
    offered_fps: float  # frames announced (letterboxed, sent to the scheduler) per second
    dropped_fps: float = 0.0  # of those, dropped as inference_behind per second
    demand_fps: float | None = None  # what it would send unlimited (source fps / analysis_fps)
    falling_behind: bool = False  # behind real time, the lag growing fast over the interval
    catching_up: bool = False  # behind real time, the lag shrinking over the interval
    lag_slope: float | None = None  # lag gained per second while behind (None: not behind)


def water_level(capacity: float, demands: Mapping[str, float]) -> float:
    """The max-min fair level ``L``: ``sum(min(d, L)) == capacity``; ``inf`` when every
    demand fits (``inf`` demands take whatever they get)."""
    left = max(capacity, 0.0)
    pending = sorted(demands.values())
    while pending:
        equal = left / len(pending)
        if pending[0] > equal:
            return equal
        left -= pending.pop(0)
    return math.inf


def max_min_fair(capacity: float, demands: Mapping[str, float]) -> dict[str, float]:
    """Split ``capacity`` max-min fairly: streams asking less than an equal share keep what
    they ask, the others split the rest equally."""
    level = water_level(capacity, demands)
    return {sid: min(d, level) for sid, d in demands.items()}


@dataclass(frozen=True)
class _DecoderCut:
    """A cut made because streams fell behind: which, how fast, and the capacity before."""

    streams: frozenset[str]
    slope: float  # their mean lag slope when cut
    capacity_before: float | None
    decoder_limited_before: bool

    @classmethod
    def of(
        cls, loads: Sequence[StreamLoad], capacity: float | None, decoder_limited: bool
    ) -> _DecoderCut:
        falling = [s for s in loads if s.falling_behind]
        slope = sum(s.lag_slope or 0.0 for s in falling) / max(1, len(falling))
        return cls(frozenset(s.stream_id for s in falling), slope, capacity, decoder_limited)

    def helped(self, loads: Sequence[StreamLoad]) -> bool:
        """The same streams' mean slope now (0 for one no longer behind) fell by a quarter."""
        now = [s.lag_slope or 0.0 for s in loads if s.stream_id in self.streams]
        if not now:
            return True
        return sum(now) / len(now) <= 0.75 * self.slope


class FairShareController:
    """Per-stream target fps from overload signals (see the module docstring)."""

    def __init__(
        self,
        *,
        floor_fps: float = 0.2,
        beta: float = 0.9,
        alpha: float = 0.2,
        release_after: int = 5,
        tolerance: float = 0.02,
        peak_decay: float = 0.98,
        decoder_hold: int = 4,
        decoder_distrust: int = 30,
        max_distrust: int = 480,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not 0 < beta < 1:
            raise ValueError(f"beta must be in (0, 1), got {beta}")
        self.floor_fps, self.beta, self.alpha = floor_fps, beta, alpha
        self.release_after, self.tolerance, self.peak_decay = release_after, tolerance, peak_decay
        self.decoder_hold, self.decoder_distrust = decoder_hold, decoder_distrust
        self.max_distrust = max_distrust
        self._distrust_next = decoder_distrust  # doubles with each futile cut in a row
        self._quiet = 0  # intervals since distrust ended without a futile cut
        # the capacity in force comes from a decoder cut (kept through inference cuts below
        # it, until the limit is released or the cut undone): the streams decode GOP heads
        self.decoder_limited = False
        self._held = 0  # intervals left before another decoder cut
        self._probe: _DecoderCut | None = None  # the last decoder cut, until judged
        self._distrusted = 0  # intervals left during which lags are not read as the decoder's
        self.futile_cuts = 0  # decoder cuts undone because the lags kept growing
        self.decoder_cuts = self.inference_cuts = 0  # cuts made, by signal
        self.peak = 0.0  # best served rate seen lately (decays by peak_decay per interval)
        self._clock = clock
        self.capacity: float | None = None  # None: not limiting
        self.targets: dict[str, float | None] = {}
        self._calm = 0
        self._unused = 0  # growth steps skipped in a row because the targets went unused
        self.updated_at: float | None = None

    @property
    def limiting(self) -> bool:
        return self.capacity is not None

    def update(self, loads: Sequence[StreamLoad], saturated: bool) -> dict[str, float | None]:
        """One control step; returns every stream's target fps (None: no limit)."""
        self.updated_at = self._clock()
        if not loads:
            self.capacity, self.targets = None, {}
            self._probe, self._held, self.decoder_limited = None, 0, False
            return {}
        served = sum(max(0.0, s.offered_fps - s.dropped_fps) for s in loads)
        offered = sum(s.offered_fps for s in loads)
        dropped = sum(s.dropped_fps for s in loads)
        self.peak = max(served, self.peak * self.peak_decay)
        n = len(loads)
        self._judge_decoder_cut(loads)
        trusted = self._distrusted == 0
        decoder_behind = trusted and shared_decoder_behind(sum(s.falling_behind for s in loads), n)
        catching_up = trusted and shared_decoder_behind(sum(s.catching_up for s in loads), n)
        inference_over = saturated or dropped > self.tolerance * max(offered, 1e-9)
        decoder_over = decoder_behind and self._held == 0
        if inference_over:
            self._probe = None  # an inference cut is not to be undone with it
            self.inference_cuts += 1
        elif decoder_over:
            self._probe = _DecoderCut.of(loads, self.capacity, self.decoder_limited)
            self.decoder_cuts += 1
            self.decoder_limited = True
        self._held = self.decoder_hold if decoder_over else max(0, self._held - 1)
        overloaded = inference_over or decoder_over
        demands = {s.stream_id: self._demand(s) for s in loads}
        floor_total = self.floor_fps * len(loads)
        if overloaded:
            base = served if self.capacity is None else min(self.capacity, served)
            self.capacity = max(floor_total, self.beta * base)
            self._calm = self._unused = 0
        elif self.capacity is not None and (
            catching_up or decoder_behind or self._probe is not None
        ):
            # a decoder cut still reaching the streams (held until judged), or the backlog
            # being worked off: no more load yet
            self._calm = 0
        elif self.capacity is not None:
            held = [
                s
                for s in loads
                if demands[s.stream_id] > (self.targets.get(s.stream_id) or math.inf) * 1.05
            ]
            if held:
                self._calm = 0
                self._grow(held)
            else:
                self._calm += 1
                if self._calm >= self.release_after:
                    self.capacity, self._unused = None, 0
        if self.capacity is None:
            self.decoder_limited = False
            self.targets = {s.stream_id: None for s in loads}
        else:
            # every stream is capped at the water level: those asking less are not held by it
            level = water_level(self.capacity, demands)
            limit = None if math.isinf(level) else max(self.floor_fps, level)
            self.targets = {s.stream_id: limit for s in loads}
        return dict(self.targets)

    def _grow(self, held: Sequence[StreamLoad]) -> None:
        """Some streams are held below their demand and nothing is overloaded: grow ``C`` by
        ``alpha`` - every interval while they use their targets, else once every
        ``release_after`` intervals - and bring it back to ``beta * peak`` at once if it is
        below (recovery from a transient).  A stall (no held stream offers anything) is no
        evidence either way: ``C`` holds."""
        assert self.capacity is not None
        offering = [s for s in held if s.offered_fps > 0]
        if not offering:
            return
        self._unused = 0 if self._targets_used(offering) else self._unused + 1
        if self._unused in (0, self.release_after):
            self._unused = 0
            self.capacity *= 1 + self.alpha
        self.capacity = max(self.capacity, self.beta * self.peak)

    def _targets_used(self, offering: Sequence[StreamLoad]) -> bool:
        """Of the streams held below their demand that offer anything, at least
        ``USED_STREAMS`` offer ``USED_TARGET`` of their target or more: the capacity is what
        limits them, so more of it would be used.  When most do not (decoders still switching
        modes, or unable to deliver what they are allowed), a larger capacity would only be a
        number: growing it every interval took it to 2.3 x what the card served on a GPU run,
        so that the next overload started from there."""
        using = sum(
            s.offered_fps >= USED_TARGET * (self.targets.get(s.stream_id) or 0.0) for s in offering
        )
        return using >= USED_STREAMS * len(offering)

    def _judge_decoder_cut(self, loads: Sequence[StreamLoad]) -> None:
        """When the last decoder cut's hold is up: if the lags it was made for did not slow
        down (their mean slope fell by less than a quarter), shedding decode did not help -
        the lags are not the decoder's (a site-wide network slowdown, a relay) - so the cut is
        undone and lags are ignored for ``decoder_distrust`` intervals, twice that after
        another futile cut in a row, and so on up to ``max_distrust`` (a slowdown that lasts
        hours costs a cut every few minutes, not every half minute)."""
        self._distrusted = max(0, self._distrusted - 1)
        if self._distrusted == 0:
            self._quiet += 1
            if self._quiet >= self.max_distrust:  # the slowdown is long over
                self._distrust_next = self.decoder_distrust
        probe = self._probe
        if probe is None or self._held > 1:
            return
        self._probe = None
        if probe.helped(loads):
            self._distrust_next = self.decoder_distrust
            return
        self.futile_cuts += 1
        self._quiet = 0
        self.capacity, self._held = probe.capacity_before, 0
        self.decoder_limited = probe.decoder_limited_before
        self._distrusted = self._distrust_next
        self._distrust_next = min(self.max_distrust, 2 * self._distrust_next)

    def forget_pending_cut(self) -> None:
        """The lags a pending decoder cut would be judged on were lost (the governor paused):
        it is not judged (neither undone nor counted futile), and the capacity follows the
        usual rules from the next step (it grows back while nothing reads as overload)."""
        self._probe = None

    def _demand(self, load: StreamLoad) -> float:
        """What the stream would take: its declared demand, or what it offers when it does
        not use its current target (it is not limited by us), else unbounded."""
        if load.demand_fps is not None:
            return load.demand_fps
        target = self.targets.get(load.stream_id)
        if target is not None and load.offered_fps < 0.8 * target:
            return load.offered_fps
        return math.inf
