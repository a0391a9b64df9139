"""Cameras that never existed or send garbage; Redis that dies.  (Cameras that go away or
freeze, and misbehaving links: ``test_faults.py``.)"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.conftest import wait_until
from tests.integration.helpers import config, entries, entry_count, running
from visionflow.streams.state import StreamState

pytestmark = pytest.mark.integration


def _published(pipeline, stream_id):
    return pipeline.status().stream(stream_id).published


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
        wait_until(lambda: entry_count(client, key_prefix, "cam") > 10, 20, "no entries")
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
        wait_until(lambda: entry_count(client, key_prefix, "cam") > 20, 15, "no entries after")
        seqs = [e.seq for e in entries(client, key_prefix, "cam")]
        assert seqs == sorted(seqs)
        during = [
            e for e in entries(client, key_prefix, "cam") if killed_at < e.capture_ts < restarted_at
        ]
        assert len(during) >= 20, "frames captured during the outage were not written afterwards"
        assert pipeline.status().stream("cam").drops.get("redis_unavailable", 0) == 0
    client.close()


def test_two_output_processes_each_spool_their_streams_and_replay_them(
    rtsp, killable_redis, key_prefix, tmp_path
):
    """Redis down under two output processes: each spools its own streams in its own folder
    (shard 1 in ``shard-1`` inside the configured one) and writes them when Redis is back."""
    import redis as redis_lib

    cams = ("a", "b")
    server = rtsp({c: "test:320x240@15" for c in cams})
    spool = tmp_path / "spool"
    cfg = config(
        [{"id": c, "url": server.url(c)} for c in cams],
        killable_redis.url,
        key_prefix,
        redis={
            "url": killable_redis.url,
            "key_prefix": key_prefix,
            "spool_dir": str(spool),
            "spool_after_s": 0.5,
        },
        output={"processes": 2},
    )
    client = redis_lib.Redis.from_url(killable_redis.url, decode_responses=True)
    with running(cfg, killable_redis.url) as pipeline:
        assert sorted(dict(pipeline._shards.items()).values()) == [0, 1]
        for c in cams:
            wait_until(lambda c=c: entry_count(client, key_prefix, c) > 10, 20, f"no {c} entries")
        killable_redis.kill()
        killed_at = time.time()
        wait_until(lambda: not pipeline.status().redis_connected, 10, "outage not noticed")
        wait_until(
            lambda: pipeline.status().publish.spool_entries >= 40,
            15,
            lambda: f"the two processes did not spool: {pipeline.status().publish}",
        )
        segments = {p.parent.name for p in spool.rglob("*.log")}
        assert segments == {"spool", "shard-1"}, segments  # each process its own folder
        restarted_at = time.time()
        killable_redis.start()
        wait_until(lambda: pipeline.status().redis_connected, 15, "never reconnected")
        for c in cams:
            wait_until(
                lambda c=c: (
                    sum(
                        killed_at < e.capture_ts < restarted_at
                        for e in entries(client, key_prefix, c)
                    )
                    >= 10
                ),
                20,
                f"{c}: frames captured during the outage were not written afterwards",
            )
    final = pipeline.status()
    for s in final.streams:
        seqs = [e.seq for e in entries(client, key_prefix, s.stream_id)]
        assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs), s.stream_id
        assert s.in_flight == 0 and s.unaccounted == 0, s
        assert s.drops.get("redis_unavailable", 0) == 0 and "spool_overflow" not in s.drops
    client.close()
