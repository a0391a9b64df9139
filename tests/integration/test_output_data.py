"""What the output stage writes besides detections, from a real pipeline: per-stage latency in
the status hash, per-minute counts that add up to the published boxes, annotated JPEG
snapshots with a TTL; and counts that fail never hold detections back."""

from __future__ import annotations

import io
import json
from collections import Counter

import av
import pytest
import redis as redis_lib

from tests.conftest import wait_until
from tests.integration.helpers import config, entries, entry_count, last_entry, running
from visionflow.pipeline.letterbox import letterbox_geometry
from visionflow.schema import snapshot_key, status_key
from visionflow.workers.counts import bucket_start
from visionflow.workers.latency import STAGES, parse_latency_json

pytestmark = [pytest.mark.integration, pytest.mark.serial]  # rates, latencies, deadlines
SECONDS, FPS = 6.0, 10


def _counts_in_redis(client: redis_lib.Redis, prefix: str) -> dict[int, Counter[str]]:
    """Every counts bucket of ``prefix``: {bucket start: {field: n}}."""
    found: dict[int, Counter[str]] = {}
    for key in client.scan_iter(f"{prefix}:counts:*"):
        start = int(key.rsplit(":", 1)[1])
        found[start] = Counter({f: int(n) for f, n in client.hgetall(key).items()})
    return found


def _counts_from_entries(client: redis_lib.Redis, prefix: str, sid: str) -> dict[int, Counter[str]]:
    """The same tally made from the detections stream itself."""
    expected: dict[int, Counter[str]] = {}
    for e in entries(client, prefix, sid):
        for det in e.detections:
            bucket = expected.setdefault(bucket_start(e.capture_ts), Counter())
            bucket[f"{sid}|{det['label']}|boxes"] += 1
    return expected


def _jpeg_size(data: bytes) -> tuple[int, int]:
    with av.open(io.BytesIO(data), format="jpeg_pipe") as container:
        frame = next(container.decode(video=0))
        return frame.width, frame.height


def test_latency_counts_and_snapshots_from_a_running_pipeline(
    rtsp, make_clip, redis_server, redis_client, key_prefix
):
    clip = make_clip(640, 360, SECONDS, "h264", 31, FPS)
    server = rtsp({"scene": f"file:{clip}", "ball": "test:320x240@15"})
    cfg = config(
        [{"id": "scene", "url": server.url("scene")}, {"id": "ball", "url": server.url("ball")}],
        redis_server,
        key_prefix,
        output={"snapshot_interval_s": 0.5},
        workers={"slots_per_stream": 32},
        batching={"buffer_per_stream": 32},
    )
    n_frames = int(SECONDS * FPS)
    with running(cfg, redis_server) as pipeline:
        input_w, input_h = pipeline.model.input_size

        def hash_latency() -> dict[str, object]:
            raw = redis_client.hget(status_key(key_prefix, "scene"), "latency_ms") or ""
            latency = parse_latency_json(raw)
            return latency if "total" in latency and latency["total"].count >= 20 else {}

        latency = wait_until(hash_latency, 40, "no latency_ms with 20 entries in the status hash")
        snap_key = snapshot_key(key_prefix, "scene")
        raw_client = redis_lib.Redis.from_url(redis_server)
        try:
            jpeg = wait_until(lambda: raw_client.get(snap_key), 20, "no snapshot of 'scene'")
            ttl = raw_client.ttl(snap_key)
            ball_jpeg = wait_until(
                lambda: raw_client.get(snapshot_key(key_prefix, "ball")),
                20,
                "no snapshot of 'ball'",
            )
        finally:
            raw_client.close()
        wait_until(
            lambda: (
                (last := last_entry(redis_client, key_prefix, "scene")) and last.seq >= n_frames - 3
            ),
            SECONDS + 40,
            lambda: f"clip not fully processed: {pipeline.status().stream('scene')}",
        )
        in_memory = pipeline.status().stream("scene").latency
    # latency: every stage, sane numbers, the shape the API reads
    assert set(latency) == set(STAGES), latency
    total = latency["total"]
    assert 0 < total.p50 <= total.p99 < 10_000, total
    assert latency["inference"].p50 > 0 and latency["total"].p50 >= latency["inference"].p50
    for stage in latency.values():
        cumulative = [n for _, n in stage.buckets]
        assert cumulative == sorted(cumulative) and cumulative[-1] <= stage.count, stage
        assert stage.sum >= 0
    assert set(in_memory) == set(STAGES) and in_memory["total"].count >= total.count
    fields = json.loads(redis_client.hget(status_key(key_prefix, "scene"), "latency_ms"))
    assert set(fields["total"]) == {"p50", "p99", "count", "sum", "buckets"}
    # snapshots: decodable JPEGs of the frame as the model saw it, with a TTL
    lb = letterbox_geometry(640, 360, input_w, input_h)
    assert _jpeg_size(jpeg) == (lb.scaled_w, lb.scaled_h)
    ball_lb = letterbox_geometry(320, 240, input_w, input_h)
    assert _jpeg_size(ball_jpeg) == (ball_lb.scaled_w, ball_lb.scaled_h)
    assert 0 < ttl <= 10, ttl
    # counts (flushed at stop): per bucket and label, exactly the boxes published
    in_redis = _counts_in_redis(redis_client, key_prefix)
    for sid in ("scene", "ball"):
        expected = _counts_from_entries(redis_client, key_prefix, sid)
        got = {
            b: Counter({f: n for f, n in c.items() if f.startswith(f"{sid}|")})
            for b, c in in_redis.items()
        }
        got = {b: c for b, c in got.items() if c}
        assert got == expected, f"{sid}: counts {got} != boxes in detections {expected}"
    assert sum(sum(c.values()) for c in in_redis.values()) > 0, "the scene clip has objects"
    for key in redis_client.scan_iter(f"{key_prefix}:counts:*"):
        assert 7 * 86400 - 60 < redis_client.ttl(key) <= 7 * 86400


def test_counts_failing_in_redis_never_hold_detections_back(rtsp, killable_redis, key_prefix):
    """Redis refuses every counts write (HINCRBY denied by ACL: the counts' writes fail as
    they would with their server gone) while detections are written: they must all flow."""
    server = rtsp({"cam": "test:320x240@15"})
    cfg = config([{"id": "cam", "url": server.url("cam")}], killable_redis.url, key_prefix)
    client = redis_lib.Redis.from_url(killable_redis.url, decode_responses=True)
    try:
        client.execute_command("ACL", "SETUSER", "default", "-hincrby")
        with running(cfg, killable_redis.url) as pipeline:
            wait_until(
                lambda: entry_count(client, key_prefix, "cam") >= 60,
                40,
                lambda: f"detections stopped flowing: {pipeline.status().stream('cam')}",
            )
            status = pipeline.status()
        assert status.redis_connected, status
        assert "redis_unavailable" not in status.stream("cam").drops, status.stream("cam")
        assert list(client.scan_iter(f"{key_prefix}:counts:*")) == []
        assert len(entries(client, key_prefix, "cam")) == pipeline.status().stream("cam").published
    finally:
        client.execute_command("ACL", "SETUSER", "default", "+@all")
        client.close()
