"""The move budgets: spent once a tick, they still give their configured rate."""

from __future__ import annotations

import pytest

from visionflow.fleet.node import _Budget


def moves_over(rate: float, tick_s: float, seconds: float) -> int:
    """Moves made by a node that wants more than it may, ticking every ``tick_s``."""
    budget, done, now = _Budget(rate, tick_s), 0, 1000.0
    while now < 1000.0 + seconds:
        n = budget.take_up_to(now)
        budget.spend(n)
        done += n
        now += tick_s
    return done


@pytest.mark.parametrize(("rate", "tick_s"), [(50.0, 2.5), (2.0, 2.5), (2.0, 0.25), (0.1, 2.5)])
def test_the_budget_gives_its_rate_whatever_the_tick(rate: float, tick_s: float):
    seconds = 400.0
    done = moves_over(rate, tick_s, seconds)
    assert rate * seconds * 0.95 <= done <= rate * seconds + rate * tick_s + 1, (
        f"{done} moves in {seconds:.0f}s at {rate}/s with ticks of {tick_s}s"
    )


def test_saving_up_is_bounded_to_a_tick():
    budget = _Budget(2.0, 2.5)
    budget.take_up_to(1.0)
    assert budget.take_up_to(1000.0) == 5  # not 2000 after a long idle spell
