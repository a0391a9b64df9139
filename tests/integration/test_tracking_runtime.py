"""Streams added at run time: tracking switched on reaches the output process; they get
ingest processes of their own once the first ones are full."""

from __future__ import annotations

import pytest

from tests.conftest import wait_until
from tests.integration.helpers import config, entries, running
from visionflow.streams.config import StreamConfig

pytestmark = pytest.mark.integration


def test_a_stream_added_with_tracking_gets_track_ids(
    make_clip, redis_server, redis_client, key_prefix
):
    clip = make_clip(640, 360, 6.0, "h264", 41, 10)
    plain = {"id": "plain", "url": str(clip), "loop": True}
    cfg = config([plain], redis_server, key_prefix)
    with running(cfg, redis_server) as pipeline:
        pipeline.add_stream(StreamConfig(id="tracked", url=str(clip), loop=True, tracking={}))

        def tracked_ids() -> bool:
            rows = entries(redis_client, key_prefix, "tracked")
            return any("track_id" in d for e in rows for d in e.detections)

        wait_until(tracked_ids, 40, lambda: f"no track ids: {pipeline.status().streams}")
        rows = entries(redis_client, key_prefix, "plain")
        assert rows and not any("track_id" in d for e in rows for d in e.detections)
        pipeline.remove_stream("tracked")


def test_streams_added_at_run_time_get_an_ingest_process_of_their_own(
    make_clip, redis_server, key_prefix
):
    """Eight streams at start fill one ingest process (``STREAMS_PER_PROCESS``); a ninth added
    at run time starts a second process instead of piling onto the first (a GPU bench found
    96 added streams all on the 4 processes planned for the first 32: 2.4 s of queueing)."""
    from visionflow.workers.plan import STREAMS_PER_PROCESS

    clip = make_clip(160, 120, 3.0, "h264", 7, 5)
    first = [{"id": f"s{i}", "url": str(clip), "loop": True} for i in range(STREAMS_PER_PROCESS)]
    with running(config(first, redis_server, key_prefix), redis_server) as pipeline:
        ingest = sorted(k for k in pipeline.group.children if k.startswith("ingest"))
        assert ingest == ["ingest-0"], ingest
        pipeline.add_stream(StreamConfig(id="late", url=str(clip), loop=True))
        assert "ingest-1" in pipeline.group.children, sorted(pipeline.group.children)
        wait_until(
            lambda: pipeline.status().stream("late").published > 5,
            30,
            lambda: f"the added stream never published: {pipeline.status().stream('late')}",
        )
        assert all(s.published > 0 for s in pipeline.status().streams)


def test_config_streams_track_on_whichever_of_two_output_processes_writes_them(
    make_clip, redis_server, redis_client, key_prefix, tmp_path
):
    """Streams in the config file with tracking, two output processes: each process gets the
    tracking of the streams it writes (assigned before it starts), so every stream's entries
    carry track ids."""
    clip = make_clip(640, 360, 6.0, "h264", 41, 10)
    streams = [{"id": f"t{i}", "url": str(clip), "loop": True, "tracking": {}} for i in range(4)]
    redis = {"url": redis_server, "key_prefix": key_prefix, "spool_dir": str(tmp_path)}
    cfg = config(streams, redis_server, key_prefix, output={"processes": 2}, redis=redis)
    with running(cfg, redis_server) as pipeline:
        assert sorted(dict(pipeline._shards.items()).values()) == [0, 0, 1, 1]

        def tracked(sid: str) -> bool:
            rows = entries(redis_client, key_prefix, sid)
            return any("track_id" in d for e in rows for d in e.detections)

        for s in streams:
            wait_until(
                lambda sid=s["id"]: tracked(sid),
                40,
                lambda sid=s["id"]: f"{sid}: no track ids: {pipeline.status().stream(sid)}",
            )
