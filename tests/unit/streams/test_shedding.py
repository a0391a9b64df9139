"""The load-shedding policy: decode modes, the GOP prefix gate, the frame gate, hysteresis."""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

import pytest

from visionflow.streams.shedding import NO_MODES, PACKET_MODES, ShedPolicy


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


@dataclass
class Run:
    decoded: list[float] = field(default_factory=list)  # packet times given to the decoder
    used: list[float] = field(default_factory=list)
    modes: list[str] = field(default_factory=list)
    broken_refs: int = 0  # non-key packets decoded after a packet of their GOP was skipped


def feed(
    policy: ShedPolicy,
    clock: Clock,
    seconds: float,
    *,
    fps: int = 25,
    gop: int = 25,
    b_every: int = 0,
    start: float = 0.0,
    share: object = None,
) -> Run:
    """A live camera: ``fps`` frames/s, a keyframe every ``gop`` frames, pts = arrival time."""
    run, gap = Run(), False
    for i in range(int(seconds * fps)):
        t = start + i / fps
        clock.t = 100.0 + t
        if callable(share):
            policy.set_share(share(t))
        key = i % gop == 0
        b = bool(b_every) and not key and i % b_every == 0
        if policy.packet(t, key):
            if not key and gap:
                run.broken_refs += 1
            gap = False if key else gap
            run.decoded.append(t)
            skipped_by_decoder = (policy.mode == "nonkey" and not key) or (
                policy.mode == "nonref" and b
            )
            if not skipped_by_decoder and policy.frame(t, b):
                run.used.append(t)
        else:
            gap = True
        if not run.modes or run.modes[-1] != policy.mode:
            run.modes.append(policy.mode)
    return run


def rate(times: list[float], after: float) -> float:
    kept = [t for t in times if t >= after]
    return (len(kept) - 1) / (kept[-1] - kept[0]) if len(kept) > 1 else 0.0


def test_no_target_decodes_and_uses_every_frame():
    clock = Clock()
    policy = ShedPolicy(clock=clock)
    run = feed(policy, clock, 6)
    assert len(run.decoded) == len(run.used) == 150
    assert run.modes == ["all"] and policy.skipped == policy.packets_skipped == 0
    assert policy.source_fps == pytest.approx(25, rel=0.01)
    assert policy.key_rate == pytest.approx(1, rel=0.01)


def test_target_at_keyframe_rate_decodes_keyframes_only():
    clock = Clock()
    policy = ShedPolicy(1.0, clock=clock)
    run = feed(policy, clock, 20)
    assert run.modes == ["all", "nonkey"]
    steady = [t for t in run.decoded if t >= 5]
    assert all(round(t * 25) % 25 == 0 for t in steady), "only keyframes reach the decoder"
    assert rate(run.used, 5) == pytest.approx(1.0, rel=0.05)
    assert policy.effective_fps() == pytest.approx(1.0, rel=0.25)
    assert run.broken_refs == 0
    assert policy.packets_skipped > 15 * 24


def test_target_below_keyframe_rate_feeds_only_the_keyframes_it_uses():
    clock = Clock()
    policy = ShedPolicy(0.2, clock=clock)
    run = feed(policy, clock, 40)
    steady_decoded = [t for t in run.decoded if t >= 10]
    assert len(steady_decoded) <= 7  # ~ one keyframe in five over 30 s
    assert rate(run.used, 10) == pytest.approx(0.2, rel=0.1)


def test_between_keyframe_and_frame_rate_keeps_frames_evenly_and_skips_gop_tails():
    clock = Clock()
    policy = ShedPolicy(5.0, clock=clock, prefix_ratio=0)  # even spacing asked for
    run = feed(policy, clock, 20)
    assert run.modes == ["all"]
    used = [t for t in run.used if t >= 5]
    assert rate(used, 5) == pytest.approx(5.0, rel=0.05)
    gaps = [b - a for a, b in itertools.pairwise(used)]
    assert max(gaps) <= 0.2 + 0.04 + 1e-9 and min(gaps) >= 0.2 - 0.04 - 1e-9
    assert policy.packets_skipped > 0, "the tail of each GOP is not decoded"
    assert run.broken_refs == 0, "a GOP never reopens after a skipped packet"


def test_b_frames_select_nonref_when_reference_frames_suffice():
    clock = Clock()
    policy = ShedPolicy(6.0, clock=clock)
    run = feed(policy, clock, 20, b_every=2)  # every other frame a B-frame
    assert run.modes[-1] == "nonref"
    assert rate(run.used, 8) == pytest.approx(6.0, rel=0.1)


def test_modes_do_not_flap_while_the_share_wobbles_around_the_threshold():
    clock = Clock()
    policy = ShedPolicy(clock=clock)
    # the share swings +-15% around the nonkey threshold (1.2 x keyframe rate) every second
    run = feed(policy, clock, 60, share=lambda t: 1.2 * (1.15 if int(t) % 2 else 0.85))
    assert len(run.modes) <= 2, run.modes


def test_modes_follow_the_share_down_and_up_with_a_dwell():
    clock = Clock()
    policy = ShedPolicy(clock=clock, min_dwell_s=2.0)
    run = feed(policy, clock, 30, share=lambda t: 0.5 if t < 15 else None)
    assert run.modes == ["all", "nonkey", "all"]
    assert rate(run.used, 20) == pytest.approx(25, rel=0.05)
    assert run.broken_refs == 0


def test_without_decode_modes_every_packet_is_decoded_but_the_frame_gate_applies():
    clock = Clock()
    policy = ShedPolicy(2.0, modes=NO_MODES, clock=clock)
    run = feed(policy, clock, 10)
    assert len(run.decoded) == 250 and run.modes == ["all"]
    assert rate(run.used, 3) == pytest.approx(2.0, rel=0.05)
    assert policy.skipped == 250 - len(run.used)


def test_packet_modes_shed_before_the_decoder_without_skip_frame():
    """NVDEC's modes: half the source rate decodes each GOP's prefix, never cutting a
    reference chain; a B-frame stream never gets ``nonref`` (it needs FFmpeg's skip_frame)."""
    clock = Clock()
    policy = ShedPolicy(12.0, modes=PACKET_MODES, clock=clock)
    run = feed(policy, clock, 20)
    assert run.modes[-1] == "prefix"
    steady = [t for t in run.decoded if t >= 8]
    assert len(steady) / 12 == pytest.approx(12.0, rel=0.1), "decode follows the target"
    assert rate(run.used, 8) == pytest.approx(12.0, rel=0.1)
    assert run.broken_refs == 0
    b_stream = ShedPolicy(6.0, modes=PACKET_MODES, clock=clock)
    assert "nonref" not in feed(b_stream, clock, 20, b_every=2, start=1000.0).modes


def test_a_pts_jump_mid_gop_keeps_a_closed_gop_closed():
    """Prefix mode closed the GOP; its timestamps then jump: the rest of that GOP (whose
    references were skipped) still never reaches the decoder, the next keyframe opens."""
    clock = Clock()
    policy = ShedPolicy(12.0, modes=PACKET_MODES, clock=clock)
    feed(policy, clock, 20, fps=30, gop=30)
    assert policy.mode == "prefix"
    t = 20.0
    for i in range(20):  # a GOP: its keyframe and prefix fed, then the gate closes
        clock.t = 100.0 + t + i / 30
        policy.packet(t + i / 30, i == 0)
    fed_after_jump = [policy.packet(1000.0 + i / 30, False) for i in range(10)]
    assert not any(fed_after_jump)
    assert policy.packet(1000.0 + 10 / 30, True), "a keyframe opens the next GOP"


def test_a_pts_jump_restarts_the_measurements():
    clock = Clock()
    policy = ShedPolicy(1.0, clock=clock)
    feed(policy, clock, 10)
    assert policy.mode == "nonkey"
    feed(policy, clock, 1, start=5000.0)
    assert policy.source_fps == pytest.approx(25, rel=0.05)


def test_rejects_non_positive_rates():
    with pytest.raises(ValueError):
        ShedPolicy(0.0)
    with pytest.raises(ValueError):
        ShedPolicy().set_share(-1.0)


def test_prefix_mode_decodes_only_the_frames_it_uses_at_the_start_of_each_gop():
    clock = Clock()
    policy = ShedPolicy(5.0, clock=clock)  # 5 of 25 fps: prefix (the default ratio is 0.5)
    run = feed(policy, clock, 20)
    assert run.modes[-1] == "prefix"
    steady = [t for t in run.decoded if t >= 6]
    used = [t for t in run.used if t >= 6]
    assert rate(used, 6) == pytest.approx(5.0, rel=0.1)
    assert len(steady) == len(used), "every decoded frame is used: none decoded for nothing"
    assert all((t * 25) % 25 < 5 for t in used), "the first five frames of each GOP"
    assert run.broken_refs == 0


def test_a_frame_discarded_after_the_gate_is_not_counted_as_analysed():
    """The fps cap or a full frame pool can still discard a frame the policy kept: the
    analysed rate must not count it (the demo showed 30 analysed fps beside 15 delivered)."""
    clock = Clock()
    policy = ShedPolicy(None, clock=clock)
    for i in range(250):  # 10 s at 25 fps, every other kept frame discarded afterwards
        clock.t = 100.0 + i / 25
        assert policy.frame(i / 25)
        if i % 2:
            policy.not_used()
    assert policy.effective_fps() == pytest.approx(12.5, rel=0.1)
    assert policy.used == 125
