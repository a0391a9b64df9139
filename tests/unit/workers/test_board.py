"""The status board's accounting, from the events it receives."""

from __future__ import annotations

import time

from visionflow.pipeline.ledger import LedgerSnapshot
from visionflow.streams.config import StreamConfig
from visionflow.streams.state import StreamState
from visionflow.workers.board import StatusBoard, redis_status
from visionflow.workers.messages import IngestHeartbeat, OutputStats, StateChanged, StreamStats
from visionflow.workers.status import PublishStats


def stats(frames: int, backpressure: int = 0) -> StreamStats:
    return StreamStats(
        "a", StreamState.STREAMING, 0.0, frames, 0, backpressure, 0, 0, None, None, 64, 48
    )


def test_frames_equal_published_plus_drops_plus_in_flight():
    board = StatusBoard("m")
    board.add_stream(StreamConfig(id="a", url="rtsp://u:secret@cam/1"))
    board.apply(IngestHeartbeat(0, time.time(), (stats(100, backpressure=3),)))
    board.apply(
        OutputStats(time.time(), (("a", 80),), (("a", "redis_unavailable", 2),), 0, True, None)
    )
    ledger = {"a": LedgerSnapshot(100, 85, {"inference_behind": 10}, 5)}
    s = board.snapshot(ledger, {}).stream("a")
    assert (s.frames, s.published, s.total_drops, s.in_flight) == (103, 80, 15, 8)
    assert s.accounted and s.drops["backpressure"] == 3
    assert "secret" not in s.url


def test_a_stale_heartbeat_never_makes_published_exceed_frames():
    board = StatusBoard("m")
    board.add_stream(StreamConfig(id="a", url="rtsp://cam/1"))
    board.apply(IngestHeartbeat(0, time.time(), (stats(10),)))  # the ledger has seen 50 since
    board.apply(OutputStats(time.time(), (("a", 45),), (), 0, True, None))
    s = board.snapshot({"a": LedgerSnapshot(50, 45, {}, 5)}, {}).stream("a")
    assert s.frames == 50 and s.in_flight == 5 and s.accounted


def test_state_changes_are_kept_and_a_stream_called_streams_keeps_its_hash():
    board = StatusBoard("m")
    board.add_stream(StreamConfig(id="streams", url="rtsp://cam/1"))
    board.apply(StateChanged("streams", StreamState.STOPPED, StreamState.CONNECTING, "start", 1.0))
    assert [t.target for t in board.transitions("streams")] == [StreamState.CONNECTING]
    hashes, members = redis_status(board.snapshot({}, {}), "vf")
    assert "vf:status:streams" in hashes and members == ["streams"]


def test_a_double_count_shows_as_unaccounted():
    board = StatusBoard("m")
    board.add_stream(StreamConfig(id="a", url="rtsp://cam/1"))
    board.apply(OutputStats(time.time(), (("a", 10),), (("a", "worker_lost", 2),), 0, True, None))
    s = board.snapshot({"a": LedgerSnapshot(10, 10, {}, 0)}, {}).stream("a")
    assert s.unaccounted == -2 and not s.accounted


def test_counts_of_a_dead_output_process_are_kept():
    board = StatusBoard("m")
    board.add_stream(StreamConfig(id="a", url="rtsp://cam/1"))
    board.apply(OutputStats(time.time(), (("a", 40),), (), 0, True, None, pid=100))
    board.apply(OutputStats(time.time(), (("a", 5),), (), 0, True, None, pid=101))
    s = board.snapshot({"a": LedgerSnapshot(50, 50, {}, 0)}, {}).stream("a")
    assert s.published == 45 and s.in_flight == 5 and s.accounted


def test_counters_survive_an_ingest_restart_and_the_last_seq_is_remembered():
    board = StatusBoard("m")
    board.add_stream(StreamConfig(id="a", url="rtsp://cam/1"))
    old = StreamStats(
        "a", StreamState.STREAMING, 0.0, 100, 2, 3, 1, 4, None, None, 64, 48, last_seq=140
    )
    board.apply(IngestHeartbeat(0, time.time(), (old,)))
    board.ingest_restarted(["a"])
    new = StreamStats(
        "a", StreamState.STREAMING, 0.0, 10, 0, 1, 0, 0, None, None, 64, 48, last_seq=400
    )
    board.apply(IngestHeartbeat(0, time.time() + 1, (new,)))
    s = board.snapshot({"a": LedgerSnapshot(105, 105, {}, 0)}, {}).stream("a")
    assert (s.frames, s.skipped_fps_cap, s.decode_errors, s.reconnects) == (114, 2, 1, 4)
    assert s.drops["backpressure"] == 4 and s.fps >= 0
    assert board.last_seq("a") == 400
    board.ingest_restarted(["a"])
    assert board.last_seq("a") == 400, "remembered after the new process is gone too"


def test_publish_counts_of_a_dead_output_process_are_kept_and_the_spool_is_a_gauge():
    board = StatusBoard("m")
    first = PublishStats(errors=4, spool_entries=30, spool_bytes=9000, replayed=10, overflow=2)
    board.apply(OutputStats(time.time(), (), (), 30, False, "down", pid=100, publish=first))
    now = PublishStats(errors=1, spool_entries=5, spool_bytes=1500, replayed=3, overflow=0)
    board.apply(OutputStats(time.time(), (), (), 5, True, None, pid=101, publish=now))
    board.apply(OutputStats(time.time(), (), (), 5, True, None, pid=101, publish=now))
    status = board.snapshot({}, {})
    assert status.publish == PublishStats(5, 5, 1500, 13, 2)
    hashes, _ = redis_status(status, "vf")
    fields = hashes["vf:pipeline"]
    assert (fields["publish_errors"], fields["spool_entries"], fields["spool_replayed"]) == (
        "5",
        "5",
        "13",
    )
    assert fields["model_id"] == "m" and fields["redis_pending"] == "5"


def test_a_stream_removed_and_added_again_starts_from_zero():
    """DELETE then POST of the same id (the way to change a camera's URL through the API):
    the new stream must not inherit the old one's published count and drops."""
    board = StatusBoard("m")
    board.add_stream(StreamConfig(id="a", url="rtsp://cam/1"))
    board.apply(OutputStats(time.time(), (("a", 100),), (("a", "worker_lost", 4),), 0, True, None))
    board.remove_stream("a")
    board.add_stream(StreamConfig(id="a", url="rtsp://cam/2"))
    fresh = board.snapshot({"a": LedgerSnapshot(0, 0, {}, 0)}, {}).stream("a")
    assert (fresh.frames, fresh.published, fresh.total_drops) == (0, 0, 0), fresh
    assert fresh.accounted
    board.apply(OutputStats(time.time(), (("a", 110),), (("a", "worker_lost", 5),), 0, True, None))
    s = board.snapshot({"a": LedgerSnapshot(11, 11, {}, 0)}, {}).stream("a")
    assert (s.published, s.drops.get("worker_lost")) == (10, 1) and s.accounted, s


def test_the_status_writer_deletes_the_hash_of_a_removed_stream(
    redis_server, redis_client, key_prefix
):
    from tests.unit.api.conftest import pipeline_status, stream_status
    from visionflow.config import RedisConfig
    from visionflow.workers.board import RedisStatusWriter

    current = [pipeline_status(streams=(stream_status("a"), stream_status("b")))]
    cfg = RedisConfig(url=redis_server, key_prefix=key_prefix)
    writer = RedisStatusWriter(cfg, redis_server, lambda: current[0])
    writer.write()
    assert redis_client.exists(f"{key_prefix}:status:a", f"{key_prefix}:status:b") == 2
    current[0] = pipeline_status(streams=(stream_status("a"),))
    writer.write()
    assert redis_client.exists(f"{key_prefix}:status:b") == 0, "a removed stream's hash stays"
    assert redis_client.exists(f"{key_prefix}:status:a") == 1
    assert redis_client.smembers(f"{key_prefix}:streams") == {"a"}


def test_fenced_drops_are_charged_to_the_registration_their_lease_value_names():
    """A stream taken again while it stayed in the pipeline: its frames read under the old
    lease and refused are drops of the same registration, so in-flight settles to zero.  A
    refusal of an earlier registration that arrives after the stream was added again (even
    in a later OutputStats) is not charged to the new one."""
    board = StatusBoard("m")
    board.add_stream(StreamConfig(id="a", url="rtsp://cam/1"), generation=1)
    board.apply(IngestHeartbeat(0, time.time(), (stats(50),)))
    fenced = (("a", 1, 10),)
    board.apply(OutputStats(time.time(), (("a", 40),), (), 0, True, None, pid=6, fenced=fenced))
    s = board.snapshot({"a": LedgerSnapshot(50, 50, {}, 0)}, {}).stream("a")
    assert (s.published, s.drops, s.in_flight, s.unaccounted) == (40, {"fenced": 10}, 0, 0), s
    board.remove_stream("a")
    board.add_stream(StreamConfig(id="a", url="rtsp://cam/1"), generation=2)
    board.apply(IngestHeartbeat(0, time.time(), (stats(0),)))
    # late refusals of registration 1 and a first one of registration 2
    late = (("a", 1, 25), ("a", 2, 3))
    board.apply(OutputStats(time.time(), (("a", 45),), (), 0, True, None, pid=6, fenced=late))
    s = board.snapshot({"a": LedgerSnapshot(10, 10, {}, 0)}, {}).stream("a")
    assert (s.published, s.drops, s.in_flight, s.unaccounted) == (5, {"fenced": 3}, 2, 0), s
    # an output process restarted: the dead one's refusals stay charged
    board.apply(OutputStats(time.time(), (), (), 0, True, None, pid=7, fenced=(("a", 2, 1),)))
    s = board.snapshot({"a": LedgerSnapshot(10, 10, {}, 0)}, {}).stream("a")
    assert s.drops == {"fenced": 4} and s.accounted, s
