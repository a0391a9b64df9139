"""The tracking processor of the output stage: track ids, events and counts per stream.

Plugs into :class:`visionflow.workers.output.OutputStage` between the reorder buffer and the
sinks, where every stream's results come in ``seq`` order.  For each stream with a
``tracking`` section it runs a :class:`~visionflow.tracking.bytetrack.ByteTracker` and the
stream's :class:`~visionflow.tracking.analytics.StreamAnalytics`, and returns each result
with ``track_id`` on its detections and the frame's events and count increments (written by
:class:`visionflow.tracking.sink.RedisEventSink`).  Streams without tracking pass through
untouched.

Time: a stream's track clock advances by the difference of presentation times when they
increase in step with the capture times, else by the difference of capture times (a looped
file, a reconnect, a jump of the pts), so the lost-track buffer and dwell times are in the
source's seconds.  The tracker is reset (ids keep counting up) when a frame comes at another
resolution (the camera reconnected with other settings) or with a ``seq`` not above the last
one (the pipeline restarted).

Ids: unique per stream, not small consecutive numbers.  A stream's tracker starts at
:func:`~visionflow.tracking.bytetrack.seed_id` (wall-clock ms x 1000), and a tracker replaced
in this process (a config change, an error) also above the last id of the one before, so an
id never names two objects across a restart, a config change or a fleet handover.
"""

from __future__ import annotations

import dataclasses
import logging
from collections import Counter
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from visionflow.pipeline.appearance import DESCRIPTOR_BYTES, DIMS, decode
from visionflow.pipeline.frames import Detection, FrameResult, TrackEvent
from visionflow.tracking.analytics import Frame, Seen, StreamAnalytics
from visionflow.tracking.bytetrack import ByteTracker, FrameTracks, seed_id
from visionflow.tracking.config import TrackingConfig

log = logging.getLogger("visionflow.tracking")
PTS_AGREE_S, PTS_AGREE_FRACTION = 1.0, 0.5


@dataclass
class _Clock:
    pts: float | None = None
    capture: float = 0.0
    now: float = 0.0

    def advance(self, pts: float | None, capture: float) -> float:
        """The clock at this frame: the pts step when it agrees with the capture-time step
        (within max(1 s, 50 %)), else the capture-time step (a jump of the pts is not time)."""
        step = max(0.0, capture - self.capture) if self.capture else 0.0
        if self.pts is not None and pts is not None and pts > self.pts:
            by_pts = pts - self.pts
            if abs(by_pts - step) <= max(PTS_AGREE_S, PTS_AGREE_FRACTION * step):
                step = by_pts
        self.now += step
        self.pts, self.capture = pts, capture
        return self.now


def descriptors(dets: tuple[Detection, ...]) -> npt.NDArray[np.float64] | None:
    """The detections' appearance descriptors ``[N, DIMS]`` (zeros for one without), or None
    when none has one (a frame described before its stream asked, a worker that could not)."""
    if not any(d.appearance is not None for d in dets):
        return None
    out = np.zeros((len(dets), DIMS))
    for i, d in enumerate(dets):
        if d.appearance is not None and len(d.appearance) == DESCRIPTOR_BYTES:
            out[i] = decode(d.appearance)
    return out


class StreamTracker:
    """Tracker, clock and zones/lines of one stream."""

    def __init__(self, stream_id: str, config: TrackingConfig, first_id: int = 1) -> None:
        self.stream_id, self.config = stream_id, config
        self.tracker = ByteTracker(config.params(), first_id)
        self.clock = _Clock()
        self.size: tuple[int, int] | None = None
        self.last_seq = -1
        self.analytics: StreamAnalytics | None = None
        self.resets = 0

    def step(self, result: FrameResult) -> FrameResult:
        frame = result.frame
        size = (frame.letterbox.src_w, frame.letterbox.src_h)
        events: list[TrackEvent] = []
        closed: list[tuple[str, str]] = []
        t = self.clock.advance(frame.pts, frame.capture_ts)
        if self.analytics is None or size != self.size or frame.seq <= self.last_seq:
            if self.analytics is not None:
                events, closed = self.analytics.close(Frame(frame.seq, frame.capture_ts, t, ()))
                self.resets += 1
                log.info(
                    "stream %r: tracker reset (%s)",
                    self.stream_id,
                    "resolution changed" if size != self.size else "seq went back",
                )
            self.tracker.reset()
            self.size = size
            self.analytics = StreamAnalytics(self.config, *size, stream_id=self.stream_id)
        self.last_seq = frame.seq
        dets = result.detections
        if not dets and not len(self.tracker) and not events:
            self.tracker.idle(t, size)  # nothing to match or age: the time moves
            if not self.analytics.waiting:  # ... and nothing to count
                return result
            found = FrameTracks(np.zeros(0, np.int64), np.zeros(0, bool))
        else:
            found = self._track(dets, t, size)
        ids = [int(i) if i >= 0 else None for i in found.track_ids]
        seen = [
            Seen(ids[i] or 0, d.label, (d.x1, d.y1, d.x2, d.y2))
            for i, d in enumerate(dets)
            if ids[i] is not None and found.confirmed[i]
        ]
        more, counts = self.analytics.step(
            Frame(frame.seq, frame.capture_ts, t, seen, found.born, found.removed)
        )
        counts = closed + counts  # the exits of a reset first, as their events
        return dataclasses.replace(
            result,
            detections=tuple(  # its look stays here
                d.tracked(i) for d, i in zip(dets, ids, strict=True)
            ),
            events=tuple(events + more),
            counts=tuple(counts),
        )

    def _track(self, dets: tuple[Detection, ...], t: float, size: tuple[int, int]) -> FrameTracks:
        boxes = np.array([[d.x1, d.y1, d.x2, d.y2] for d in dets], np.float64).reshape(-1, 4)
        scores = np.array([d.score for d in dets], np.float64)
        classes = np.array([d.class_id for d in dets], np.int64)
        features = descriptors(dets) if self.config.appearance_s > 0 else None
        return self.tracker.update(boxes, scores, classes, t, size, features)


class TrackingProcessor:
    """Per-stream trackers in the output stage; configs can change at run time."""

    def __init__(self, configs: dict[str, TrackingConfig] | None = None) -> None:
        self.configs: dict[str, TrackingConfig] = dict(configs or {})
        self.streams: dict[str, StreamTracker] = {}
        self.errors: Counter[str] = Counter()
        self.next_ids: dict[str, int] = {}  # of trackers given up: a new one starts above

    def _drop(self, stream_id: str) -> None:
        state = self.streams.pop(stream_id, None)
        if state is not None:
            self.next_ids[stream_id] = state.tracker.next_id

    def _first_id(self, stream_id: str) -> int:
        return max(seed_id(), self.next_ids.get(stream_id, 0))

    def configure(self, stream_id: str, config: TrackingConfig | None) -> None:
        """Start, change or stop (None) tracking one stream; its tracks start afresh (with
        ids above every id it had)."""
        self._drop(stream_id)
        if config is None:
            self.configs.pop(stream_id, None)
        else:
            self.configs[stream_id] = config

    def process(self, results: list[FrameResult]) -> list[FrameResult]:
        return [self._one(r) for r in results]

    def _one(self, result: FrameResult) -> FrameResult:
        sid = result.frame.stream_id
        config = self.configs.get(sid)
        if config is None:
            return result
        state = self.streams.get(sid)
        if state is None:
            state = self.streams[sid] = StreamTracker(sid, config, self._first_id(sid))
        try:
            return state.step(result)
        except Exception:  # one stream's bad frame must not stop the others' tracking
            self.errors[sid] += 1
            if self.errors[sid] == 1:
                log.exception("stream %r: tracking failed (further failures only counted)", sid)
            self._drop(sid)
            return result
