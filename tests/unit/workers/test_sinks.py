"""The Redis sink against a real Redis server, including one that goes away."""

from __future__ import annotations

import pytest
import redis

from tests.conftest import wait_until
from visionflow.config import RedisConfig
from visionflow.pipeline.frames import FrameRef, FrameResult
from visionflow.pipeline.letterbox import letterbox_geometry
from visionflow.schema import detections_key, parse_entry
from visionflow.workers.sinks import RedisStreamSink, spill_due
from visionflow.workers.status import PublishStats

LB = letterbox_geometry(640, 480, 320, 320)


def results(stream: str, seqs: range) -> list[FrameResult]:
    return [
        FrameResult(FrameRef(stream, s, None, 1.0, 1.0, "p", 0, LB), (), 1.0, 1.0, 1, 0, 1.0)
        for s in seqs
    ]


def test_entries_are_written_trimmed_and_in_order(redis_server, redis_client, key_prefix):
    cfg = RedisConfig(
        url=redis_server,
        key_prefix=key_prefix,
        maxlen=100,
        approximate_trim=False,
        pipeline_max_entries=16,
    )
    pub = RedisStreamSink(cfg, redis_server, "m1")
    pub.start()
    try:
        pub.write(results("a", range(250)))
        wait_until(lambda: pub.published["a"] == 250, 10, lambda: f"published {pub.published}")
    finally:
        pub.stop()
    rows = redis_client.xrange(detections_key(key_prefix, "a"))
    assert len(rows) == 100
    assert [parse_entry(i, f).seq for i, f in rows] == list(range(150, 250))


@pytest.mark.integration
def test_a_backlog_while_redis_answers_is_written_not_spilled(
    redis_server, redis_client, key_prefix, tmp_path
):
    """80 results wait before the writer starts, more than half of a 100-entry buffer:
    Redis is up, so they are written straight from memory, none goes through the spool."""
    cfg = RedisConfig(
        url=redis_server,
        key_prefix=key_prefix,
        buffer_max_entries=100,
        spool_dir=str(tmp_path / "spool"),
    )
    pub = RedisStreamSink(cfg, redis_server, "m1")
    pub.write(results("a", range(80)))
    pub.start()
    try:
        wait_until(lambda: pub.published["a"] == 80, 10, lambda: f"published {pub.published}")
    finally:
        pub.stop()
    assert sum(pub.spooled.values()) == 0 and not pub.dropped
    rows = redis_client.xrange(detections_key(key_prefix, "a"))
    assert [parse_entry(i, f).seq for i, f in rows] == list(range(80))


@pytest.mark.integration
def test_unreachable_redis_buffers_bounded_and_counts_drops(killable_redis, key_prefix):
    killable_redis.kill()
    cfg = RedisConfig(
        url=killable_redis.url,
        key_prefix=key_prefix,
        buffer_max_entries=50,
        socket_timeout_s=0.3,
        spool_dir="",  # memory buffer only
    )
    pub = RedisStreamSink(cfg, killable_redis.url, "m1")
    pub.start()
    try:
        pub.write(results("a", range(80)))
        wait_until(lambda: pub.last_error is not None, 5, "no error noted")
        assert not pub.connected and pub.pending == 50 and pub.dropped["a"] == 30
        killable_redis.start()
        wait_until(lambda: pub.published["a"] == 50, 15, lambda: f"after restart: {pub.published}")
    finally:
        pub.stop()
    client = redis.Redis.from_url(killable_redis.url)
    assert [
        parse_entry(i, f).seq for i, f in client.xrange(detections_key(key_prefix, "a"))
    ] == list(range(30, 80))


@pytest.mark.integration
def test_failed_writes_spool_depth_and_replays_are_reported(killable_redis, key_prefix, tmp_path):
    cfg = RedisConfig(
        url=killable_redis.url,
        key_prefix=key_prefix,
        socket_timeout_s=0.3,
        spool_dir=str(tmp_path / "spool"),
        spool_after_s=0.0,
    )
    killable_redis.kill()
    pub = RedisStreamSink(cfg, killable_redis.url, "m1")
    pub.start()
    try:
        assert pub.publish_stats() == PublishStats()
        pub.write(results("a", range(40)))
        down = wait_until(
            lambda: (s := pub.publish_stats()).spool_entries == 40 and s,
            10,
            lambda: f"not spooled: {pub.publish_stats()}",
        )
        assert down.errors >= 1 and down.spool_bytes > 40 * 100 and down.replayed == 0
        killable_redis.start()
        wait_until(lambda: pub.published["a"] == 40, 15, lambda: f"after restart: {pub.published}")
        up = wait_until(
            lambda: (s := pub.publish_stats()).spool_entries == 0 and s,
            5,
            lambda: f"spool not drained: {pub.publish_stats()}",
        )
        assert up.replayed == 40 and up.errors >= down.errors and up.overflow == 0
        assert up.spool_bytes == 0
    finally:
        pub.stop()


@pytest.mark.parametrize(
    ("buffered", "down_for", "spooled", "due"),
    [
        (10, None, 0, False),  # Redis answers, a small backlog
        (80, None, 0, False),  # Redis answers, a large backlog, nothing spooled: written
        (80, None, 500, True),  # after an outage, the spool replaying: the buffer joins it
        (10, None, 500, False),  # replaying, little waiting: stays in memory
        (10, 0.5, 0, False),  # a blip shorter than spool_after_s
        (10, 2.0, 0, True),  # an outage of spool_after_s
        (80, 0.1, 0, True),  # an outage, the buffer more than half full
    ],
)
def test_spill_policy(buffered, down_for, spooled, due):
    assert spill_due(buffered, 100, down_for, spooled, spool_after_s=2.0) is due
