"""The fair-share controller against a simulated overloaded pipeline."""

from __future__ import annotations

import itertools
import math

import pytest

from visionflow.pipeline.share import FairShareController, StreamLoad, max_min_fair, water_level


def simulate(
    controller: FairShareController,
    demands: dict[str, float],
    capacity: float,
    steps: int,
    *,
    declare_demand: bool = True,
) -> list[dict[str, float]]:
    """Each step: streams offer min(demand, target); inference serves ``capacity`` frames/s
    round-robin by stream (max-min fair); the excess is dropped as inference_behind."""
    targets: dict[str, float | None] = dict(controller.targets)  # a phase goes on from the last
    served_log = []
    for _ in range(steps):
        offered = {s: min(d, targets.get(s) or math.inf) for s, d in demands.items()}
        served = max_min_fair(capacity, offered)
        loads = [
            StreamLoad(
                s,
                offered[s],
                offered[s] - served[s],
                demands[s] if declare_demand else None,
            )
            for s in demands
        ]
        targets = controller.update(loads, saturated=sum(offered.values()) > capacity)
        served_log.append(served)
    return served_log


def test_water_level_and_max_min_fair():
    assert water_level(30, {"a": 25, "b": 25, "c": 2}) == pytest.approx(14)
    assert max_min_fair(30, {"a": 25, "b": 25, "c": 2}) == {"a": 14, "b": 14, "c": 2}
    assert water_level(100, {"a": 25, "b": 25}) == math.inf
    assert water_level(10, {"a": math.inf, "b": math.inf}) == 5


@pytest.mark.parametrize("declare_demand", [True, False])
def test_converges_to_the_fair_share_under_overload(declare_demand):
    demands = {"a": 25.0, "b": 25.0, "c": 25.0, "d": 10.0, "e": 2.0}
    capacity = 30.0
    fair = max_min_fair(capacity, demands)  # a-d: 7, e: 2
    controller = FairShareController()
    log = simulate(controller, demands, capacity, 80, declare_demand=declare_demand)
    for served in log[40:]:  # steady state
        for s, share in fair.items():
            assert served[s] == pytest.approx(share, rel=0.2), (s, served)
        assert sum(served.values()) >= 0.85 * capacity
    # in steady state almost nothing is dropped after decode: the controller sheds it before
    targets: dict[str, float | None] = controller.targets
    offered = {s: min(d, targets[s] or math.inf) for s, d in demands.items()}
    drops = sum(offered.values()) - capacity
    assert drops <= 0.15 * capacity


def test_releases_the_limit_when_load_drops():
    demands = {f"s{i}": 25.0 for i in range(10)}
    controller = FairShareController(release_after=5)
    simulate(controller, demands, 30.0, 30)
    assert controller.limiting and all(t is not None for t in controller.targets.values())
    # the load falls: every stream now needs 1 fps, well within capacity
    small = {s: 1.0 for s in demands}
    simulate(controller, small, 30.0, 40)
    assert not controller.limiting
    assert all(t is None for t in controller.targets.values())


def test_releases_when_capacity_grows_even_without_declared_demand():
    demands = {f"s{i}": 10.0 for i in range(4)}
    controller = FairShareController()
    simulate(controller, demands, 20.0, 30, declare_demand=False)
    assert controller.limiting
    simulate(controller, demands, 100.0, 200, declare_demand=False)
    assert not controller.limiting


def test_never_below_the_floor():
    demands = {f"s{i}": 25.0 for i in range(20)}
    controller = FairShareController(floor_fps=0.2)
    simulate(controller, demands, 1.0, 50)
    assert all(t is not None and t >= 0.2 for t in controller.targets.values())


def test_no_streams_no_targets():
    assert FairShareController().update([], saturated=True) == {}


def test_a_warm_up_that_served_nothing_does_not_leave_the_pipeline_throttled():
    """Seen on the GPU: engines warming up drop everything for a few seconds; the capacity
    estimate must come back to the real capacity within seconds, not minutes."""
    demands = {f"s{i}": 30.0 for i in range(32)}
    controller = FairShareController()
    simulate(controller, demands, 0.0, 3)  # nothing served while the engine loads
    # from the floor (0.2 fps a stream) at 20 % an interval: 6.4 -> 600 in 25 intervals
    log = simulate(controller, demands, 600.0, 30)
    assert sum(log[-1].values()) >= 0.85 * 600, sum(log[-1].values())


def test_a_transient_after_steady_state_recovers_to_the_recent_peak_at_once():
    demands = {f"s{i}": 30.0 for i in range(40)}
    controller = FairShareController()
    simulate(controller, demands, 600.0, 30)
    simulate(controller, demands, 20.0, 2)  # a worker restarts
    log = simulate(controller, demands, 600.0, 3)
    assert sum(log[-1].values()) >= 0.8 * 600, sum(log[-1].values())


def test_one_stream_falling_behind_is_not_a_shared_decoder():
    c = FairShareController()
    loads = [StreamLoad(f"s{i}", 30.0, 0.0, 30.0) for i in range(7)]
    loads.append(StreamLoad("slow", 12.0, 0.0, 30.0, falling_behind=True))
    assert c.update(loads, saturated=False) == dict.fromkeys([s.stream_id for s in loads])
    assert not c.limiting


def test_streams_catching_up_hold_the_share_where_it_is():
    c = FairShareController()
    behind = [StreamLoad(f"s{i}", 20.0, 0.0, 30.0, falling_behind=True) for i in range(4)]
    first = c.update(behind, saturated=False)["s0"]
    assert first is not None and first < 20
    catching_up = [StreamLoad(f"s{i}", first, 0.0, 30.0, catching_up=True) for i in range(4)]
    for _ in range(5):
        assert c.update(catching_up, saturated=False)["s0"] == first, "no growth while lagging"
    caught_up = [StreamLoad(f"s{i}", first, 0.0, 30.0) for i in range(4)]
    grown = c.update(caught_up, saturated=False)["s0"]
    assert grown is not None and grown > first


def test_one_of_two_streams_falling_behind_is_not_a_shared_decoder():
    c = FairShareController()
    loads = [
        StreamLoad("ok", 25.0, 0.0, 25.0),
        StreamLoad("slow", 12.0, 0.0, 25.0, falling_behind=True),
    ]
    assert c.update(loads, saturated=False) == {"ok": None, "slow": None}


def test_a_decoder_cut_is_held_while_the_new_share_takes_effect():
    c = FairShareController(decoder_hold=3)
    behind = [StreamLoad(f"s{i}", 20.0, 0.0, 30.0, falling_behind=True) for i in range(4)]
    cut = c.update(behind, saturated=False)["s0"]
    assert cut is not None
    for _ in range(3):  # still falling behind: the streams reach their next keyframe first
        assert c.update(behind, saturated=False)["s0"] == cut
    assert (c.update(behind, saturated=False)["s0"] or 0) < cut, "then it cuts again"


def test_a_decoder_cut_that_did_not_slow_the_lags_is_undone_and_lags_are_ignored_a_while():
    """Lags that keep growing at the rate they grew when cut (a site-wide network slowdown:
    decoding less does not read packets faster): the cut is undone, no cut follows."""
    c = FairShareController(decoder_hold=4, decoder_distrust=30)
    behind = [
        StreamLoad(f"s{i}", 20.0, 0.0, 30.0, falling_behind=True, lag_slope=0.3) for i in range(4)
    ]
    assert c.update(behind, saturated=False)["s0"] is not None
    for _ in range(4):  # held; then judged: the slope did not move
        c.update(behind, saturated=False)
    assert c.futile_cuts == 1 and not c.limiting, "a futile cut must be undone"
    for _ in range(29):
        assert c.update(behind, saturated=False)["s0"] is None, "no cut while distrusted"
    assert c.update(behind, saturated=False)["s0"] is not None, "then lags are read again"


def test_a_held_decoder_cut_does_not_grow_back_before_it_is_judged():
    """Right after a cut the lag fits mix growth and catching up: slopes between the
    thresholds (neither falling nor catching up) must not let the capacity grow back."""
    c = FairShareController(decoder_hold=4)
    falling = [
        StreamLoad(f"s{i}", 20.0, 0.0, 30.0, falling_behind=True, lag_slope=0.3) for i in range(4)
    ]
    cut = c.update(falling, saturated=False)["s0"]
    assert c.decoder_limited
    mixed = [StreamLoad(f"s{i}", 18.0, 0.0, 30.0, lag_slope=0.01) for i in range(4)]
    for _ in range(3):
        assert c.update(mixed, saturated=False)["s0"] == cut, "grew during the hold"
    c.update(mixed, saturated=False)  # judged
    assert c.futile_cuts == 0, "the lags slowed from 0.3 to 0.01 s/s: the cut helped"


def test_futile_cuts_in_a_row_are_distrusted_longer_each_time():
    c = FairShareController(decoder_hold=1, decoder_distrust=3, max_distrust=8)
    falling = [
        StreamLoad(f"s{i}", 20.0, 0.0, 30.0, falling_behind=True, lag_slope=0.3) for i in range(4)
    ]
    cut_at = [i for i in range(40) if c.update(falling, saturated=False)["s0"] is not None]
    # a cut, judged futile at once, then 3, 6 and 8 (the cap) intervals without one
    gaps = [b - a for a, b in itertools.pairwise(cut_at)]
    assert gaps[:4] == [4, 7, 9, 9], cut_at
    assert c.futile_cuts == len(cut_at)


def test_the_distrust_backoff_decays_once_the_slowdown_is_over():
    c = FairShareController(decoder_hold=1, decoder_distrust=3, max_distrust=8)
    falling = [
        StreamLoad(f"s{i}", 20.0, 0.0, 30.0, falling_behind=True, lag_slope=0.3) for i in range(4)
    ]
    for _ in range(100):  # futile cuts in a row, until one leaves distrust at its cap
        c.update(falling, saturated=False)
        if c._distrusted > 0 and c._distrust_next == c.max_distrust:
            break
    assert c._distrust_next == c.max_distrust
    quiet = [StreamLoad(f"s{i}", 30.0, 0.0, 30.0) for i in range(4)]
    for _ in range(20):  # the slowdown is over
        c.update(quiet, saturated=False)
    futile = c.futile_cuts
    cut_at = [i for i in range(12) if c.update(falling, saturated=False)["s0"] is not None]
    assert c.futile_cuts > futile and cut_at[:2] == [0, 4], f"back to 3, not 8: {cut_at}"


def test_a_pause_leaves_a_pending_cut_unjudged_and_its_distrust_untouched():
    c = FairShareController(decoder_hold=4)
    falling = [
        StreamLoad(f"s{i}", 20.0, 0.0, 30.0, falling_behind=True, lag_slope=0.3) for i in range(4)
    ]
    c._distrust_next = 60  # as after a futile cut: a 'helped' judgement would reset it
    cut = c.update(falling, saturated=False)["s0"]
    c.forget_pending_cut()  # the governor paused: the slopes are gone
    unknown = [StreamLoad(f"s{i}", 20.0, 0.0, 30.0) for i in range(4)]
    for _ in range(4):
        c.update(unknown, saturated=False)
    assert c.futile_cuts == 0 and cut is not None
    assert c._distrusted == 0, "an unjudged cut must not stop the next one"
    assert c._distrust_next == 60, "an unjudged cut is not a helpful one"


def test_streams_gone_forget_a_pending_judgement():
    c = FairShareController(decoder_hold=4)
    falling = [
        StreamLoad(f"s{i}", 20.0, 0.0, 30.0, falling_behind=True, lag_slope=0.3) for i in range(4)
    ]
    c.update(falling, saturated=False)
    c.update([], saturated=False)
    c.update(falling, saturated=False)
    assert c.decoder_cuts == 2, "the old cut's hold outlived its streams"
    c.update([], saturated=False)
    still = [StreamLoad(f"s{i}", 20.0, 0.0, 30.0) for i in range(4)]
    for _ in range(5):
        assert c.update(still, saturated=False)["s0"] is None, "an old cut came back"


def test_an_inference_cut_below_a_decoder_cut_keeps_the_streams_on_gop_heads():
    """On a CPU box decode and inference share the cores: drops after a decoder cut must not
    bring back decode-all (measured ad hoc, 40 streams on 2 cores: 1.3x the frames published
    with the flag kept). A release clears it."""
    c = FairShareController(decoder_hold=1, release_after=2)
    falling = [
        StreamLoad(f"s{i}", 20.0, 0.0, 30.0, falling_behind=True, lag_slope=0.3) for i in range(4)
    ]
    c.update(falling, saturated=False)
    assert c.decoder_limited
    dropping = [StreamLoad(f"s{i}", 18.0, 6.0, 30.0, lag_slope=-0.2) for i in range(4)]
    c.update(dropping, saturated=False)
    assert c.inference_cuts == 1 and c.decoder_limited, "the inference cut cleared the flag"
    light = [StreamLoad(f"s{i}", 5.0, 0.0, 5.0) for i in range(4)]  # demand below the share
    for _ in range(3):
        c.update(light, saturated=False)
    assert not c.limiting and not c.decoder_limited


def test_a_decoder_cut_that_slowed_the_lags_stays():
    c = FairShareController(decoder_hold=4)
    falling = [
        StreamLoad(f"s{i}", 20.0, 0.0, 30.0, falling_behind=True, lag_slope=0.3) for i in range(4)
    ]
    cut = c.update(falling, saturated=False)["s0"]
    slower = [
        StreamLoad(f"s{i}", 18.0, 0.0, 30.0, catching_up=True, lag_slope=-0.2) for i in range(4)
    ]
    for _ in range(4):
        assert c.update(slower, saturated=False)["s0"] == cut
    assert c.futile_cuts == 0 and c.limiting


def test_a_lag_that_holds_still_neither_cuts_nor_holds_a_share():
    """Streams behind by a lag that no longer moves (a camera clock drifting slow for hours):
    after an inference cut the share grows back and is released as usual."""
    c = FairShareController()
    loads = [StreamLoad(f"s{i}", 30.0, 10.0, 30.0) for i in range(8)]  # inference drops
    assert c.update(loads, saturated=False)["s0"] is not None
    still = [StreamLoad(f"s{i}", 20.0, 0.0, 30.0) for i in range(8)]  # behind, not moving
    for _ in range(60):
        c.update(still, saturated=False)
    assert not c.limiting, "a still lag must not freeze the share"


def test_the_capacity_does_not_run_away_while_the_streams_cannot_use_it():
    """Seen on a GPU: decoders that deliver less than their targets, with no drops and no lag
    signal, let the capacity grow 1.2x a second to 2.3x what was served; the next overload
    then started from there.  Streams that do not use their targets hold the capacity (it
    grows once every release_after intervals, so a limit nobody uses is still released)."""
    demands = {f"s{i}": 30.0 for i in range(100)}
    c = FairShareController(release_after=5)
    simulate(c, demands, 1000.0, 20)  # limited: the inference capacity binds
    before = c.capacity
    assert before is not None and before < 1200
    seen = []
    for _ in range(12):  # the decoders deliver 8 fps each, whatever they are allowed
        loads = [StreamLoad(s, min(8.0, c.targets[s] or math.inf), 0.0, 30.0) for s in demands]
        c.update(loads, saturated=False)
        seen.append(c.capacity)
    # every interval: 1.2 ** 12 = 8.9x (the old rule: 2.6x, then released); held: two steps
    assert all(x is not None for x in seen), "released while the streams were still held"
    assert max(x or 0.0 for x in seen) <= 1.2**2 * before * 1.01, seen
    for _ in range(60):
        loads = [StreamLoad(s, min(8.0, c.targets[s] or math.inf), 0.0, 30.0) for s in demands]
        c.update(loads, saturated=False)
    assert not c.limiting, "a limit no stream uses is released in the end"


def test_a_stall_that_offers_nothing_does_not_grow_the_capacity():
    """Nothing offered and nothing dropped (every reader stalled): no evidence of room, so
    the capacity holds however long it lasts (not once every release_after intervals), and
    the limit is still there when the streams come back."""
    demands = {f"s{i}": 30.0 for i in range(50)}
    c = FairShareController(release_after=5)
    simulate(c, demands, 600.0, 20)
    before = c.capacity
    assert before is not None
    for _ in range(30):
        c.update([StreamLoad(s, 0.0, 0.0, 30.0) for s in demands], saturated=False)
        assert c.capacity is not None and c.capacity <= before * 1.01, (before, c.capacity)


def test_streams_asking_little_do_not_slow_the_growth_for_the_others():
    """Streams whose demand is below the water level offer their demand, not their target:
    they are not held, so they must not count as not using it (a review found the capacity
    taking 36 steps instead of 5 to grow back with 60 of 100 streams at 5 fps)."""
    demands = {**{f"low{i}": 5.0 for i in range(60)}, **{f"hi{i}": 30.0 for i in range(40)}}
    c = FairShareController()
    simulate(c, demands, 1000.0, 60)  # overloaded: 1,500 asked
    simulate(c, demands, 300.0, 20)  # the card slower for a while (another tenant)
    # fast again: all 1,500 asked fit (the 60 streams at 5 fps counted as not using their
    # target: growth once every 5 intervals, ~45 to get there)
    log = simulate(c, demands, 1600.0, 8)
    assert sum(log[-1].values()) >= 0.95 * 1500, [round(sum(x.values())) for x in log]


def test_streams_that_offer_nothing_do_not_stop_the_capacity_growing_for_the_others():
    """Most streams reconnecting (offering nothing, demand still declared) must not freeze the
    capacity: the live streams grow into what the card serves."""
    demands = {f"s{i}": 30.0 for i in range(50)}
    dead = {f"s{i}" for i in range(30)}
    c = FairShareController()
    simulate(c, demands, 300.0, 10)  # a slow phase: capacity cut low
    served: list[float] = []
    for _ in range(20):  # the card is faster again: 1,000 frames/s
        offered = {
            s: 0.0 if s in dead else min(30.0, c.targets.get(s) or math.inf) for s in demands
        }
        got = max_min_fair(1000.0, offered)
        loads = [StreamLoad(s, offered[s], offered[s] - got[s], 30.0) for s in demands]
        c.update(loads, saturated=sum(offered.values()) > 1000.0)
        served.append(sum(got.values()))
    assert sum(served[-5:]) / 5 >= 0.95 * 20 * 30, served[-5:]  # every live stream whole
