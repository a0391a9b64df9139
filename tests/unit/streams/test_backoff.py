from __future__ import annotations

import random

import pytest

from visionflow.streams.backoff import Backoff


def test_grows_exponentially_to_the_cap_without_jitter():
    b = Backoff(0.5, 4.0, 2.0, jitter=0.0)
    assert [b.next_delay() for _ in range(6)] == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]
    b.reset()
    assert b.next_delay() == 0.5 and b.failures == 1


def test_jitter_stays_within_bounds_and_spreads():
    b = Backoff(1.0, 8.0, 2.0, jitter=0.5, rng=random.Random(3))
    delays = []
    for _ in range(200):
        b.reset()
        delays.append(b.next_delay())
    assert all(0.5 <= d <= 1.0 for d in delays)
    assert max(delays) - min(delays) > 0.3


def test_rejects_nonsense():
    with pytest.raises(ValueError):
        Backoff(0, 1)


def test_thousands_of_failures_stay_capped_without_overflow():
    b = Backoff(0.001, 0.002, 2.0, 0.0)
    delays = [b.next_delay() for _ in range(5000)]
    assert b.failures == 5000
    assert max(delays) == 0.002 and delays[-1] == 0.002


def test_base_delay_is_stateless_and_matches_next_delay():
    b = Backoff(0.5, 30.0, 2.0, jitter=0.0)
    assert [b.base_delay(n) for n in range(8)] == [0.5, 1, 2, 4, 8, 16, 30, 30]
    assert b.failures == 0
    assert [b.next_delay() for _ in range(8)] == [b.base_delay(n) for n in range(8)]
    assert b.base_delay(10**9) == 30.0 and b.base_delay(-1) == 0.5


def test_process_group_restart_delay_uses_the_same_policy():
    from visionflow.workers.procs import RESTART_BACKOFF, restart_delay

    assert isinstance(RESTART_BACKOFF, Backoff)
    assert [restart_delay(1.0, n) for n in range(8)] == [
        RESTART_BACKOFF.base_delay(n) for n in range(8)
    ]
    assert restart_delay(1.0, 10**12) == 30.0  # a year of crash loops: no overflow
