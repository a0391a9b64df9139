"""The explicit life cycle of one stream.

::

    stopped ──start──▶ connecting ──first frame──▶ streaming
                         │   ▲                       │  │  │
               open error│   │retry / reopen   no frame│  │error / end of live stream
                         ▼   │                       ▼  │
                        backoff ◀───────────────── stalled
                         │
          retries exhausted / permanent error ──▶ failed
    (any state) ──stop──▶ stopped;  a finite file that ends ──▶ stopped
    (any state but stopped-by-shutdown) ──disable──▶ disabled ──enable──▶ connecting

``disabled``: the stream is registered (listed in status, its counters kept) but not read;
its source is closed.  It is entered when the stream is disabled at run time (``PATCH
enabled=false``, an edited config file) or starts disabled, and left for ``connecting`` when
it is enabled again, or for ``stopped`` when the pipeline stops or the stream is removed.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum

from visionflow.errors import InvalidTransitionError


class StreamState(StrEnum):
    """Where a stream is in its life cycle."""

    CONNECTING = "connecting"
    STREAMING = "streaming"
    BACKOFF = "backoff"
    STALLED = "stalled"
    STOPPED = "stopped"
    FAILED = "failed"
    DISABLED = "disabled"


S = StreamState
TRANSITIONS: dict[StreamState, frozenset[StreamState]] = {
    S.STOPPED: frozenset({S.CONNECTING, S.DISABLED}),
    S.CONNECTING: frozenset({S.STREAMING, S.BACKOFF, S.FAILED, S.STOPPED, S.DISABLED}),
    S.STREAMING: frozenset({S.STALLED, S.BACKOFF, S.CONNECTING, S.FAILED, S.STOPPED, S.DISABLED}),
    S.STALLED: frozenset({S.CONNECTING, S.STOPPED, S.DISABLED}),
    S.BACKOFF: frozenset({S.CONNECTING, S.FAILED, S.STOPPED, S.DISABLED}),
    S.FAILED: frozenset({S.CONNECTING, S.STOPPED, S.DISABLED}),
    S.DISABLED: frozenset({S.CONNECTING, S.STOPPED}),
}


@dataclass(frozen=True)
class Transition:
    """One recorded state change."""

    at: float
    source: StreamState
    target: StreamState
    reason: str


class StreamStateMachine:
    """Current state plus a bounded history; illegal moves raise."""

    def __init__(
        self,
        stream_id: str,
        on_change: Callable[[Transition], None] | None = None,
        history: int = 32,
    ) -> None:
        self.stream_id = stream_id
        self._state = S.STOPPED
        self._since = time.time()
        self._history: deque[Transition] = deque(maxlen=history)
        self._on_change = on_change
        self._lock = threading.Lock()

    @property
    def state(self) -> StreamState:
        return self._state

    @property
    def since(self) -> float:
        """Wall-clock time of the last change."""
        return self._since

    @property
    def history(self) -> tuple[Transition, ...]:
        return tuple(self._history)

    def can(self, target: StreamState) -> bool:
        return target in TRANSITIONS[self._state]

    def to(self, target: StreamState, reason: str = "") -> Transition:
        """Move to ``target``; raises :class:`InvalidTransitionError` if the table forbids it."""
        with self._lock:
            if target not in TRANSITIONS[self._state]:
                raise InvalidTransitionError(
                    f"stream {self.stream_id!r}: {self._state} -> {target} is not allowed"
                )
            change = Transition(time.time(), self._state, target, reason)
            self._state, self._since = target, change.at
            self._history.append(change)
        if self._on_change is not None:
            self._on_change(change)
        return change
