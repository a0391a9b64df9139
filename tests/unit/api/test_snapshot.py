"""GET /streams/{id}/snapshot: the latest annotated JPEG kept in Redis, served as it is."""

from __future__ import annotations

import io

import av

from tests.conftest import wait_until
from tests.images import scene_jpeg
from tests.unit.api.conftest import pipeline_status, stream_status, write_status
from visionflow.schema import snapshot_key


def test_snapshot_is_the_jpeg_kept_in_redis(redis_api, redis_client, key_prefix):
    jpeg = scene_jpeg(320, 180)
    redis_client.set(snapshot_key(key_prefix, "cam1"), jpeg, ex=30)
    answer = redis_api().get("/streams/cam1/snapshot")
    assert answer.status_code == 200
    assert answer.headers["content-type"] == "image/jpeg"
    assert answer.headers["cache-control"] == "no-store"
    assert answer.content == jpeg
    with av.open(io.BytesIO(answer.content), format="mjpeg") as image:
        frame = next(image.decode(video=0))
    assert (frame.width, frame.height) == (320, 180)


def test_no_snapshot_is_404_without_a_token(redis_api, redis_client, key_prefix):
    api = redis_api()
    missing = api.get("/streams/cam2/snapshot")
    assert missing.status_code == 404 and "cam2" in missing.json()["detail"]
    redis_client.set(snapshot_key(key_prefix, "cam2"), scene_jpeg(160, 90), px=300)
    assert api.get("/streams/cam2/snapshot").status_code == 200
    wait_until(  # its TTL ran out: gone again
        lambda: api.get("/streams/cam2/snapshot").status_code == 404, 5, "snapshot never expired"
    )


def test_snapshots_lists_the_known_streams_that_have_one(
    redis_api, redis_server, redis_client, key_prefix
):
    cams = tuple(stream_status(f"cam{i}") for i in (1, 2, 3))
    write_status(redis_server, key_prefix, pipeline_status(cams))
    api = redis_api()
    assert api.get("/snapshots").json() == {"streams": []}
    for sid in ("cam1", "cam3", "ghost"):  # ghost: not a stream the pipeline reports
        redis_client.set(snapshot_key(key_prefix, sid), scene_jpeg(160, 90), ex=30)
    assert api.get("/snapshots").json() == {"streams": ["cam1", "cam3"]}
