"""Fenced writes of a fleet node: the Redis sink writes an entry only while its stream's lease
still holds the value the entry's frame was read under (a real Redis server)."""

from __future__ import annotations

import redis

from tests.conftest import wait_until
from tests.unit.workers.test_sinks import results
from visionflow.config import RedisConfig
from visionflow.schema import detections_key, fleet_lease_key, parse_entry
from visionflow.workers.fence import MAX_EPOCHS, FenceBook
from visionflow.workers.output import OutputStage
from visionflow.workers.sinks import RedisStreamSink


def test_an_entrys_lease_value_follows_from_its_seq():
    book = FenceBook()
    assert book.token("a", 0) is None and book.latest("a") is None
    book.set("a", "n1/1", 0)
    book.set("a", "n1/5", 100)  # taken again: frames from seq 100 on
    assert [book.token("a", s) for s in (0, 99, 100, 5000)] == ["n1/1", "n1/1", "n1/5", "n1/5"]
    book.set("a", "n1/7", 50)  # a later lease from a lower seq replaces the epochs above it
    assert [book.token("a", s) for s in (49, 50, 100)] == ["n1/1", "n1/7", "n1/7"]
    for i in range(2 * MAX_EPOCHS):
        book.set("b", f"n/{i}", 1000 + i)
    assert book.token("b", 1000) is None  # older than every epoch kept: no value, refused
    assert book.latest("b") == f"n/{2 * MAX_EPOCHS - 1}"
    assert FenceBook(book.snapshot()).token("a", 60) == "n1/7"


def test_entries_whose_lease_changed_are_refused_and_counted_fenced(
    redis_server, redis_client: redis.Redis, key_prefix
):
    cfg = RedisConfig(url=redis_server, key_prefix=key_prefix, pipeline_max_entries=16)
    lease = {sid: fleet_lease_key(key_prefix, sid) for sid in ("a", "b")}
    redis_client.set(lease["a"], "n1/1")
    redis_client.set(lease["b"], "n1/2")
    book = FenceBook()
    book.set("a", "n1/1", 0)
    book.set("b", "n1/2", 0)
    sink = RedisStreamSink(cfg, redis_server, "m1", book)
    stage = OutputStage([sink], fences=book)
    sink.start()
    try:
        sink.write(results("a", range(0, 40)) + results("b", range(0, 40)))
        wait_until(lambda: sink.published == {"a": 40, "b": 40}, 10, lambda: f"{sink.published}")
        redis_client.set(lease["b"], "n2/3")  # b's lease moved to another node under the sink
        sink.write(results("a", range(40, 80)) + results("b", range(40, 80)))
        wait_until(lambda: sink.fenced["b"] == 40, 10, lambda: f"fenced {sink.fenced}")
        wait_until(lambda: sink.published["a"] == 80, 10, lambda: f"{sink.published}")
        # this node takes b again (a new lease value, from seq 200): frames read under the
        # old one stay refused, the new ones pass
        redis_client.set(lease["b"], "n1/4")
        book.set("b", "n1/4", 200)
        sink.write(results("b", range(80, 90)) + results("b", range(200, 210)))
        wait_until(lambda: sink.published["b"] == 50, 10, lambda: f"{sink.published}")
        assert sink.fenced["b"] == 50
        redis_client.delete(lease["a"])  # a's lease expired: nothing of a is written
        sink.write(results("a", range(80, 85)))
        wait_until(lambda: sink.fenced["a"] == 5, 10, lambda: f"fenced {sink.fenced}")
    finally:
        sink.stop()

    def seqs(sid: str) -> list[int]:
        return [
            parse_entry(i, f).seq for i, f in redis_client.xrange(detections_key(key_prefix, sid))
        ]

    assert seqs("a") == list(range(80))
    assert seqs("b") == list(range(40)) + list(range(200, 210))
    assert sink.published == {"a": 80, "b": 50}
    assert sink.fenced == {"a": 5, "b": 50}
    # as drops (the status board's): b's 10 read under its earlier lease belong to the
    # stream as it was before it was taken again, not to the one counting now
    assert sink.dropped_fenced == {"a": 5, "b": 40}
    assert not sink.reassigned and not sink.dropped and sink.pending == 0
    stats = stage.stats()  # the drops the status board sees, by reason
    assert sorted(stats.dropped) == [("a", "fenced", 5), ("b", "fenced", 40)]
    assert stats.publish.fenced == 55
    # every entry handed to the sink is written or refused, none lost or written twice
    assert sum(sink.published.values()) + sum(sink.fenced.values()) == 85 + 100


def test_a_stream_without_a_lease_value_is_refused_and_the_plain_path_is_unchanged(
    redis_server, redis_client: redis.Redis, key_prefix
):
    cfg = RedisConfig(url=redis_server, key_prefix=key_prefix, pipeline_max_entries=16)
    redis_client.set(fleet_lease_key(key_prefix, "a"), "n1/1")
    fenced = RedisStreamSink(cfg, redis_server, "m1", FenceBook())  # no value known for "a"
    plain = RedisStreamSink(cfg, redis_server, "m1")  # not a fleet node: no fence at all
    fenced.start()
    plain.start()
    try:
        fenced.write(results("a", range(0, 10)))
        wait_until(lambda: fenced.fenced["a"] == 10, 10, lambda: f"fenced {fenced.fenced}")
        plain.write(results("c", range(0, 10)))
        wait_until(lambda: plain.published["c"] == 10, 10, lambda: f"{plain.published}")
    finally:
        fenced.stop()
        plain.stop()
    assert not redis_client.exists(detections_key(key_prefix, "a"))
    assert redis_client.xlen(detections_key(key_prefix, "c")) == 10
    assert not plain.fenced and plain.drop_counts() == []


def test_a_flushed_script_is_loaded_again(redis_server, redis_client: redis.Redis, key_prefix):
    cfg = RedisConfig(url=redis_server, key_prefix=key_prefix, pipeline_max_entries=16)
    redis_client.set(fleet_lease_key(key_prefix, "a"), "n1/1")
    book = FenceBook()
    book.set("a", "n1/1", 0)
    sink = RedisStreamSink(cfg, redis_server, "m1", book)
    sink.start()
    try:
        sink.write(results("a", range(0, 10)))
        wait_until(lambda: sink.published["a"] == 10, 10, lambda: f"{sink.published}")
        redis_client.script_flush()  # as after a Redis restart: EVALSHA meets NOSCRIPT
        sink.write(results("a", range(10, 20)))
        wait_until(lambda: sink.published["a"] == 20, 10, lambda: f"{sink.published}")
    finally:
        sink.stop()
    assert sink.write_errors == 0 and not sink.fenced
    assert redis_client.xlen(detections_key(key_prefix, "a")) == 20
