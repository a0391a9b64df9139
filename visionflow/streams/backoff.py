"""The one retry policy: capped, jittered, overflow-proof exponential backoff.

Stream readers (reconnects), the Redis sink and status writer (Redis outages) and the process
group (restarting a child that died: :func:`visionflow.workers.procs.restart_delay`) all
take their delays from :class:`Backoff`.  :class:`ReconnectLimiter` caps how many
connection attempts all the readers of one ingest process make per second together.
"""

from __future__ import annotations

import math
import random
import threading
import time
from collections import deque
from collections.abc import Callable


class Backoff:
    """Delays ``initial * multiplier**n`` capped at ``cap``, minus a random jitter fraction.

    Jitter spreads the reconnects of many cameras that failed together (a switch reboot) so
    they do not all hammer the network at the same instant.
    """

    def __init__(
        self,
        initial: float,
        cap: float,
        multiplier: float = 2.0,
        jitter: float = 0.5,
        rng: random.Random | None = None,
    ) -> None:
        if initial <= 0 or cap <= 0 or multiplier < 1 or not 0 <= jitter <= 1:
            raise ValueError("backoff needs initial>0, cap>0, multiplier>=1, 0<=jitter<=1")
        self.initial, self.cap, self.multiplier, self.jitter = initial, cap, multiplier, jitter
        self._rng = rng or random.Random()
        self.failures = 0

    def base_delay(self, failures: int) -> float:
        """The un-jittered delay after ``failures`` consecutive failures (0: the first
        retry): ``min(cap, initial * multiplier**failures)``, for any ``failures``."""
        # Compare exponents first: after ~1,000 failures (one night offline)
        # multiplier**failures overflows a float and would kill the caller.  Below the cap
        # the power is smaller than cap/initial, so computing it is safe (and exact).
        failures = max(0, failures)
        if failures * math.log(self.multiplier) >= math.log(self.cap / self.initial):
            return self.cap
        return float(min(self.cap, self.initial * self.multiplier**failures))

    def delay(self, failures: int) -> float:
        """:meth:`base_delay` minus the random jitter fraction; keeps no state."""
        return self.base_delay(failures) * (1 - self.jitter * self._rng.random())

    def next_delay(self) -> float:
        """Delay before the next attempt; counts one more consecutive failure."""
        delay = self.delay(self.failures)
        self.failures += 1
        return delay

    def reset(self) -> None:
        """A success: start from ``initial`` again."""
        self.failures = 0


class ReconnectLimiter:
    """At most ``per_second`` connection attempts in any one-second window, shared by every
    reader thread of one process (thread-safe).

    Backoff spreads one camera's retries; this caps the sum: when a switch reboots, the 100
    cameras behind it come back ``per_second`` at a time instead of all at once (a reconnect
    storm that times out the RTSP servers and the network, so everything retries again).
    Each caller reserves the earliest free moment, so waiting readers take turns in the order
    they asked (no starvation); the first ``per_second`` callers go at once.  A reservation
    given up (the reader was stopped while waiting) is not handed back.
    """

    def __init__(
        self,
        per_second: int,
        clock: Callable[[], float] = time.monotonic,
        window_s: float = 1.0,
    ) -> None:
        if per_second < 1 or window_s <= 0:
            raise ValueError("reconnect limit needs per_second >= 1 and window_s > 0")
        self.per_second, self.window_s, self.clock = per_second, window_s, clock
        self._granted: deque[float] = deque(maxlen=per_second)  # the latest reservations
        self._lock = threading.Lock()

    def reserve(self) -> float:
        """Reserve a connection attempt; returns the clock time at which it may start."""
        with self._lock:
            at = self.clock()
            if len(self._granted) == self.per_second:
                at = max(at, self._granted[0] + self.window_s)
            self._granted.append(at)
            return at

    def wait(self, stop: threading.Event) -> bool:
        """Block until this caller may connect; False if ``stop`` was set first."""
        delay = self.reserve() - self.clock()
        if delay > 0:
            return not stop.wait(delay)
        return not stop.is_set()
