"""bench/tracking_cost.py's comparison: ratios per round, and when it calls two outputs the same."""

from __future__ import annotations

import dataclasses
import math

import pytest

from bench.tracking_cost import CASES, output_digest, summarise
from visionflow.pipeline.frames import Detection, FrameRef, FrameResult, TrackEvent
from visionflow.pipeline.letterbox import letterbox_geometry

LB = letterbox_geometry(640, 360, 320, 320)


def result(stream: str, seq: int, ids: list[int | None], events: tuple = ()) -> FrameResult:
    dets = tuple(Detection(0, "person", 0.9, 0, 0, 10, 10, track_id=i) for i in ids)
    ref = FrameRef(stream, seq, None, 1e9 + seq, 1.0, "p", 0, LB)
    return FrameResult(ref, dets, 1.0, 1.0, 1, 0, 1e9, events=events)


def test_the_digest_tells_which_box_has_which_id_and_every_field_of_an_event():
    a = [result("s0", 0, [1, 2]), result("s1", 0, [1]), result("s0", 1, [2, 1])]
    assert output_digest(a) == output_digest(list(a))
    swapped = [*a[:2], result("s0", 1, [1, 2])]
    assert output_digest(a) != output_digest(swapped)
    other_stream = [result("s0", 0, [1, 2]), result("s2", 0, [1]), a[2]]
    assert output_digest(a) != output_digest(other_stream)
    event = TrackEvent("exit", 2, "person", 1e9, 1, (0.0, 0.0, 1.0, 1.0), zone="z", dwell_s=1.5)
    longer = dataclasses.replace(event, dwell_s=1.6)  # a field beside kind, id, zone and time
    digests = {output_digest([*a[:2], result("s0", 1, [2, 1], (e,))]) for e in (event, longer)}
    assert len(digests) == 2 and output_digest(a) not in digests


def test_summarise_gives_the_geometric_mean_of_each_rounds_ratio_and_whether_outputs_agree():
    def side(us: float, digest: str) -> dict:
        return {case: {"us_per_frame": us, "digest": digest} for case in CASES}

    rounds = [
        {"this": side(50.0, "x"), "baseline": side(100.0, "x")},
        {"baseline": side(200.0, "x"), "this": side(200.0, "x")},
    ]
    rows = summarise(rounds)
    assert [r["case"] for r in rows] == list(CASES)
    assert rows[0]["ratio"] == pytest.approx(math.sqrt(0.5 * 1.0), abs=1e-3)
    assert (rows[0]["ratio_low"], rows[0]["ratio_high"]) == (0.5, 1.0)
    assert rows[0]["same_output"] is True
    rounds[1]["this"]["tracker"]["digest"] = "y"
    assert summarise(rounds)[0]["same_output"] is False
