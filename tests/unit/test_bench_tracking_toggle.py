"""bench/tracking_toggle.py's verdicts: what it calls shown, broken or undecided."""

from __future__ import annotations

import pytest

from bench.tracking_toggle import interval, summarise, verdict


def test_interval_is_the_mean_and_its_t_interval():
    mean, low, high = interval([0.9, 1.0, 1.1])
    assert mean == pytest.approx(1.0)
    assert (low, high) == pytest.approx((1.0 - 0.2484, 1.0 + 0.2484), abs=1e-3)  # t(0.975, 2)


@pytest.mark.parametrize(
    ("low", "high", "bound", "worse_up", "want"),
    [
        (0.96, 1.04, 0.95, False, "shown"),  # frames/s: the whole interval above 0.95
        (0.93, 1.04, 0.95, False, "undecided"),
        (0.88, 0.94, 0.95, False, "broken"),
        (0.98, 1.04, 1.05, True, "shown"),  # CPU per frame: the whole interval below 1.05
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
    assert fps["ratios"] == [0.99, 0.99] and fps["mean"] == 0.99
    assert fps["verdict"] == "shown"  # no spread: the interval is the mean
    assert out["cpu_ms_per_frame_on_vs_off"]["ratios"] == [1.01, 1.01]
