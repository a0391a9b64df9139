"""Cameras that go away, freeze, never existed or send garbage; Redis that dies."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.conftest import wait_until
from tests.integration.helpers import config, entries, running
from visionflow.streams.state import StreamState

pytestmark = pytest.mark.integration
BACKOFF_CAP = 2.0  # helpers.config sets backoff_max_s


def _camera_and_bystander(rtsp, name, redis_server, key_prefix):
    """The camera under test on its own RTSP server, and an 'other' stream on another one."""
    camera = rtsp({"cam": "test:320x240@15"})
    steady = rtsp({"other": "test:320x240@15"})
    streams = [{"id": name, "url": camera.url("cam")}, {"id": "other", "url": steady.url("other")}]
    return camera, config(streams, redis_server, key_prefix)


def _published(pipeline, stream_id):
    return pipeline.status().stream(stream_id).published


def test_server_down_for_10s_then_back_reconnects_and_others_keep_flowing(
    rtsp, redis_server, key_prefix
):
    flaky, cfg = _camera_and_bystander(rtsp, "flaky", redis_server, key_prefix)
    with running(cfg, redis_server) as pipeline:
        wait_until(lambda: _published(pipeline, "flaky") > 10, 20, "flaky never streamed")
        flaky.stop()
        wait_until(
            lambda: pipeline.status().stream("flaky").state is StreamState.BACKOFF,
            15,
            lambda: f"flaky not in backoff: {pipeline.status().stream('flaky')}",
        )
        before = _published(pipeline, "other")
        time.sleep(10)  # the outage itself is what is being tested, not a synchronisation
        assert _published(pipeline, "other") > before + 50, "other stream stalled during outage"
        flaky.start()
        restarted = time.monotonic()
        wait_until(
            lambda: pipeline.status().stream("flaky").state is StreamState.STREAMING,
            BACKOFF_CAP + 5,
            lambda: f"not back within cap+5s: {pipeline.status().stream('flaky')}",
        )
        back_after = time.monotonic() - restarted
        n = _published(pipeline, "flaky")
        wait_until(lambda: _published(pipeline, "flaky") > n + 5, 10, "no frames after reconnect")
    assert back_after <= BACKOFF_CAP + 5


def test_frozen_camera_is_marked_stalled_and_reopened(rtsp, redis_server, key_prefix):
    frozen, cfg = _camera_and_bystander(rtsp, "frozen", redis_server, key_prefix)
    with running(cfg, redis_server) as pipeline:
        wait_until(lambda: _published(pipeline, "frozen") > 10, 20, "never streamed")
        frozen.freeze()
        try:
            wait_until(
                lambda: any(
                    t.target is StreamState.STALLED for t in pipeline.transitions("frozen")
                ),
                15,
                lambda: f"never marked stalled: {pipeline.transitions('frozen')}",
            )
            # the watchdog reopens: a new connection attempt follows the stall
            wait_until(
                lambda: _after_stall(pipeline.transitions("frozen"), StreamState.CONNECTING),
                10,
                "stalled stream was not reopened",
            )
            before = _published(pipeline, "other")
            wait_until(lambda: _published(pipeline, "other") > before + 30, 10, "others hung")
        finally:
            frozen.thaw()
        wait_until(
            lambda: pipeline.status().stream("frozen").state is StreamState.STREAMING,
            20,
            lambda: f"did not recover after thaw: {pipeline.status().stream('frozen')}",
        )


def _after_stall(transitions, target):
    seen_stall = False
    for t in transitions:
        seen_stall = seen_stall or t.target is StreamState.STALLED
        if seen_stall and t.target is target:
            return True
    return False


def test_bad_sources_fail_alone(rtsp, redis_server, key_prefix, tmp_path, make_clip):
    good = rtsp({"ok": "test:320x240@15"})
    garbage = tmp_path / "garbage.mp4"
    garbage.write_bytes(bytes(range(256)) * 400)
    truncated = tmp_path / "truncated.mp4"
    clip = make_clip(320, 240, 3.0)
    truncated.write_bytes(clip.read_bytes()[: clip.stat().st_size // 2])
    cfg = config(
        [
            {"id": "ok", "url": good.url("ok")},
            {"id": "nobody", "url": "rtsp://127.0.0.1:9/none"},
            {"id": "garbage", "url": str(garbage)},
            {"id": "truncated", "url": str(truncated)},
            {"id": "missing", "url": str(tmp_path / "nope.mp4")},
        ],
        redis_server,
        key_prefix,
    )
    with running(cfg, redis_server) as pipeline:
        wait_until(lambda: _published(pipeline, "ok") > 30, 20, "good stream not flowing")
        wait_until(
            lambda: all(
                pipeline.status().stream(s).state in (StreamState.FAILED, StreamState.BACKOFF)
                for s in ("nobody", "garbage", "truncated", "missing")
            ),
            15,
            lambda: f"bad streams: {[(s.stream_id, s.state) for s in pipeline.status().streams]}",
        )
        status = pipeline.status()
        assert status.stream("nobody").state is StreamState.BACKOFF
        for bad in ("garbage", "truncated", "missing"):
            s = status.stream(bad)
            assert s.state is StreamState.FAILED and s.last_error, s
            assert bad in s.last_error or Path(s.url).name in s.last_error
        before = _published(pipeline, "ok")
        wait_until(lambda: _published(pipeline, "ok") > before + 20, 10, "good stream hurt")
        assert all(w.state == "ready" for w in pipeline.status().workers)


def test_redis_killed_mid_run_pipeline_survives_and_resumes(rtsp, killable_redis, key_prefix):
    import redis as redis_lib

    server = rtsp({"cam": "test:320x240@15"})
    cfg = config([{"id": "cam", "url": server.url("cam")}], killable_redis.url, key_prefix)
    client = redis_lib.Redis.from_url(killable_redis.url, decode_responses=True)
    with running(cfg, killable_redis.url) as pipeline:
        wait_until(lambda: len(entries(client, key_prefix, "cam")) > 10, 20, "no entries")
        killable_redis.kill()
        killed_at = time.time()
        wait_until(lambda: not pipeline.status().redis_connected, 10, "outage not noticed")
        frames = pipeline.status().stream("cam").frames
        wait_until(
            lambda: pipeline.status().stream("cam").frames > frames + 20,
            10,
            "ingest stopped while Redis was down",
        )
        assert pipeline.status().redis_pending > 0
        restarted_at = time.time()
        killable_redis.start()  # empty again: nothing was persisted
        wait_until(lambda: pipeline.status().redis_connected, 15, "never reconnected")
        wait_until(lambda: len(entries(client, key_prefix, "cam")) > 20, 15, "no entries after")
        seqs = [e.seq for e in entries(client, key_prefix, "cam")]
        assert seqs == sorted(seqs)
        during = [
            e for e in entries(client, key_prefix, "cam") if killed_at < e.capture_ts < restarted_at
        ]
        assert len(during) >= 20, "frames captured during the outage were not written afterwards"
        assert pipeline.status().stream("cam").drops.get("redis_unavailable", 0) == 0
    client.close()
