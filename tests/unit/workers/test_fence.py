"""Fenced writes of a fleet node: the Redis sink writes an entry only while its stream's lease
still holds the value the entry's frame was read under (a real Redis server)."""

from __future__ import annotations

from dataclasses import replace

import pytest
import redis

from tests.conftest import wait_until
from tests.unit.workers.test_sinks import results
from visionflow.config import RedisConfig
from visionflow.pipeline.frames import FrameResult
from visionflow.schema import detections_key, fleet_lease_key, parse_entry
from visionflow.workers.fence import MAX_EPOCHS, Fence, FenceBook
from visionflow.workers.output import OutputStage
from visionflow.workers.sinks import RedisStreamSink


def test_an_entrys_lease_value_follows_from_its_seq():
    book = FenceBook()
    assert book.token("a", 0) is None and book.latest("a") is None
    book.set("a", "n1/1", 0, 1)
    book.set("a", "n1/5", 100, 1)  # taken again: frames from seq 100 on
    assert [book.token("a", s) for s in (0, 99, 100, 5000)] == ["n1/1", "n1/1", "n1/5", "n1/5"]
    # a later lease from a lower seq (Redis lost the floor) never re-binds seq that already
    # have a value: frames of the earlier leases stay theirs, refused once those are gone
    book.set("a", "n1/7", 50, 2)
    assert [book.token("a", s) for s in (49, 50, 99, 100, 5000)] == [
        "n1/1",
        "n1/7",
        "n1/7",
        "n1/5",
        "n1/5",
    ]
    assert book.lookup("a", 60) == Fence("n1/7", 2) and book.latest("a") == "n1/7"
    book.set("a", "n1/9", 100, 3)  # same first seq as a value set before: that one stays
    assert book.lookup("a", 100) == Fence("n1/5", 1) and book.latest("a") == "n1/9"
    for i in range(2 * MAX_EPOCHS):
        book.set("b", f"n/{i}", 1000 + i)
    assert book.token("b", 1000) is None  # older than every epoch kept: no value, refused
    assert book.latest("b") == f"n/{2 * MAX_EPOCHS - 1}"
    assert FenceBook(book.snapshot()).token("a", 60) == "n1/7"
    book.forget("a")  # left the pipeline: nothing kept of it
    assert book.token("a", 60) is None and [sid for sid, _ in book.snapshot()] == ["b"]


def test_entries_whose_lease_changed_are_refused_and_counted_fenced(
    redis_server, redis_client: redis.Redis, key_prefix
):
    cfg = RedisConfig(url=redis_server, key_prefix=key_prefix, pipeline_max_entries=16)
    lease = {sid: fleet_lease_key(key_prefix, sid) for sid in ("a", "b")}
    redis_client.set(lease["a"], "n1/1")
    redis_client.set(lease["b"], "n1/2")
    book = FenceBook()
    book.set("a", "n1/1", 0, 1)
    book.set("b", "n1/2", 0, 2)
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
        # this node takes b again while it stays in the pipeline (same registration, a new
        # lease value from seq 200): frames read under the old one stay refused, the new
        # ones pass
        redis_client.set(lease["b"], "n1/4")
        book.set("b", "n1/4", 200, 2)
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
    # as drops of the registration their lease value was set for: b's 10 read under its
    # earlier lease are drops of the same registration (it never left the pipeline)
    assert sink.dropped_fenced == {("a", 1): 5, ("b", 2): 50}
    assert not sink.reassigned and not sink.dropped and sink.pending == 0
    stats = stage.stats()  # the drops the status board sees, by registration
    assert sorted(stats.fenced) == [("a", 1, 5), ("b", 2, 50)] and stats.dropped == ()
    assert stats.publish.fenced == 55
    assert stats.publish.accepted == 185 and stats.publish.published == 130
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


@pytest.mark.serial  # flushes the server's scripts (a Redis given by URL is shared)
def test_a_flushed_script_is_loaded_again(redis_server, redis_client: redis.Redis, key_prefix):
    cfg = RedisConfig(url=redis_server, key_prefix=key_prefix, pipeline_max_entries=16)
    redis_client.set(fleet_lease_key(key_prefix, "a"), "n1/1")
    book = FenceBook()
    book.set("a", "n1/1", 0)
    redis_client.script_flush()  # a server that never saw the script
    redis_client.config_resetstat()

    def noscript() -> int:
        line = redis_client.info("errorstats").get("errorstat_NOSCRIPT", {"count": 0})
        return int(line["count"])

    sink = RedisStreamSink(cfg, redis_server, "m1", book)
    sink.start()
    try:
        sink.write(results("a", range(0, 10)))
        wait_until(lambda: sink.published["a"] == 10, 10, lambda: f"{sink.published}")
        assert noscript() == 0  # loaded on connecting: the first batch met no NOSCRIPT
        redis_client.script_flush()  # as after a Redis restart: EVALSHA meets NOSCRIPT
        sink.write(results("a", range(10, 20)))
        wait_until(lambda: sink.published["a"] == 20, 10, lambda: f"{sink.published}")
        assert noscript() > 0  # ... and the entries that met it were sent again
    finally:
        sink.stop()
    assert sink.write_errors == 0 and not sink.fenced
    assert redis_client.xlen(detections_key(key_prefix, "a")) == 20


def test_a_results_lease_value_is_bound_when_it_enters_the_sink(
    redis_server, redis_client: redis.Redis, key_prefix
):
    """Redis restarted empty: the node lost the lease (the stream left the pipeline, its
    values forgotten) and took it again, going on above its own seq (5300).  Results that
    entered the sink under the earlier lease are refused, not written under the new value,
    and so are frames of it that arrive later (no value covers them); the refusals are
    drops of the earlier registration (or of none)."""
    cfg = RedisConfig(url=redis_server, key_prefix=key_prefix, pipeline_max_entries=16)
    lease = fleet_lease_key(key_prefix, "c")
    book = FenceBook()
    book.set("c", "n1/1", 0, 1)
    sink = RedisStreamSink(cfg, redis_server, "m1", book)
    sink.write(results("c", range(5000, 5010)))  # buffered: the writer is not started yet
    book.forget("c")
    book.set("c", "n1/9", 5300, 2)  # taken again (a new registration)
    redis_client.set(lease, "n1/9")
    sink.write(results("c", range(5010, 5015)) + results("c", range(5300, 5305)))
    sink.start()
    try:
        wait_until(lambda: sink.published["c"] == 5 and sink.fenced["c"] == 15, 10,
                   lambda: f"{sink.published} {sink.fenced}")  # fmt: skip
    finally:
        sink.stop()
    written = redis_client.xrange(detections_key(key_prefix, "c"))
    assert [parse_entry(i, f).seq for i, f in written] == list(range(5300, 5305))
    assert sorted(sink.fenced_drops()) == [("c", 0, 5), ("c", 1, 10)]


def test_an_entry_already_written_is_not_counted_fenced(
    redis_server, redis_client: redis.Redis, key_prefix
):
    """The write got there, its reply was lost, the lease moved on: the retry finds the entry
    (same id, seq and capture_ts) and counts it written, not refused."""
    cfg = RedisConfig(url=redis_server, key_prefix=key_prefix, pipeline_max_entries=16)
    lease = fleet_lease_key(key_prefix, "a")
    redis_client.set(lease, "n1/1")
    book = FenceBook()
    book.set("a", "n1/1", 0, 1)
    sink = RedisStreamSink(cfg, redis_server, "m1", book)
    batch = results("a", range(0, 6))
    entries, refused, _ = sink._write([sink._entry(r) for r in sink_items(sink, batch)])
    assert len(entries) == 6 and not refused
    redis_client.set(lease, "n2/2")  # the lease moved; the same entries are sent again
    again, refused, _ = sink._write(entries[:4])
    assert [e.seq for e in again] == [0, 1, 2, 3] and not refused
    assert sink.duplicates_skipped["a"] == 4
    # an entry not in Redis (or another one under its id) is refused
    other = replace(entries[4], entry_id=(entries[5].entry_id[0] + 1000, 0))
    changed = replace(entries[5], fields={**entries[5].fields, "seq": "99"})
    _, refused, _ = sink._write([other, changed])
    assert refused == [other, changed]
    assert redis_client.xlen(detections_key(key_prefix, "a")) == 6


def sink_items(sink: RedisStreamSink, batch: list[FrameResult]) -> list[object]:
    """The results as write() buffers them (with their lease values bound)."""
    sink.write(batch)
    with sink._cond:
        items = list(sink._buffer)
        sink._buffer.clear()
    return items
