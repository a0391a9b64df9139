"""Counts per stream, label and minute: the tally, and flushing it to a real Redis."""

from __future__ import annotations

import redis

from visionflow.config import RedisConfig
from visionflow.pipeline.frames import Detection, FrameRef, FrameResult
from visionflow.pipeline.letterbox import letterbox_geometry
from visionflow.schema import count_field, counts_key
from visionflow.workers.counts import CountsSink, bucket_start, tally

LB = letterbox_geometry(640, 480, 320, 320)
T0 = 1_700_000_040.0  # a minute boundary (divisible by 60)


def result(stream: str, seq: int, ts: float, labels: list[str]) -> FrameResult:
    dets = tuple(Detection(i, label, 0.9, 0, 0, 10, 10) for i, label in enumerate(labels))
    return FrameResult(FrameRef(stream, seq, None, ts, 1.0, "p", 0, LB), dets, 1.0, 1.0, 1, 0, ts)


def test_bucket_start_is_the_minute_holding_the_time() -> None:
    assert T0 % 60 == 0
    assert bucket_start(T0) == int(T0)
    assert bucket_start(T0 + 59.999) == int(T0)
    assert bucket_start(T0 + 60.0) == int(T0) + 60
    assert bucket_start(T0 - 0.001) == int(T0) - 60


def test_tally_counts_boxes_per_bucket_stream_and_label() -> None:
    counts = tally(
        [
            result("a", 0, T0 + 1, ["car", "car", "person"]),
            result("a", 1, T0 + 59.9, ["car"]),
            result("a", 2, T0 + 60, ["car"]),  # next minute
            result("b", 0, T0 + 2, ["person"]),
            result("b", 1, T0 + 3, []),  # no box: no field at all
        ]
    )
    m0, m1 = int(T0), int(T0) + 60
    assert counts == {
        (m0, "a", "car", "boxes"): 3,
        (m0, "a", "person", "boxes"): 1,
        (m1, "a", "car", "boxes"): 1,
        (m0, "b", "person", "boxes"): 1,
    }
    assert sum(counts.values()) == 6  # every box once
    more = tally([result("a", 3, T0 + 5, ["car"])], counts)
    assert more is counts and counts[(m0, "a", "car", "boxes")] == 4


def test_flush_increments_buckets_with_the_retention_ttl(
    redis_server, redis_client, key_prefix
) -> None:
    cfg = RedisConfig(url=redis_server, key_prefix=key_prefix, counts_retention_s=3600)
    sink = CountsSink(cfg, redis_server)
    try:
        sink.write([result("a", 0, T0 + 1, ["car", "car"]), result("b", 0, T0 + 61, ["dog"])])
        assert sink.flush() == 3
        sink.write([result("a", 1, T0 + 2, ["car"])])
        assert sink.flush() == 1
        assert sink.flush() == 0  # nothing new: no round trip
    finally:
        sink.stop(1.0)
    m0, m1 = counts_key(key_prefix, int(T0)), counts_key(key_prefix, int(T0) + 60)
    assert redis_client.hgetall(m0) == {count_field("a", "car"): "3"}
    assert redis_client.hgetall(m1) == {count_field("b", "dog"): "1"}
    for key in (m0, m1):
        assert 3500 < redis_client.ttl(key) <= 3600
    assert sink.written_boxes == 4 and sink.lost_boxes == 0 and sink.published["a"] == 2


def test_redis_down_loses_counts_without_raising(killable_redis, key_prefix) -> None:
    cfg = RedisConfig(url=killable_redis.url, key_prefix=key_prefix, socket_timeout_s=0.5)
    sink = CountsSink(cfg, killable_redis.url)
    client = redis.Redis.from_url(killable_redis.url, decode_responses=True)
    try:
        sink.write([result("a", 0, T0 + 1, ["car"])])
        assert sink.flush() == 1 and sink.connected
        killable_redis.kill()
        sink.write([result("a", 1, T0 + 2, ["car", "car"])])
        assert sink.flush() == 0  # lost, counted, no exception
        assert sink.lost_boxes == 2 and not sink.connected and sink.last_error
        sink.write([result("a", 2, T0 + 3, ["car"])])
        assert sink.flush() == 0 and sink.lost_boxes == 3  # backing off: dropped at once
        killable_redis.start()  # an empty server again
        sink.write([result("a", 3, T0 + 4, ["car"])])
        assert sink.flush(force=True) == 1 and sink.connected
        assert client.hgetall(counts_key(key_prefix, int(T0))) == {"a|car|boxes": "1"}
    finally:
        client.close()
        sink.stop(1.0)


def test_settings_turn_counts_and_snapshots_on_and_off() -> None:
    from visionflow.workers.output import OutputSpec, build_stage

    url = "redis://127.0.0.1:1/0"
    on = build_stage(OutputSpec(RedisConfig(url=url), url, "m", snapshot_interval_s=2.0))
    assert [s.name for s in on.sinks] == ["redis", "counts", "events"] and on.snapshots is not None
    assert on.snapshots.ttl_s == 10
    off = build_stage(OutputSpec(RedisConfig(url=url, counts_retention_s=0), url, "m"))
    assert [s.name for s in off.sinks] == ["redis", "events"] and off.snapshots is None
