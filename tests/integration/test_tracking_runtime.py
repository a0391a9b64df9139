"""Tracking switched on for a stream added at run time reaches the output process."""

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
