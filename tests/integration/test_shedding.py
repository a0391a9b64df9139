"""Shedding before decode on a real RTSP camera: analysis_fps 1 decodes keyframes only."""

from __future__ import annotations

import itertools

import pytest

from tests.conftest import wait_until
from tests.integration.helpers import config, entries, entry_count, running
from visionflow.workers.status import StreamStatus
from visionflow.workers.supervisor import Pipeline

pytestmark = [pytest.mark.integration, pytest.mark.serial]  # rates, latencies, deadlines


def ingest_stats(pipeline: Pipeline, stream_id: str) -> StreamStatus:
    return pipeline.status().stream(stream_id)


def test_analysis_fps_1_decodes_keyframes_only_and_publishes_one_frame_a_second(
    rtsp, redis_server, redis_client, key_prefix
):
    # test mounts are 25 fps with a keyframe every second (key-int-max = fps)
    server = rtsp({"slow": "test:640x360@25", "full": "test:640x360@25"})
    cfg = config(
        [
            {"id": "slow", "url": server.url("slow"), "analysis_fps": 1},
            {"id": "full", "url": server.url("full")},
        ],
        redis_server,
        key_prefix,
    )
    with running(cfg, redis_server) as pipeline:
        wait_until(
            lambda: (s := ingest_stats(pipeline, "slow")) and s.decode_mode == "nonkey",
            30,
            lambda: f"never went nonkey: {ingest_stats(pipeline, 'slow')}",
        )
        start = entry_count(redis_client, key_prefix, "slow")
        wait_until(
            lambda: entry_count(redis_client, key_prefix, "slow") >= start + 8,
            30,
            lambda: f"too few entries: {pipeline.status().stream('slow')}",
        )
        slow = ingest_stats(pipeline, "slow")
        full = ingest_stats(pipeline, "full")
    steady = entries(redis_client, key_prefix, "slow")[start:]
    span = steady[-1].capture_ts - steady[0].capture_ts
    rate = (len(steady) - 1) / span
    assert 0.75 <= rate <= 1.3, f"published {rate:.2f} fps with analysis_fps 1"
    # every published frame is a keyframe, one second apart in the source
    seqs = [e.seq for e in steady]
    assert all(b - a in (24, 25, 26) for a, b in itertools.pairwise(seqs)), seqs
    # the 24 frames of every second not analysed are counted, apart from drops
    assert slow.skipped_analysis >= 20 * slow.frames, slow
    assert slow.skipped_fps_cap == 0 and "backpressure" not in slow.drops
    assert 0.5 <= slow.analysis_fps <= 1.5 and slow.target_fps == 1
    assert slow.source_fps is not None and 22 <= slow.source_fps <= 28
    # the stream without a target of its own is never cut to keyframes (on a loaded machine
    # the fair-share controller may still thin it: that is the controller's job, not a fault)
    assert full.decode_mode != "nonkey"
    assert full.frames > 10 * slow.frames
