"""The slot ledger: every announced frame is resolved exactly once.

A frame is *announced* when the scheduler learns of it (its pixels wait in a slot).  It is
then resolved once: ``inferred`` (its detections went to the output stage), ``abandoned``
(its worker died and no other could take the batch: the output stage decides whether its
results had already been written, or counts it ``worker_lost``), or dropped with one reason
(``inference_behind``, ``inference_error``, ``stream_removed``, ``ingest_restart``,
``shutdown``).  Until then it is *in flight*.  So for every stream, at any instant::

    announced == inferred + abandoned + sum(drops.values()) + in_flight

A frame resolved twice, or resolved without having been announced, is a bug in the
scheduler: it is counted in :attr:`SlotLedger.violations` (and logged once), never silently
absorbed; the tests assert there are none.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field

from visionflow.pipeline.frames import FrameRef

log = logging.getLogger("visionflow.ledger")
INFERRED = "inferred"
ABANDONED = "abandoned"


@dataclass
class StreamLedger:
    """One stream's counters (mutable, owned by the ledger)."""

    announced: int = 0
    inferred: int = 0
    abandoned: int = 0
    drops: Counter[str] = field(default_factory=Counter)
    in_flight: int = 0
    last_seq: int = -1  # the highest seq announced


@dataclass(frozen=True)
class LedgerSnapshot:
    """One stream's counters at an instant."""

    announced: int
    inferred: int
    drops: dict[str, int]
    in_flight: int
    abandoned: int = 0


class SlotLedger:
    """Tracks ``(stream, seq)`` from announcement to its one resolution."""

    def __init__(self) -> None:
        self._open: set[tuple[str, int]] = set()  # (pool, seq): seq restarts with a new pool
        self._streams: dict[str, StreamLedger] = {}
        self.violations = 0

    def announce(self, frame: FrameRef) -> None:
        key = (frame.pool, frame.seq)
        if key in self._open:
            self._violation(f"frame {key} announced twice")
            return
        self._open.add(key)
        stream = self._stream(frame.stream_id)
        stream.announced += 1
        stream.in_flight += 1
        if frame.seq > stream.last_seq:
            stream.last_seq = frame.seq

    def resolve(self, frame: FrameRef, outcome: str) -> bool:
        """Resolve one frame as ``inferred`` or dropped for ``outcome``; False if it was not
        open (a violation)."""
        key = (frame.pool, frame.seq)
        if key not in self._open:
            self._violation(f"frame {key} resolved as {outcome!r} but not in flight")
            return False
        self._open.discard(key)
        stream = self._streams[frame.stream_id]
        stream.in_flight -= 1
        if outcome == INFERRED:
            stream.inferred += 1
        elif outcome == ABANDONED:
            stream.abandoned += 1
        else:
            stream.drops[outcome] += 1
        return True

    def resolve_all(self, frames: tuple[FrameRef, ...] | list[FrameRef], outcome: str) -> None:
        for frame in frames:
            self.resolve(frame, outcome)

    def snapshot(self, stream_id: str) -> LedgerSnapshot:
        s = self._streams.get(stream_id) or StreamLedger()
        return LedgerSnapshot(s.announced, s.inferred, dict(s.drops), s.in_flight, s.abandoned)

    def snapshots(self) -> dict[str, LedgerSnapshot]:
        return {sid: self.snapshot(sid) for sid in self._streams}

    def last_seq(self, stream_id: str) -> int:
        stream = self._streams.get(stream_id)
        return stream.last_seq if stream else -1

    def forget(self, stream_id: str) -> None:
        """A removed stream whose frames are all resolved: drop its counters."""
        stream = self._streams.get(stream_id)
        if stream is not None and stream.in_flight == 0:
            del self._streams[stream_id]

    @property
    def in_flight(self) -> int:
        return len(self._open)

    def _stream(self, stream_id: str) -> StreamLedger:
        stream = self._streams.get(stream_id)
        if stream is None:
            stream = self._streams[stream_id] = StreamLedger()
        return stream

    def _violation(self, what: str) -> None:
        self.violations += 1
        if self.violations == 1:
            log.error("slot ledger: %s (further violations are only counted)", what)
