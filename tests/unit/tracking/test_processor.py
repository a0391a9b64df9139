"""The tracking processor and the events sink in the output stage, against a real Redis."""

from __future__ import annotations

import dataclasses
import json
from collections import Counter
from collections.abc import Sequence
from urllib.parse import urlparse

import pytest
import redis

from tests.conftest import wait_until
from tests.tcp_proxy import TcpProxy
from visionflow.config import RedisConfig
from visionflow.counts import bucket_start
from visionflow.pipeline.frames import BatchResult, Detection, FrameRef, FrameResult, TrackEvent
from visionflow.pipeline.letterbox import letterbox_geometry
from visionflow.schema import (
    count_field,
    counts_key,
    detections_key,
    encode_event,
    events_key,
    parse_entry,
)
from visionflow.tracking.bytetrack import seed_id
from visionflow.tracking.config import TrackingConfig
from visionflow.tracking.processor import TrackingProcessor
from visionflow.tracking.sink import RedisEventSink
from visionflow.workers.output import OutputStage, SetTracking, _set_tracking
from visionflow.workers.sinks import RedisStreamSink, Sink

T0 = 1_700_000_000.0
LINE = {"lines": [{"id": "mid", "start": [0.5, 0], "end": [0.5, 1]}]}


def result(stream, seq, xs, size=(640, 480), t=None, pts=None):
    lb = letterbox_geometry(size[0], size[1], 320, 320)
    ts = T0 + seq / 10 if t is None else t
    dets = tuple(Detection(1, "car", 0.9, x, 200, x + 60, 240) for x in xs)
    return FrameResult(FrameRef(stream, seq, pts, ts, 1.0, "p", 0, lb), dets, 1, 1, 1, 0, ts)


def ids(r):
    return [d.track_id for d in r.detections]


def test_tracked_streams_get_ids_untracked_ones_pass_through():
    proc = TrackingProcessor({"a": TrackingConfig()})
    out = proc.process([result("a", s, [10 * s, 400 - 10 * s]) for s in range(5)])
    first = ids(out[0])[0]
    assert [ids(r) for r in out] == [[first, first + 1]] * 5
    plain = result("b", 0, [10])
    assert proc.process([plain]) == [plain]


def test_a_new_resolution_resets_the_tracker_and_ids_keep_counting_up():
    proc = TrackingProcessor({"a": TrackingConfig(**LINE)})
    (first, *_) = proc.process([result("a", s, [10 * s]) for s in range(3)])
    (one,) = ids(first)
    (out,) = proc.process([result("a", 3, [30], size=(1280, 720))])
    assert ids(out) == [one + 1] and proc.streams["a"].resets == 1
    (out,) = proc.process([result("a", 0, [30], size=(1280, 720))])  # seq went back: restart
    assert ids(out) == [one + 2] and proc.streams["a"].resets == 2


def test_a_seq_gap_within_lost_track_s_keeps_the_id():
    proc = TrackingProcessor({"a": TrackingConfig(lost_track_s=2.0)})
    first = proc.process([result("a", s, [100 + 5 * s]) for s in range(5)])
    later = proc.process([result("a", 20, [200])])  # 1.5 s of frames dropped
    (one,) = ids(first[0])
    assert ids(first[-1]) == ids(later[0]) == [one]
    gone = proc.process([result("a", 50, [350])])  # 3 s later: a new track
    assert ids(gone[0]) == [one + 1]


def test_configure_at_run_time_starts_and_stops_tracking():
    proc = TrackingProcessor()
    stage = OutputStage([Null()], processors=[proc])
    _set_tracking(stage, SetTracking("a", TrackingConfig()))
    assert ids(proc.process([result("a", 0, [10])])[0])[0] is not None
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
    one = rows[0].detections[0]["track_id"]
    assert [[d["track_id"] for d in e.detections] for e in rows] == [[one, one + 1]] * 12
    events = [f for _, f in redis_client.xrange(key)]
    assert sorted((e["kind"], e["track_id"], e["direction"], e["line"]) for e in events) == [
        ("cross", str(one), "out", "mid"),
        ("cross", str(one + 1), "in", "mid"),
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
    (one,) = ids(out[0])
    (after,) = proc.process([result("a", 3, [100], size=(1280, 720))])
    assert [(e.kind, e.track_id) for e in after.events] == [("exit", one), ("enter", one + 1)]
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
    assert [(e["kind"], e["direction"], e["inferred"]) for e in events] == [("cross", "out", "0")]
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


ZONE_ALL = {"zones": [{"id": "all", "points": [[0, 0], [1, 0], [1, 1], [0, 1]]}]}


def test_track_ids_never_restart_after_a_config_change_an_error_or_a_restart():
    proc = TrackingProcessor({"a": TrackingConfig()})
    (one,) = ids(proc.process([result("a", s, [100 + 5 * s]) for s in range(3)])[-1])
    assert one > 1_000_000  # seeded from the wall clock, not 1
    proc.configure("a", TrackingConfig(**LINE))  # a config change at run time
    (two,) = ids(proc.process([result("a", 3, [115])])[0])
    assert two > one
    bad = result("a", 4, [120])

    def fail(r: FrameResult) -> FrameResult:
        raise ValueError("a bug in a step")

    proc.streams["a"].step = fail  # type: ignore[method-assign]  # no input makes step fail
    assert proc.process([bad]) == [bad] and proc.errors["a"] == 1 and "a" not in proc.streams
    (three,) = ids(proc.process([result("a", 5, [125])])[0])
    assert three > two
    wait_until(lambda: seed_id() > three, 5, "the wall clock did not move on")
    restarted = TrackingProcessor({"a": TrackingConfig()})  # the output process restarted
    (four,) = ids(restarted.process([result("a", 0, [100])])[0])
    assert four > three


def test_a_pts_jump_is_not_taken_as_time():
    proc = TrackingProcessor({"a": TrackingConfig(**ZONE_ALL)})
    pts = [0.0, 0.1, 0.2, 0.3, 0.4, 5000.0, 5000.1, 5000.2]
    out = proc.process([result("a", s, [100 + 5 * s], pts=p) for s, p in enumerate(pts)])
    assert len({i for r in out for i in ids(r)}) == 1  # one object, one id
    assert [e.kind for r in out for e in r.events] == ["enter"]
    assert not any(m == "zone:all:exit" for r in out for _, m in r.counts)
    assert proc.streams["a"].clock.now == pytest.approx(0.7)


def test_the_pts_is_used_when_it_agrees_with_the_capture_times():
    proc = TrackingProcessor({"a": TrackingConfig()})
    proc.process([result("a", s, [100], pts=s * 0.04) for s in range(3)])  # 25 fps source
    assert proc.streams["a"].clock.now == pytest.approx(0.08)  # not the capture's 0.2 s


def test_a_reset_exit_is_not_counted_again_within_the_minute():
    half = {"zones": [{"id": "left", "points": [[0, 0], [0.5, 0], [0.5, 1], [0, 1]]}]}
    proc = TrackingProcessor({"a": TrackingConfig(**half)})
    xs = [*range(200, 350, 25), *range(350, 175, -25)]  # in, out, in (one track)
    out = proc.process([result("a", s, [x]) for s, x in enumerate(xs)])
    out += proc.process([result("a", len(xs), [200], size=(1280, 720))])  # reset, same minute
    assert [e.kind for r in out for e in r.events].count("exit") == 2  # both exits reported
    counts = [m for r in out for _, m in r.counts]
    assert counts.count("tracks") == 2  # the car, and the car again after the reset
    assert counts.count("zone:left:exit") == 1 and counts.count("zone:left:enter") == 2


def test_empty_frames_without_tracks_keep_the_tracker_behaviour():
    proc = TrackingProcessor({"a": TrackingConfig(lost_track_s=1.0)})
    out = proc.process([result("a", s, []) for s in range(3)])  # nothing yet
    assert all(r.detections == () and r.events == () and r.counts == () for r in out)
    out = proc.process([result("a", s, [100 + 5 * s]) for s in range(3, 6)])
    # not the tracker's first frame: a new object is confirmed on its second frame only
    assert [r.counts for r in out] == [(), (("car", "tracks"),), ()]
    (one,) = ids(out[0])
    proc.process([result("a", s, []) for s in range(6, 30)])  # 2.4 s without it: it is gone
    assert len(proc.streams["a"].tracker) == 0
    (back,) = proc.process([result("a", 30, [130])])
    assert ids(back) == [one + 1]


def test_an_inferred_event_says_so_in_redis():
    event = TrackEvent("cross", 5, "car", T0, 3, (1, 2, 3, 4), line="mid", direction="in")
    assert encode_event("a", event)["inferred"] == "0"
    inferred = encode_event("a", dataclasses.replace(event, inferred=True))
    assert inferred["inferred"] == "1" and inferred["direction"] == "in"


def test_a_crossing_inferred_after_the_last_track_is_gone_still_comes():
    # a car walks right towards the line (x 320) and is lost at x 270 (anchor) in frame 6;
    # no detections after: its crossing is inferred once its id can no longer come back
    # (1 s lost + 3 s of re-identification by appearance; with no look to compare, the
    # tracker drops it after the first second), in a frame with no track left
    config = TrackingConfig(**LINE, infer_unseen_s=1.0, appearance_s=3.0)
    proc = TrackingProcessor({"a": config})
    seen = proc.process([result("a", 0, [40])])  # something on screen when tracking began
    seen += proc.process([result("a", s, [40, 60 + 25 * s]) for s in range(1, 7)])
    empty = proc.process([result("a", s, []) for s in range(7, 60)])
    inferred = [(r.frame.seq, e.direction, e.inferred) for r in empty for e in r.events]
    assert inferred == [(37, "out", True)]  # over 3 s (appearance_s) after frame 6
    assert not len(proc.streams["a"].tracker)  # ... with no track left
    assert [c for r in seen + empty for c in r.counts if c[1] != "tracks"] == [
        ("car", "line:mid:out")
    ]
    assert not proc.streams["a"].analytics.waiting  # nothing more to wait for
