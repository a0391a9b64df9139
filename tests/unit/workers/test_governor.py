"""The share governor: ledger counters in, changed targets out, on an injected clock."""

from __future__ import annotations

from visionflow.pipeline.ledger import LedgerSnapshot
from visionflow.workers.governor import ShareGovernor


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def snap(announced: int, behind: int) -> LedgerSnapshot:
    return LedgerSnapshot(announced, announced - behind, {"inference_behind": behind}, 0)


def test_targets_follow_drops_and_only_changes_are_sent():
    clock = Clock()
    g = ShareGovernor(interval_s=1.0, clock=clock)
    demand = {"a": 30.0, "b": 30.0}
    assert g.step({"a": snap(0, 0), "b": snap(0, 0)}, demand) is None  # interval not up
    clock.t = 1.0
    assert g.step({"a": snap(0, 0), "b": snap(0, 0)}, demand) == {}  # first: baseline only
    clock.t = 2.0
    changed = g.step({"a": snap(30, 20), "b": snap(30, 20)}, demand)  # 2/3 dropped
    assert changed and changed["a"] == changed["b"] and changed["a"] < 30
    clock.t = 3.0
    again = g.step({"a": snap(30 + 9, 20), "b": snap(30 + 9, 20)}, demand)
    assert again is not None and all(
        abs(v - changed["a"]) > 0.05 * changed["a"] for v in again.values()
    )


def test_a_pause_forgets_the_outage_window():
    clock = Clock()
    g = ShareGovernor(interval_s=1.0, clock=clock)
    demand = {"a": 30.0}
    clock.t = 1.0
    g.step({"a": snap(0, 0)}, demand)
    clock.t = 5.0
    g.pause()  # a worker restarted: 100 frames dropped meanwhile
    clock.t = 6.0
    assert g.step({"a": snap(130, 100)}, demand) == {}, "the outage must not set a limit"


def test_streams_falling_behind_real_time_cut_the_share():
    clock = Clock()
    g = ShareGovernor(interval_s=1.0, clock=clock)
    demand = {"a": 30.0, "b": 30.0}
    ledger = {"a": snap(0, 0), "b": snap(0, 0)}
    clock.t = 1.0
    assert g.step(ledger, demand) == {}  # baseline
    clock.t = 2.0  # behind for the first time: nothing to compare with yet, no cut
    ledger = {"a": snap(20, 0), "b": snap(20, 0)}
    assert g.step(ledger, demand, {"a": 1.2, "b": 1.2}) == {}
    clock.t = 3.0  # no drops at all, but both still behind and the lag grew: a cut
    ledger = {"a": snap(40, 0), "b": snap(40, 0)}
    changed = g.step(ledger, demand, {"a": 1.5, "b": 1.5})
    assert changed and changed["a"] == changed["b"] and changed["a"] < 20
    clock.t = 4.0  # catching up (the lag shrinks): behind, not falling behind: held
    ledger = {"a": snap(58, 0), "b": snap(58, 0)}
    assert g.step(ledger, demand, {"a": 1.2, "b": 1.2}) == {}


def test_the_first_interval_after_a_pause_never_reads_as_falling_behind():
    clock = Clock()
    g = ShareGovernor(interval_s=1.0, clock=clock)
    demand = {"a": 30.0, "b": 30.0}
    clock.t = 1.0
    g.step({"a": snap(0, 0), "b": snap(0, 0)}, demand, {"a": 1.5, "b": 1.5})
    g.pause()  # workers restarting: what happens now says nothing about capacity
    clock.t = 3.0
    ledger = {"a": snap(10, 0), "b": snap(10, 0)}
    assert g.step(ledger, demand, {"a": 3.0, "b": 3.0}) == {}, "no cut from a lone sample"
    assert not g.controller.limiting


def test_one_stream_of_two_behind_is_not_a_shared_decoder():
    clock = Clock()
    g = ShareGovernor(interval_s=1.0, clock=clock)
    demand = {"a": 30.0, "b": 30.0}
    for t, lag in ((1.0, 1.2), (2.0, 2.2), (3.0, 3.2)):
        clock.t = t
        n = int(t * 25)
        assert g.step({"a": snap(n, 0), "b": snap(n, 0)}, demand, {"a": lag}) in ({}, None)
    assert not g.controller.limiting


def test_a_lag_that_holds_still_never_cuts():
    """Two cameras behind a relay that adds 2 s, or with clocks a little slow: behind, but
    their lag does not grow, so it is not the decoder's."""
    clock = Clock()
    g = ShareGovernor(interval_s=1.0, clock=clock)
    demand = {"a": 30.0, "b": 30.0}
    for step in range(1, 30):
        clock.t = float(step)
        n = step * 30
        lag = 2.0 + 0.001 * step  # 0.1 % drift on top of the relay's delay
        changed = g.step({"a": snap(n, 0), "b": snap(n, 0)}, demand, {"a": lag, "b": lag})
        assert not changed, f"step {step}: {changed}"
    assert not g.controller.limiting
