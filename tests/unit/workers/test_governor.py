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
