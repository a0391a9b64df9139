"""The share governor: ledger counters in, changed targets out, on an injected clock."""

from __future__ import annotations

import random

import pytest

from visionflow.pipeline.ledger import LedgerSnapshot
from visionflow.workers.governor import ShareGovernor, fitted_slope


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
    for t, lag in ((2.0, 1.2), (3.0, 1.5)):  # behind: too few samples for a slope yet
        clock.t = t
        ledger = {"a": snap(int(20 * t), 0), "b": snap(int(20 * t), 0)}
        assert g.step(ledger, demand, {"a": lag, "b": lag}) == {}
    clock.t = 4.0  # no drops at all, but both still behind and the lag grows: a cut
    ledger = {"a": snap(80, 0), "b": snap(80, 0)}
    changed = g.step(ledger, demand, {"a": 1.8, "b": 1.8})
    assert changed and changed["a"] == changed["b"] and changed["a"] < 20
    for t, lag in ((5.0, 1.5), (6.0, 1.2)):  # catching up (the lag shrinks): held
        clock.t = t
        ledger = {"a": snap(int(20 * t), 0), "b": snap(int(20 * t), 0)}
        assert g.step(ledger, demand, {"a": lag, "b": lag}) == {}


def test_fitted_slope():
    assert fitted_slope([(0.0, 1.0), (1.0, 1.5), (2.0, 2.0)]) == 0.5
    assert fitted_slope([(3.0, 1.0), (3.0, 2.0)]) == 0.0


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


def simulate(
    streams: int,
    capacity_fps: float,
    steps: int,
    *,
    decoder: bool = True,
    recover_at: int | None = None,
    seed: int = 1,
    delay: int = 1,
) -> tuple[ShareGovernor, list[float], list[float], list[float | None]]:
    """``streams`` 30 fps cameras through the real governor on a 1 s clock.  ``decoder``:
    the limit is a shared decoder, whose load is the sum of the shares in effect (streams
    below their rate decode only what they use); else a network link, which must carry every
    frame whatever the share.  A new share takes effect ``delay`` intervals after the one in
    which it is sent (0: the next interval; a keyframe later).  The lag grows by the unserved fraction of each second, shrinks by the
    spare one; each stream reports it with +-0.05 s of jitter while over the 1 s limit.
    From ``recover_at`` on the capacity is ample.  Returns the governor, served fps, lag and
    the share in force per step."""
    rng = random.Random(seed)
    clock = Clock()
    g = ShareGovernor(interval_s=1.0, clock=clock)
    ids = [f"s{i}" for i in range(streams)]
    demand: dict[str, float | None] = dict.fromkeys(ids, 30.0)
    pipe: list[float | None] = [None] * (delay + 1)  # shares sent, oldest first
    lag, announced = 0.0, 0.0
    served_log, lag_log, share_log = [], [], []
    for step in range(1, steps + 1):
        clock.t = float(step)
        cap = capacity_fps if recover_at is None or step < recover_at else 10 * capacity_fps
        in_force = pipe[0]
        share = min(30.0, in_force or 30.0)
        wanted = streams * (share if decoder else 30.0)
        served = min(wanted, cap)
        lag = max(0.0, lag + (wanted - served) / wanted - (cap - served) / wanted)
        announced += min(served, streams * share) / streams
        lags = {s: lag + rng.uniform(-0.05, 0.05) for s in ids} if lag > 1.0 else {}
        ledger = {s: snap(int(announced), 0) for s in ids}
        changed = g.step(ledger, demand, lags)
        sent = changed["s0"] if changed else pipe[-1]
        pipe = [*pipe[1:], sent]
        served_log.append(served)
        lag_log.append(lag)
        share_log.append(in_force)
    return g, served_log, lag_log, share_log


@pytest.mark.parametrize("delay", [0, 1, 2])
def test_a_decoder_at_twice_its_load_settles_near_its_rate_with_lags_bounded(delay):
    g, served, lags, _ = simulate(256, 4000.0, 150, delay=delay)
    assert g.controller.limiting, "a decoder behind real time must limit the streams"
    late = served[-60:]
    assert sum(late) / len(late) >= 0.85 * 4000, late
    assert max(lags[-60:]) < 4.0, lags[-60:]
    assert g.controller.futile_cuts == 0, "every cut helped"


@pytest.mark.parametrize("delay", [0, 1, 2])
def test_a_decoder_five_per_cent_over_is_caught(delay):
    g, _, lags, shares = simulate(64, 0.95 * 64 * 30, 200, delay=delay)
    assert any(s is not None for s in shares), "a 5 % overload must be cut for"
    assert max(lags[-60:]) < 4.0, f"the lag must stay bounded: {lags[-60:]}"
    assert g.controller.futile_cuts == 0


def test_a_network_slowdown_is_not_shed_for_decode_and_the_share_recovers():
    """Every camera's link carries 80 % of real time for 80 s: lags grow everywhere, but a
    cut does not slow them, so it is undone; the share never ratchets down."""
    g, _, _, shares = simulate(64, 0.8 * 64 * 30, 160, decoder=False, recover_at=80)
    assert g.controller.futile_cuts >= 1
    cut = [s for s in shares[:80] if s is not None]
    assert min(cut, default=30.0) >= 0.8 * 30 * 0.9 * 0.95, f"ratcheted: {min(cut)}"
    assert len(cut) <= 0.25 * 80, f"limited {len(cut)} of 80 s for a network slowdown"
    assert shares[-1] is None, "released after the link recovers"


def test_streams_hear_when_their_shares_come_from_a_decoder_cut():
    """The flag that makes streams decode GOP heads goes with the shares of a decoder cut, to
    every stream (even one whose target did not move), and is withdrawn with it."""
    g, _, _, _ = simulate(64, 0.5 * 64 * 30, 12)
    assert g.decoder_bound and g.controller.decoder_limited
    clock = Clock()
    g = ShareGovernor(interval_s=1.0, clock=clock)
    demand = {"a": 30.0, "b": 30.0}
    clock.t = 1.0
    g.step({"a": snap(0, 0), "b": snap(0, 0)}, demand)
    clock.t = 2.0
    changed = g.step({"a": snap(30, 20), "b": snap(30, 20)}, demand)  # inference drops
    assert changed and not g.decoder_bound, "an inference cut is not a decoder cut"


def test_the_decoder_flag_reaches_streams_whose_target_did_not_move():
    clock = Clock()
    g = ShareGovernor(interval_s=1.0, clock=clock)
    demand = {"a": 30.0, "b": 30.0}
    g.sent = {"a": 12.0, "b": 12.0}  # targets already sent
    g.controller.capacity, g.controller.targets = 24.0, {"a": 12.0, "b": 12.0}
    g.controller.decoder_limited = True  # as after a decoder cut at the same level
    g.controller.alpha = 0.0  # the capacity holds still: no target moves
    clock.t = 1.0
    changed = g.step({"a": snap(12, 0), "b": snap(12, 0)}, demand)
    assert g.decoder_bound and changed == {"a": 12.0, "b": 12.0}, changed
    g.controller.decoder_limited = False  # as after an inference cut at the same level
    clock.t = 2.0
    changed = g.step({"a": snap(24, 0), "b": snap(24, 0)}, demand)
    assert not g.decoder_bound and changed == {"a": 12.0, "b": 12.0}, "withdrawn from all"


def test_a_pause_drops_a_pending_judgement():
    clock = Clock()
    g = ShareGovernor(interval_s=1.0, clock=clock)
    g.controller._probe = object()  # type: ignore[assignment]
    g.pause()
    assert g.controller._probe is None


def test_lags_of_streams_gone_are_forgotten():
    clock = Clock()
    g = ShareGovernor(interval_s=1.0, clock=clock)
    for t in (1.0, 2.0):
        clock.t = t
        g.step({"a": snap(0, 0), "b": snap(0, 0)}, {"a": 30.0, "b": 30.0}, {"a": 1.5, "b": 1.5})
    clock.t = 3.0
    g.step({"a": snap(0, 0)}, {"a": 30.0}, {"a": 1.5})
    assert set(g._lags) == {"a"}


def test_a_restarted_ingest_process_gets_its_streams_targets_again():
    clock = Clock()
    g = ShareGovernor(interval_s=1.0, clock=clock)
    demand = {"a": 30.0, "b": 30.0}
    g.sent = {"a": 12.0, "b": 12.0}
    g.controller.capacity, g.controller.targets = 24.0, {"a": 12.0, "b": 12.0}
    g.controller.alpha = 0.0  # the capacity holds still
    g.forget(["a"])  # its reader starts afresh, with no share
    clock.t = 1.0
    changed = g.step({"a": snap(12, 0), "b": snap(12, 0)}, demand)
    assert changed == {"a": 12.0}, changed
