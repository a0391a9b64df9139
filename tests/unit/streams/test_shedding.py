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


# ---- the decoder behind real time: the decode cap -----------------------------------------
def feed_slow_decoder(
    policy: ShedPolicy,
    clock: Clock,
    seconds: float,
    capacity_fps: float,
    *,
    fps: int = 30,
    gop: int = 30,
    start_pts: float = 0.0,
) -> Run:
    """A live camera whose decoder takes ``1 / capacity_fps`` per decoded packet: packet ``i``
    arrives at ``i / fps`` and is read when the decoder is free (a skipped packet costs
    nothing), so a decoder slower than the camera falls behind real time."""
    run, now, gap = Run(), clock.t - 100.0, False
    for i in range(int(seconds * fps)):
        pts = start_pts + i / fps
        now = max(now, pts)  # live: not before it arrives
        clock.t = 100.0 + now
        key = i % gop == 0
        if policy.packet(pts, key):
            if not key and gap:
                run.broken_refs += 1
            gap = False if key else gap
            now += 1 / capacity_fps
            run.decoded.append(pts)
            if policy.frame(pts):
                run.used.append(pts)
        else:
            gap = True
        run.modes.append(policy.mode)
    return run


def test_lag_is_how_far_behind_real_time_the_stream_is_read() -> None:
    clock = Clock()
    policy = ShedPolicy(None, modes=PACKET_MODES, clock=clock, lag_limit_s=1.0)
    feed_slow_decoder(policy, clock, 30, capacity_fps=18)  # 0.6x real time, no target
    snap = policy.snapshot()
    # 900 packets take 50 s: 20 s behind at the end, the least of the last second ~19.3 s
    assert snap.lag_s == pytest.approx(30 * (30 / 18 - 1), abs=0.8), snap
    assert snap.mode == "all" and not policy.decode_bound  # lagging alone changes nothing
    keeping_up = ShedPolicy(None, modes=PACKET_MODES, clock=Clock(), lag_limit_s=1.0)
    run = feed_slow_decoder(keeping_up, keeping_up._clock, 30, capacity_fps=45)  # type: ignore[arg-type]
    assert len(run.used) == 900 and keeping_up.snapshot().lag_s == pytest.approx(0, abs=0.05)


def test_a_stall_read_back_at_once_returns_to_the_live_edge() -> None:
    clock = Clock()
    policy = ShedPolicy(None, modes=PACKET_MODES, clock=clock, lag_limit_s=1.0)
    for i in range(60):  # on time for two seconds: the live edge
        clock.t = 100.0 + i / 30
        policy.packet(i / 30, i % 30 == 0)
    clock.t += 5.0  # a 5 s stall kept by TCP, then read four times faster than real time
    lags = []
    for i in range(60, 60 + 10 * 30):
        clock.t += 1 / 120
        policy.packet(i / 30, i % 30 == 0)
        lags.append(policy.snapshot().lag_s)
    assert max(lags) > 4.5 and lags[-1] == pytest.approx(0, abs=0.05)


def test_a_decoder_cut_while_lagging_decodes_gop_heads_until_it_is_lifted() -> None:
    clock = Clock()
    # prefix_ratio 0: without the decoder cut, a target of 15 would keep frames evenly spread
    policy = ShedPolicy(None, modes=PACKET_MODES, clock=clock, prefix_ratio=0.0, lag_limit_s=1.0)
    feed_slow_decoder(policy, clock, 10, capacity_fps=18)  # lagging ~4 s
    policy.set_share(15.0, decoder_bound=True)
    run = feed_slow_decoder(policy, clock, 40, capacity_fps=18, start_pts=10.0)
    assert policy.decode_bound and policy.mode == "prefix"
    assert run.broken_refs == 0
    late = [pts for pts in run.decoded if pts >= run.decoded[-1] - 20]  # media time
    assert len(late) / 20 <= 15.5, "prefix decodes only what is used"
    snap = policy.snapshot()
    assert snap.lag_s is not None and snap.lag_s < 0.2, "caught up with the live edge"
    # caught up, still given 15 fps: stays in prefix (sticky), then the target is lifted
    feed_slow_decoder(policy, clock, 5, capacity_fps=18, start_pts=50.0)
    assert policy.mode == "prefix"
    policy.set_share(None)
    feed_slow_decoder(policy, clock, 5, capacity_fps=45, start_pts=55.0)
    assert policy.mode == "all" and not policy.decode_bound


def test_an_inference_cut_after_a_decoder_cut_brings_frames_back_evenly_spread() -> None:
    clock = Clock()
    policy = ShedPolicy(None, modes=PACKET_MODES, clock=clock, prefix_ratio=0.0, lag_limit_s=1.0)
    feed_slow_decoder(policy, clock, 10, capacity_fps=18)
    policy.set_share(15.0, decoder_bound=True)
    feed_slow_decoder(policy, clock, 10, capacity_fps=18, start_pts=10.0)
    assert policy.decode_bound and policy.mode == "prefix"
    policy.set_share(15.0)  # the same share, now from inference drops
    feed_slow_decoder(policy, clock, 5, capacity_fps=45, start_pts=20.0)
    assert not policy.decode_bound and policy.mode == "all"


def test_without_a_lag_limit_a_target_while_lagging_keeps_frames_spread() -> None:
    clock = Clock()
    policy = ShedPolicy(None, modes=PACKET_MODES, clock=clock, prefix_ratio=0.0)
    feed_slow_decoder(policy, clock, 10, capacity_fps=18)
    policy.set_share(15.0, decoder_bound=True)
    feed_slow_decoder(policy, clock, 20, capacity_fps=18, start_pts=10.0)
    assert policy.mode == "all" and not policy.decode_bound


def test_an_inference_cut_while_lagging_keeps_frames_spread() -> None:
    """Behind by a lag of its own (a camera clock drifting slow), given a share by an
    inference cut: the lag is not the decoder's, frames stay evenly spread."""
    clock = Clock()
    policy = ShedPolicy(None, modes=PACKET_MODES, clock=clock, prefix_ratio=0.0, lag_limit_s=1.0)
    feed_slow_decoder(policy, clock, 10, capacity_fps=18)
    assert policy.behind
    policy.set_share(15.0)
    feed_slow_decoder(policy, clock, 20, capacity_fps=18, start_pts=10.0)
    assert policy.mode == "all" and not policy.decode_bound


def test_a_stream_told_of_a_decoder_cut_decodes_gop_heads_though_on_time() -> None:
    clock = Clock()
    policy = ShedPolicy(None, modes=PACKET_MODES, clock=clock, prefix_ratio=0.0, lag_limit_s=1.0)
    feed_slow_decoder(policy, clock, 5, capacity_fps=60)  # keeps up: no lag of its own
    policy.set_share(15.0, decoder_bound=True)
    run = feed_slow_decoder(policy, clock, 10, capacity_fps=60, start_pts=5.0)
    assert policy.mode == "prefix" and run.broken_refs == 0
    late = [pts for pts in run.decoded if pts >= 10.0]
    assert len(late) / 5 <= 15.5, "GOP heads only"
    # the same target without the flag (inference's share): frames evenly spread
    other = ShedPolicy(None, modes=PACKET_MODES, clock=Clock(), prefix_ratio=0.0, lag_limit_s=1.0)
    other.set_share(15.0)
    feed_slow_decoder(other, other._clock, 15, capacity_fps=60)  # type: ignore[arg-type]
    assert other.mode == "all"


def test_decode_bound_outlasts_a_reset_while_the_share_holds() -> None:
    """A loop, a reconnect or a pts jump forgets the source's rate for a few packets: the
    latch is kept until the share itself is lifted."""
    clock = Clock()
    policy = ShedPolicy(None, modes=PACKET_MODES, clock=clock, prefix_ratio=0.0, lag_limit_s=1.0)
    feed_slow_decoder(policy, clock, 10, capacity_fps=18)
    policy.set_share(15.0, decoder_bound=True)
    feed_slow_decoder(policy, clock, 10, capacity_fps=18, start_pts=10.0)
    assert policy.decode_bound
    policy.reset()  # a new session
    feed_slow_decoder(policy, clock, 5, capacity_fps=60, start_pts=500.0)
    assert policy.decode_bound and policy.mode == "prefix"


def test_a_slow_decoder_is_behind() -> None:
    clock = Clock()
    policy = ShedPolicy(None, modes=PACKET_MODES, clock=clock, lag_limit_s=1.0)
    feed_slow_decoder(policy, clock, 10, capacity_fps=18)
    assert policy.behind and policy.snapshot().behind
    dali = ShedPolicy(None, modes=NO_MODES, clock=Clock(), lag_limit_s=1.0)
    feed_slow_decoder(dali, dali._clock, 10, capacity_fps=18)  # type: ignore[arg-type]
    assert not dali.behind, "a decoder that cannot shed before decode is never behind"


def test_analysis_fps_alone_never_makes_a_stream_decode_bound() -> None:
    clock = Clock()
    policy = ShedPolicy(10.0, modes=PACKET_MODES, clock=clock, prefix_ratio=0.0, lag_limit_s=1.0)
    feed_slow_decoder(policy, clock, 20, capacity_fps=9)  # behind, with only analysis_fps
    assert policy.behind and not policy.decode_bound and policy.mode != "prefix"


def test_the_lag_ignores_decode_order_jitter() -> None:
    """Packets come in decode order: with B-frames a packet's pts is up to a few frames
    ahead of or behind its neighbours; the reported lag is the least of the last second."""
    clock = Clock()
    policy = ShedPolicy(None, modes=PACKET_MODES, clock=clock, lag_limit_s=0.5)
    order = [0, 3, 1, 2]  # I P B B: pts in decode order, repeated
    for i in range(30 * 20):
        pts = (i // 4) * 4 / 30 + order[i % 4] / 30
        clock.t = 100.0 + i / 30 + 0.01  # read on time
        policy.packet(pts, i % 30 == 0)
    snap = policy.snapshot()
    assert snap.lag_s is not None and snap.lag_s < 0.02, snap
    assert not policy.behind
