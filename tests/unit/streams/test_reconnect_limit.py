from __future__ import annotations

import threading

import pytest

from visionflow.config import SourceConfig
from visionflow.streams.backoff import ReconnectLimiter


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _max_in_window(times: list[float], window: float) -> int:
    return max(sum(1 for u in times if t <= u < t + window) for t in times)


def test_first_n_go_at_once_then_n_per_second():
    clock = FakeClock()
    limiter = ReconnectLimiter(5, clock)
    times = [limiter.reserve() for _ in range(100)]  # 100 cameras lost at once
    assert times[:5] == [100.0] * 5
    assert times[5:10] == [101.0] * 5 and times[-1] == 119.0
    assert times == sorted(times)
    assert _max_in_window(times, 1.0) == 5


def test_spread_requests_are_not_delayed_and_the_window_slides():
    clock = FakeClock()
    limiter = ReconnectLimiter(2, clock)
    assert limiter.reserve() == 100.0
    clock.now = 100.6
    assert limiter.reserve() == 100.6
    clock.now = 100.7
    assert limiter.reserve() == pytest.approx(101.0)  # 100.0 leaves the window at 101.0
    clock.now = 105.0  # quiet for a while: no backlog
    assert limiter.reserve() == 105.0 and limiter.reserve() == 105.0
    assert limiter.reserve() == 106.0


def test_any_one_second_window_holds_at_most_the_limit_under_random_arrivals():
    import random

    rng = random.Random(7)
    clock = FakeClock()
    limiter = ReconnectLimiter(3, clock)
    times = []
    for _ in range(500):
        clock.now += rng.expovariate(8.0)  # asked for faster than allowed
        times.append(limiter.reserve())
    assert _max_in_window(times, 1.0) == 3
    assert times == sorted(times)


def test_wait_is_cut_short_by_stop_and_returns_false():
    clock = FakeClock()
    limiter = ReconnectLimiter(1, clock)
    stop = threading.Event()
    assert limiter.wait(stop) is True  # the first goes at once
    stop.set()
    assert limiter.wait(stop) is False  # would wait 1 s; stop is already set


def test_wait_really_waits_on_the_real_clock():
    import time

    limiter = ReconnectLimiter(1, window_s=0.2)
    stop = threading.Event()
    t0 = time.monotonic()
    assert limiter.wait(stop) and limiter.wait(stop)
    assert time.monotonic() - t0 >= 0.19


def test_rejects_nonsense_and_config_default():
    with pytest.raises(ValueError):
        ReconnectLimiter(0)
    assert SourceConfig().max_reconnects_per_s == 5
    assert SourceConfig(max_reconnects_per_s=None).max_reconnects_per_s is None
    with pytest.raises(ValueError):
        SourceConfig(max_reconnects_per_s=0)
