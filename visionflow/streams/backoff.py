"""The one retry policy: capped, jittered, overflow-proof exponential backoff.

Stream readers (reconnects), the Redis sink and status writer (Redis outages) and the process
group (restarting a child that died: :func:`visionflow.workers.procs.restart_delay`) all
take their delays from :class:`Backoff`.
"""

from __future__ import annotations

import math
import random


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
