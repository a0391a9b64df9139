"""The tracking processor and the events sink in the output stage, against a real Redis."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from urllib.parse import urlparse

import redis

from tests.conftest import wait_until
from tests.tcp_proxy import TcpProxy
from visionflow.config import RedisConfig
from visionflow.counts import bucket_start
from visionflow.pipeline.frames import BatchResult, Detection, FrameRef, FrameResult
from visionflow.pipeline.letterbox import letterbox_geometry
from visionflow.schema import count_field, counts_key, detections_key, events_key, parse_entry
from visionflow.tracking.config import TrackingConfig
from visionflow.tracking.processor import TrackingProcessor
from visionflow.tracking.sink import RedisEventSink
from visionflow.workers.output import OutputStage, SetTracking, _set_tracking
from visionflow.workers.sinks import RedisStreamSink, Sink

T0 = 1_700_000_000.0
LINE = {"lines": [{"id": "mid", "start": [0.5, 0], "end": [0.5, 1]}]}


def result(stream, seq, xs, size=(640, 480), t=None):
    lb = letterbox_geometry(size[0], size[1], 320, 320)
    ts = T0 + seq / 10 if t is None else t
    dets = tuple(Detection(1, "car", 0.9, x, 200, x + 60, 240) for x in xs)
    return FrameResult(FrameRef(stream, seq, None, ts, 1.0, "p", 0, lb), dets, 1, 1, 1, 0, ts)


def ids(r):
    return [d.track_id for d in r.detections]


def test_tracked_streams_get_ids_untracked_ones_pass_through():
    proc = TrackingProcessor({"a": TrackingConfig()})
    out = proc.process([result("a", s, [10 * s, 400 - 10 * s]) for s in range(5)])
    assert [ids(r) for r in out] == [[1, 2]] * 5
    plain = result("b", 0, [10])
    assert proc.process([plain]) == [plain]


def test_a_new_resolution_resets_the_tracker_and_ids_keep_counting_up():
    proc = TrackingProcessor({"a": TrackingConfig(**LINE)})
    proc.process([result("a", s, [10 * s]) for s in range(3)])
    (out,) = proc.process([result("a", 3, [30], size=(1280, 720))])
    assert ids(out) == [2] and proc.streams["a"].resets == 1
    (out,) = proc.process([result("a", 0, [30], size=(1280, 720))])  # seq went back: restart
    assert ids(out) == [3] and proc.streams["a"].resets == 2


def test_a_seq_gap_within_lost_track_s_keeps_the_id():
    proc = TrackingProcessor({"a": TrackingConfig(lost_track_s=2.0)})
    first = proc.process([result("a", s, [100 + 5 * s]) for s in range(5)])
    later = proc.process([result("a", 20, [200])])  # 1.5 s of frames dropped
    assert ids(first[-1]) == ids(later[0]) == [1]
    gone = proc.process([result("a", 50, [350])])  # 3 s later: a new track
    assert ids(gone[0]) == [2]


def test_configure_at_run_time_starts_and_stops_tracking():
    proc = TrackingProcessor()
    stage = OutputStage([Null()], processors=[proc])
    _set_tracking(stage, SetTracking("a", TrackingConfig()))
    assert ids(proc.process([result("a", 0, [10])])[0]) == [1]
    _set_tracking(stage, SetTracking("a", None))
    assert ids(proc.process([result("a", 1, [10])])[0]) == [None]


class Null(Sink):
    def __init__(self) -> None:
        self.published, self.dropped = Counter(), Counter()

    def write(self, results: Sequence[FrameResult]) -> None:
        pass


def test_entries_events_and_counts_reach_redis(redis_server, redis_client, key_prefix):
    cfg = RedisConfig(url=redis_server, key_prefix=key_prefix)
    tracking = TrackingConfig(**LINE, events_maxlen=100)
    stage = OutputStage(
        [
            RedisStreamSink(cfg, redis_server, "m1"),
            RedisEventSink(cfg, redis_server, lambda s: 100),
        ],
        processors=[TrackingProcessor({"a": tracking})],
    )
    stage.start()
    try:
        # car 1 drives right across the middle line (out), car 2 left (in)
        frames = tuple(result("a", s, [100 + 30 * s, 500 - 30 * s]) for s in range(12))
        stage.on_result(BatchResult(1, 0, frames))
        key = events_key(key_prefix, "a")
        wait_until(lambda: redis_client.xlen(key) >= 2, 10, lambda: f"{stage.stats()}")
    finally:
        stage.stop(5)
    rows = [parse_entry(i, f) for i, f in redis_client.xrange(detections_key(key_prefix, "a"))]
    assert [[d["track_id"] for d in e.detections] for e in rows] == [[1, 2]] * 12
    events = [f for _, f in redis_client.xrange(key)]
    assert sorted((e["kind"], e["track_id"], e["direction"], e["line"]) for e in events) == [
        ("cross", "1", "out", "mid"),
        ("cross", "2", "in", "mid"),
    ]
    assert all(len(json.loads(e["box"])) == 4 and e["stream_id"] == "a" for e in events)
    bucket = counts_key(key_prefix, bucket_start(T0))
    counts = redis_client.hgetall(bucket)
    assert counts == {
        count_field("a", "car", "tracks"): "2",
        count_field("a", "car", "line:mid:in"): "1",
        count_field("a", "car", "line:mid:out"): "1",
    }
    assert 0 < redis_client.ttl(bucket) <= 7 * 24 * 3600


def test_a_reset_ends_zone_presences_with_counted_exits():
    zone = {"zones": [{"id": "all", "points": [[0, 0], [1, 0], [1, 1], [0, 1]]}]}
    proc = TrackingProcessor({"a": TrackingConfig(**zone)})
    out = proc.process([result("a", s, [100 + 5 * s]) for s in range(3)])
    assert [(e.kind, e.zone) for r in out for e in r.events] == [("enter", "all")]
    (after,) = proc.process([result("a", 3, [100], size=(1280, 720))])
    assert [(e.kind, e.track_id) for e in after.events] == [("exit", 1), ("enter", 2)]
    assert ("car", "zone:all:exit") in after.counts


def test_events_wait_while_redis_is_down_and_arrive_when_it_is_back(killable_redis):
    url = killable_redis.url
    cfg = RedisConfig(url=url, key_prefix="vft", socket_timeout_s=0.5)
    sink = RedisEventSink(cfg, url, lambda s: 100)
    proc = TrackingProcessor({"a": TrackingConfig(**LINE)})
    sink.start()
    try:
        killable_redis.kill()
        sink.write(proc.process([result("a", s, [100 + 30 * s]) for s in range(12)]))
        wait_until(lambda: not sink.connected, 10, "the sink did not notice Redis went away")
        assert sink.pending == 1 and sink.published == {}
        killable_redis.start()
        wait_until(lambda: sink.published["a"] == 1, 20, lambda: f"{sink.last_error}")
    finally:
        sink.stop(2)
    client = redis.Redis.from_url(url, decode_responses=True)
    events = [f for _, f in client.xrange(events_key("vft", "a"))]
    assert [(e["kind"], e["direction"]) for e in events] == [("cross", "out")]
    assert (
        client.hget(counts_key("vft", bucket_start(T0)), count_field("a", "car", "line:mid:out"))
        == "1"
    )


def test_a_round_whose_reply_timed_out_is_not_written_twice(redis_server, key_prefix):
    """The round ran in Redis but its reply came after the socket timeout: the resend of the
    same round must not add the events or the counts a second time."""
    port = urlparse(redis_server).port or 6379
    with TcpProxy(port) as proxy:
        url = f"redis://127.0.0.1:{proxy.port}/0"
        cfg = RedisConfig(url=url, key_prefix=key_prefix, socket_timeout_s=0.3)
        sink = RedisEventSink(cfg, url, lambda s: 100)
        proc = TrackingProcessor({"a": TrackingConfig(**LINE), "b": TrackingConfig(**LINE)})
        sink.start()
        try:  # stream a through a fast link (the connection is set up), then b's replies late
            sink.write(proc.process([result("a", s, [100 + 30 * s]) for s in range(12)]))
            wait_until(lambda: sink.published["a"] == 1, 20, lambda: f"{sink.last_error}")
            proxy.delay(1.0)
            sink.write(proc.process([result("b", s, [100 + 30 * s]) for s in range(12)]))
            wait_until(lambda: sink.last_error, 10, "no write timed out behind the proxy")
            proxy.passthrough()
            wait_until(lambda: sink.published["b"] == 1, 20, lambda: f"{sink.last_error}")
        finally:
            sink.stop(2)
    client = redis.Redis.from_url(redis_server, decode_responses=True)
    assert client.xlen(events_key(key_prefix, "b")) == 1
    bucket = counts_key(key_prefix, bucket_start(T0))
    assert client.hget(bucket, count_field("b", "car", "line:mid:out")) == "1"
    assert client.hget(bucket, count_field("b", "car", "tracks")) == "1"
    assert 0 < client.ttl(sink.marker) <= 3600
    client.close()


def test_the_events_sink_starts_no_thread_until_there_is_something_to_write(redis_server):
    sink = RedisEventSink(RedisConfig(url=redis_server), redis_server, lambda s: 100)
    sink.start()
    sink.write([result("a", 0, [10])])  # an untracked stream: no events, no counts
    assert sink.thread.ident is None
    sink.stop(1)
