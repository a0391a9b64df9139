"""Jittered exponential backoff for reconnects."""

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

    def next_delay(self) -> float:
        """Delay before the next attempt; counts one more consecutive failure."""
        # Compare exponents, never compute multiplier**failures: after ~1,000 failures (one
        # night offline) the power overflows a float and would kill the caller.
        growth = self.failures * math.log(self.multiplier)
        if growth >= math.log(self.cap / self.initial):
            base = self.cap
        else:
            base = self.initial * math.exp(growth)
        self.failures += 1
        return base * (1 - self.jitter * self._rng.random())

    def reset(self) -> None:
        """A success: start from ``initial`` again."""
        self.failures = 0
