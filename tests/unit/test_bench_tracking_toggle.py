"""bench/tracking_toggle.py's verdicts: what it calls shown, broken or undecided."""

from __future__ import annotations

import math
import statistics

import pytest

from bench.tracking_toggle import check_mode, entries_added, interval, orders, summarise, verdict


def test_interval_is_the_geometric_mean_and_its_t_interval_on_logarithms():
    logs = [math.log(0.9), math.log(1.0), math.log(1.1)]
    mean, sd = statistics.fmean(logs), statistics.stdev(logs)
    half = 4.302653 * sd / math.sqrt(3)  # t(0.975, 2 degrees of freedom)
    got = interval([0.9, 1.0, 1.1])
    assert got == pytest.approx((math.exp(mean), math.exp(mean - half), math.exp(mean + half)))
    assert got[0] < 1.0  # below the arithmetic mean: a ratio and its inverse weigh the same


def test_orders_put_every_mode_in_every_position_once_per_round_of_cycles():
    got = orders(["off", "on", "appearance"], 6, seed=3)
    assert all(sorted(o) == ["appearance", "off", "on"] for o in got)
    for position in range(3):
        assert sorted(o[position] for o in got[:3]) == ["appearance", "off", "on"]
    assert got[3:] == got[:3]


def test_check_mode_needs_a_stream_that_can_tell_and_track_ids_as_the_mode_says():
    check_mode({"a": True, "b": None}, "on", "now")
    check_mode({"a": False}, "off", "now")
    with pytest.raises(RuntimeError, match=r"not in effect on \['b'\]"):
        check_mode({"a": True, "b": False}, "appearance", "now")
    with pytest.raises(RuntimeError, match="no stream had detections"):
        check_mode({"a": None}, "off", "now")


@pytest.mark.parametrize(
    ("low", "high", "bound", "worse_up", "want"),
    [
        (0.96, 1.04, 0.95, False, "shown"),  # frames/s: the whole interval above 0.95
        (0.95, 1.04, 0.95, False, "shown"),  # at the bound: within it
        (0.90, 0.95, 0.95, False, "undecided"),  # reaching the bound: not wholly past it
        (0.93, 1.04, 0.95, False, "undecided"),
        (0.88, 0.94, 0.95, False, "broken"),
        (0.98, 1.04, 1.05, True, "shown"),  # CPU per frame: the whole interval below 1.05
        (0.98, 1.05, 1.05, True, "shown"),  # at the bound: within it
        (0.98, 1.07, 1.05, True, "undecided"),
        (1.06, 1.10, 1.05, True, "broken"),
    ],
)
def test_verdict(low, high, bound, worse_up, want):
    assert verdict(low, high, bound, worse_up) == want


def test_summarise_pairs_each_mode_with_the_untracked_run_of_its_own_cycle():
    rows = [
        {"cycle": 0, "mode": "off", "fps": 100.0, "cpu_ms_per_frame": 20.0},
        {"cycle": 0, "mode": "on", "fps": 99.0, "cpu_ms_per_frame": 20.2},
        {"cycle": 1, "mode": "off", "fps": 200.0, "cpu_ms_per_frame": 10.0},  # a faster cycle
        {"cycle": 1, "mode": "on", "fps": 198.0, "cpu_ms_per_frame": 10.1},
        {"cycle": 2, "mode": "on", "fps": 50.0, "cpu_ms_per_frame": 40.0},  # no baseline: out
    ]
    out = summarise(rows, ["off", "on"])
    fps = out["fps_on_vs_off"]
    assert fps["ratios"] == [0.99, 0.99] and fps["mean"] == pytest.approx(0.99)
    assert fps["verdict"] == "shown"  # no spread: the interval is the mean
    assert out["cpu_ms_per_frame_on_vs_off"]["ratios"] == [1.01, 1.01]


def test_a_window_that_published_nothing_breaks_the_frames_bound_without_a_log_error():
    rows = [
        {"cycle": c, "mode": m, "fps": f, "cpu_ms_per_frame": 20.0}
        for c, (off, on) in enumerate([(100.0, 0.0), (100.0, 99.0)])
        for m, f in (("off", off), ("on", on))
    ]
    out = summarise(rows, ["off", "on"])
    assert out["fps_on_vs_off"] == {"ratios": [0.0, 0.99], "verdict": "broken"}


def test_entries_added_counts_every_entry_ever_added_even_when_trimmed(redis_client, key_prefix):
    from visionflow.schema import detections_key

    for sid, n in (("a", 5), ("b", 3)):
        for i in range(n):
            redis_client.xadd(
                detections_key(key_prefix, sid), {"i": i}, maxlen=2, approximate=False
            )
    assert redis_client.xlen(detections_key(key_prefix, "a")) == 2  # trimmed
    assert entries_added(redis_client, key_prefix, ["a", "b"]) == 8


def test_each_process_share_is_its_difference_from_untracked_in_the_same_cycle():
    def row(cycle, mode, output, inference):
        return {
            "cycle": cycle,
            "mode": mode,
            "fps": 100.0,
            "cpu_ms_per_frame": output + inference,
            "cpu_ms_per_frame.output": output,
            "cpu_ms_per_frame.inference-0": inference,
        }

    rows = [row(0, "off", 0.5, 20.0), row(0, "on", 1.0, 20.0)]
    rows += [row(1, "off", 0.7, 30.0), row(1, "on", 1.3, 30.5)]  # a slower cycle
    out = summarise(rows, ["off", "on"])
    output = out["cpu_ms_per_frame.output_on_minus_off"]
    assert output["mean"] == pytest.approx(0.55)  # 0.5 and 0.6, not 1.15 - 0.6
    low, high = output["ci95"]
    assert low < 0.55 < high
    assert out["cpu_ms_per_frame.inference-0_on_minus_off"]["mean"] == pytest.approx(0.25)
    assert "verdict" not in output  # a share, not a bound
