"""Load shedding before decode: which packets to decode and which decoded frames to use.

A stream's *analysis target* is ``min(analysis_fps, share)``: the user's per-stream
``analysis_fps`` and the fair share the scheduler hands out under overload
(:class:`visionflow.pipeline.share.FairShareController`).  Below the source's frame rate the
policy stops paying for frames that would be thrown away:

- **mode** (FFmpeg's ``skip_frame`` on the open codec context), chosen at keyframes:

  ======== =========== ================================================================
  mode     skip_frame  when
  ======== =========== ================================================================
  nonkey   ``NONKEY``  target <= keyframe rate x ``key_margin``: only keyframes are
                       decoded (and only those the token bucket will use are fed at all)
  prefix   ``DEFAULT`` target <= ``prefix_ratio`` x the source rate: each GOP's first
                       ``round(target / keyframe rate)`` frames are decoded and used, the
                       rest of the GOP is never given to the decoder (decode cost follows
                       the target, not the source; the used frames come in a burst at the
                       start of each GOP instead of evenly spread)
  nonref   ``NONREF``  the stream has B-frames and target <= the rate of reference frames
  all      ``DEFAULT`` otherwise
  ======== =========== ================================================================

  A mode is left only when the target has moved ``hysteresis`` beyond the threshold that
  selected it, and never sooner than ``min_dwell_s`` after the last change, so modes do not
  flap while the fair share settles.
- **GOP prefix**: in ``all``/``nonref`` the rest of a GOP is not fed to the decoder once the
  token bucket says none of its remaining frames will be used (they would only serve as
  references for frames nobody looks at); decoding resumes at the next keyframe.
- **used or not**: a token bucket on presentation time keeps frames evenly spread at the
  target rate; frames it does not keep are discarded before the RGB conversion and letterbox.
- **lag and the decoder behind**: ``lag`` is how far behind real time the stream's packets
  are read, from the best (wall clock - pts) offset of the session (the live edge).  Over
  ``lag_limit_s`` (``source.shed_lag_limit_s``, 1 s by default; 0: off) the stream is *behind*
  (:attr:`ShedPolicy.behind`).  A lag also comes from a source that gets later during the
  session (a relay falling behind, a camera clock running slow, a slow link; a constant delay
  reads as no lag), so the fair share (:mod:`visionflow.pipeline.share`) acts only on lags
  that keep *growing* fast, and on two streams or more.  Decoders that cannot shed before
  decode (``NO_MODES``: DALI) are never behind.  A stream given a *share* below its rate by
  a decoder cut (the scheduler says so with the share; an inference cut or a lag alone never
  does) is *decode-bound*: from its next keyframe it decodes only each GOP's first
  ``round(target / keyframe rate)`` frames (``prefix``, whatever ``prefix_ratio`` says:
  frames evenly spread need most of each GOP decoded, so the decoder's load would not fall;
  ``nonkey`` still wins at keyframe rates) until the share is lifted or stops being a
  decoder cut; ``analysis_fps`` alone never makes a stream decode-bound.

Times are media seconds (pts) when the source has them, else the injected clock, so a file
read faster than real time is thinned in video time.  Which modes a decoder can take is its
``modes``: PyAV all four (:data:`ALL_MODES`); NVDEC, fed packet by packet but without FFmpeg's
``skip_frame``, the packet-level ones (:data:`PACKET_MODES`: ``prefix``, ``nonkey`` and the
GOP prefix, so a decode-bound GPU sheds before NVDEC rather than after it); DALI, which decodes
whole GOPs, none (:data:`NO_MODES`: every packet is decoded and only the "used or not" gate
applies).

The policy is pure (no I/O, injected clock) and runs on the stream's reader thread;
:meth:`ShedPolicy.set_share` may be called from another thread (one tuple assignment, read
once by the reader thread).
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

DecodeMode = Literal["all", "nonref", "prefix", "nonkey"]

#: FFmpeg ``skip_frame`` value (PyAV ``codec_context.skip_frame``) for each mode
SKIP_FRAME: dict[DecodeMode, str] = {
    "all": "DEFAULT",
    "nonref": "NONREF",
    "prefix": "DEFAULT",
    "nonkey": "NONKEY",
}

#: every mode: decoders with FFmpeg's skip_frame (PyAV)
ALL_MODES: frozenset[DecodeMode] = frozenset(("all", "nonref", "prefix", "nonkey"))
#: decoders fed packet by packet without skip_frame (NVDEC): the modes that only gate packets
PACKET_MODES: frozenset[DecodeMode] = frozenset(("all", "prefix", "nonkey"))
#: decoders that take whole GOPs (DALI), or shedding before decode turned off
NO_MODES: frozenset[DecodeMode] = frozenset(("all",))

_PACKET_WINDOW = 64  # packets used to measure the source's frame rate
_KEY_WINDOW = 5  # keyframes used to measure the keyframe rate
_JUMP_S = 10.0  # a pts jump (or step back) larger than this restarts the measurements
_LAG_WINDOW_S = 1.0  # the reported lag is the least of this window's


@dataclass(frozen=True)
class ShedSnapshot:
    """What the policy is doing, for status."""

    mode: DecodeMode
    target_fps: float | None
    source_fps: float | None
    key_rate: float | None
    analysis_fps: float  # frames used per clock second, measured
    lag_s: float | None  # how far behind real time the stream's packets are read
    behind: bool  # read more than lag_limit_s behind real time
    used: int
    skipped: int  # decoded, not used (discarded before letterbox)
    packets_skipped: int  # never given to the decoder


class ShedPolicy:
    """Per-stream decode mode, packet gate and frame gate (see the module docstring)."""

    def __init__(
        self,
        analysis_fps: float | None = None,
        *,
        modes: frozenset[DecodeMode] = ALL_MODES,
        clock: Callable[[], float] = time.monotonic,
        key_margin: float = 1.2,
        hysteresis: float = 0.25,
        min_dwell_s: float = 2.0,
        window_s: float = 5.0,
        prefix_ratio: float = 0.5,
        lag_limit_s: float = 0.0,
    ) -> None:
        if analysis_fps is not None and analysis_fps <= 0:
            raise ValueError(f"analysis_fps must be > 0, got {analysis_fps}")
        self.analysis_fps = analysis_fps
        self.modes = modes
        self.gates_packets = modes != NO_MODES  # packets may be kept from the decoder
        self._clock = clock
        self.key_margin, self.hysteresis = key_margin, hysteresis
        self.min_dwell_s, self.window_s = min_dwell_s, window_s
        self.prefix_ratio = prefix_ratio
        self.lag_limit_s = lag_limit_s  # 0: never decode-bound
        self.decode_bound = False  # see the module docstring (lag); kept across reset()
        # the scheduler's share and whether it comes from a decoder cut, set together
        self._share_state: tuple[float | None, bool] = (None, False)
        self.mode: DecodeMode = "all"
        self._mode_since = clock()
        self.used = self.skipped = self.packets_skipped = 0
        self._used_at: deque[float] = deque(maxlen=4096)
        self._started = clock()
        self.reset()

    # ---- inputs ------------------------------------------------------------------
    def set_share(self, fps: float | None, decoder_bound: bool = False) -> None:
        """The scheduler's fair share for this stream (None: no limit).  ``decoder_bound``:
        the share comes from a decoder cut (a quarter of the streams falling behind real
        time, :mod:`visionflow.pipeline.share`), so this stream is decode-bound, even if it
        keeps up itself.  Any thread."""
        if fps is not None and fps <= 0:
            raise ValueError(f"share must be > 0, got {fps}")
        self._share_state = (fps, decoder_bound)

    @property
    def _share(self) -> float | None:
        return self._share_state[0]

    @property
    def lag_s(self) -> float | None:
        """How far behind real time the packets are read: the least lag of the last
        ``_LAG_WINDOW_S`` (packets come in decode order, so B-frames and network bursts move
        a single packet's lag by a tenth of a second or more); None: no timestamps yet."""
        try:
            recent = [lag for _, lag in list(self._lags)]  # any thread: a copy first
        except RuntimeError:  # appended to while copied
            return self._lag
        return min(recent) if recent else self._lag

    @property
    def behind(self) -> bool:
        """Read more than ``lag_limit_s`` behind real time; never without packet shedding
        or with the limit at 0."""
        return self._over_limit(self.lag_s)

    def _over_limit(self, lag: float | None) -> bool:
        return (
            self.lag_limit_s > 0
            and self.gates_packets
            and lag is not None
            and lag > self.lag_limit_s
        )

    @property
    def target(self) -> float | None:
        """Frames per second to analyse: ``min(analysis_fps, share)``; None: every frame."""
        values = [v for v in (self.analysis_fps, self._share) if v is not None]
        return min(values) if values else None

    def reset(self) -> None:
        """Forget the source's timing (a new session, a loop, a pts discontinuity)."""
        self._packets: deque[float] = deque(maxlen=_PACKET_WINDOW)
        self._keys: deque[float] = deque(maxlen=_KEY_WINDOW)
        self._frames_seen = self._b_frames = 0
        self._last_t: float | None = None
        self._offset: float | None = None
        self._next_due: float | None = None
        self._gop_open = True
        self._gop_fed = 0  # packets of this GOP given to the decoder (prefix mode)
        self._min_offset: float | None = None  # best (wall - pts) of the session: live edge
        self._lag: float | None = None
        self._lags: deque[tuple[float, float]] = deque()  # (clock, lag) of the last window

    # ---- measurements ------------------------------------------------------------
    def _time(self, pts: float | None) -> float:
        now = self._clock()
        if pts is not None:
            self._offset = offset = now - pts
            if self._min_offset is None or offset < self._min_offset:
                self._min_offset = offset
            self._lag = lag = offset - self._min_offset
            self._lags.append((now, lag))
            while self._lags and self._lags[0][0] < now - _LAG_WINDOW_S:
                self._lags.popleft()
            return pts
        if self._offset is None:
            self._offset = now
        return now - self._offset

    @property
    def source_fps(self) -> float | None:
        """Packets (= frames) per media second over the last packets; None until known."""
        p = self._packets
        if len(p) < 8 or p[-1] <= p[0]:
            return None
        return (len(p) - 1) / (p[-1] - p[0])

    @property
    def key_rate(self) -> float | None:
        """Keyframes per media second; None until two keyframes were seen."""
        k = self._keys
        if len(k) < 2 or k[-1] <= k[0]:
            return None
        return (len(k) - 1) / (k[-1] - k[0])

    @property
    def b_fraction(self) -> float:
        """Share of B-frames among frames decoded in mode ``all`` (0 until seen)."""
        return self._b_frames / self._frames_seen if self._frames_seen else 0.0

    def effective_fps(self) -> float:
        """Frames used per clock second over the last ``window_s``."""
        now = self._clock()
        cutoff = now - self.window_s
        used = sum(1 for t in list(self._used_at) if t >= cutoff)  # read-only: any thread
        span = min(self.window_s, now - self._started)
        return used / span if span > 0 else 0.0

    def _expire(self, now: float) -> None:  # reader thread only
        while self._used_at and self._used_at[0] < now - self.window_s:
            self._used_at.popleft()

    # ---- mode --------------------------------------------------------------------
    def desired_mode(self) -> DecodeMode:
        """The mode the current target and measurements call for, with hysteresis."""
        target, src = self.target, self.source_fps
        if not self.gates_packets or target is None or src is None or target >= src:
            return "all"
        keys = self.key_rate
        if keys is not None and "nonkey" in self.modes:
            limit = keys * self.key_margin * (1 + self.hysteresis if self.mode == "nonkey" else 1)
            if target <= limit:
                return "nonkey"
        if keys is not None and "prefix" in self.modes and self.decode_bound:
            return "prefix"
        b = self.b_fraction
        if b > 0.05 and "nonref" in self.modes:
            limit = src * (1 - b) / (1 + self.hysteresis if self.mode != "nonref" else 1)
            if target <= limit:
                return "nonref"
        if keys is not None and self.prefix_ratio > 0 and "prefix" in self.modes:
            scale = 1 + self.hysteresis if self.mode == "prefix" else 1
            if target <= src * self.prefix_ratio * scale:
                return "prefix"
        return "all"

    def _update_decode_bound(self) -> None:
        """Reader thread, at keyframes: given a share below the source rate by a decoder cut:
        decode-bound while the scheduler says the shares are a decoder cut (through the
        catching up that follows, so that it does not bring back a decoder-heavy mode), until
        the share is lifted or the scheduler stops saying so.  A lag alone never is: a lag
        that holds still (a camera clock drifting slow) is not the decoder's, and only the
        scheduler tells them apart."""
        share, told = self._share_state
        src = self.source_fps
        if share is None or (src is not None and share >= src) or not told:
            self.decode_bound = False  # lifted (an unknown rate, just after a reset: kept)
        elif self.lag_limit_s > 0 and self.gates_packets:
            self.decode_bound = True

    def _switch_mode(self) -> None:
        now = self._clock()
        self._update_decode_bound()
        if now - self._mode_since < self.min_dwell_s:
            return
        wanted = self.desired_mode()
        if wanted != self.mode:
            self.mode, self._mode_since = wanted, now

    # ---- gates -------------------------------------------------------------------
    def _due(self, t: float) -> bool:
        """Would a frame at media time ``t`` be kept by the token bucket?"""
        target = self.target
        if target is None or self._next_due is None:
            return True
        src = self.source_fps
        tolerance = 0.5 / src if src else 0.0
        return t >= self._next_due - tolerance

    def packet(self, pts: float | None, keyframe: bool) -> bool:
        """Measure one demuxed packet; True: give it to the decoder.

        Mode changes happen here, at keyframes only (a reference chain is never cut
        mid-GOP).
        """
        t = self._time(pts)
        if self._last_t is not None and not (self._last_t - 1.0 <= t <= self._last_t + _JUMP_S):
            gop_open = self._gop_open  # a jump mid-GOP does not bring back skipped references
            self.reset()
            self._gop_open = gop_open
            t = self._time(pts)
        self._last_t = t
        self._packets.append(t)
        if keyframe:
            self._keys.append(t)
            self._switch_mode()
        shedding = self.gates_packets and self.target is not None
        if keyframe:
            # a keyframe needs no reference: the GOP opens unless nonkey's bucket skips it
            self._gop_open = not (shedding and self.mode == "nonkey" and not self._due(t))
            self._gop_fed = 0
        elif self._gop_open and shedding and self.mode == "prefix":
            self._gop_open = self._gop_fed < self._gop_quota()
        elif self._gop_open and shedding and (self.mode == "nonkey" or self._rest_unused(t)):
            # once closed, a GOP stays closed until the next keyframe: a packet whose
            # references were not decoded must never reach the decoder
            self._gop_open = False
        if not self._gop_open:
            self.packets_skipped += 1
        else:
            self._gop_fed += 1
        return self._gop_open

    def _gop_quota(self) -> int:
        """Prefix mode: frames to decode per GOP for the target rate."""
        target, keys = self.target, self.key_rate
        if target is None or keys is None:
            return 1 << 30
        return max(1, round(target / keys))

    def _rest_unused(self, t: float) -> bool:
        """True when no frame left in this GOP can be kept: the bucket's next frame is due
        after the next keyframe (predicted from the measured keyframe rate)."""
        keys, src = self.key_rate, self.source_fps
        if keys is None or src is None or self._next_due is None or not self._keys:
            return False
        next_key = self._keys[-1] + 1 / keys
        return t < next_key and self._next_due - 0.5 / src > next_key - 1 / src

    def frame(self, pts: float | None, b_frame: bool = False) -> bool:
        """A decoded frame: True to use it (letterbox and announce), False to discard it."""
        if self.mode == "all":
            self._frames_seen += 1
            self._b_frames += b_frame
        t = pts if pts is not None else self._time(None)
        target = self.target
        if self.mode == "prefix" and target is not None:
            target = None  # only the GOP's prefix was decoded: use all of it
        if target is not None and not self._due(t):
            self.skipped += 1
            return False
        if target is not None:
            period = 1 / target
            base = self._next_due if self._next_due is not None else t
            # no credit for a long gap (a stall, or a lower rate before): at most half a period
            self._next_due = max(base + period, t + 0.5 * period)
        else:
            self._next_due = None
        self.used += 1
        now = self._clock()
        self._used_at.append(now)
        self._expire(now)
        return True

    def not_used(self) -> None:
        """The frame :meth:`frame` just kept was discarded after all (the fps cap, no free
        slot): it is not counted as analysed (reader thread only)."""
        if self._used_at:
            self._used_at.pop()
            self.used -= 1

    def snapshot(self) -> ShedSnapshot:
        lag = self.lag_s
        return ShedSnapshot(
            mode=self.mode,
            target_fps=self.target,
            source_fps=self.source_fps,
            key_rate=self.key_rate,
            analysis_fps=self.effective_fps(),
            lag_s=lag,
            behind=self._over_limit(lag),
            used=self.used,
            skipped=self.skipped,
            packets_skipped=self.packets_skipped,
        )
