"""GET /streams, /streams/{id}, /workers from Redis and from the in-process pipeline."""

from __future__ import annotations

import json
import time

import redis
from fastapi.testclient import TestClient

from tests.conftest import wait_until
from tests.unit.api.conftest import (
    PASSWORD_URL,
    pipeline_status,
    stream_status,
    worker_status,
    write_status,
)
from visionflow.api.app import create_app
from visionflow.api.context import ApiContext
from visionflow.api.sources import PipelineSource
from visionflow.config import RedisConfig
from visionflow.schema import fleet_alive_key, fleet_nodes_key
from visionflow.streams.urls import redact_url
from visionflow.workers.board import RedisStatusWriter

LATENCY = {
    stage: {
        "p50": 5.0 + i,
        "p99": 20.0 + i,
        "count": 10,
        "sum": 80.0,
        "buckets": [[5, 4], [10, 9], [50, 10]],
    }
    for i, stage in enumerate(("decode", "queue", "inference", "publish", "total"))
}


def test_streams_from_redis_carry_every_figure_and_no_password(
    redis_api, redis_server, redis_client, key_prefix
):
    status = pipeline_status(
        streams=(
            stream_status(
                "cam1", url=redact_url(PASSWORD_URL), last_error=f"cannot open {PASSWORD_URL}"
            ),
            stream_status("cam2", state="backoff", fps=0.0),
        ),
        workers=(worker_status(0),),
    )
    write_status(redis_server, key_prefix, status)
    api = redis_api()
    body = api.get("/streams").json()
    assert "hunter2" not in json.dumps(body)
    streams = {s["id"]: s for s in body["streams"]}
    assert set(streams) == {"cam1", "cam2"}
    cam1 = streams["cam1"]
    assert cam1["url"] == "rtsp://admin:***@10.0.0.5:554/live"
    assert cam1["state"] == "streaming" and streams["cam2"]["state"] == "backoff"
    assert cam1["fps"]["decoded"] == 25.0 and cam1["fps"]["analysed"] == 12.5
    assert (cam1["frames"], cam1["published"], cam1["in_flight"]) == (750, 740, 2)
    assert cam1["drops"] == {"inference_behind": 8} and cam1["dropped"] == 8
    assert 0 <= cam1["last_frame_age_s"] < 30
    assert cam1["latency_ms"] is None  # nothing published yet: no stage measured
    assert cam1["placement"]["decoder"] == "cpu" and cam1["placement"]["workers"] == ["cpu"]
    assert cam1["labels"] == {"site": "gate"}
    one = api.get("/streams/cam2").json()
    assert one["id"] == "cam2" and one["fps"]["decoded"] == 0.0
    assert api.get("/streams/nope").status_code == 404


def test_latency_is_read_when_the_status_has_it(redis_api, redis_server, redis_client, key_prefix):
    write_status(redis_server, key_prefix, pipeline_status(streams=(stream_status("cam1"),)))
    redis_client.hset(f"{key_prefix}:status:cam1", "latency_ms", json.dumps(LATENCY))
    latency = redis_api().get("/streams/cam1").json()["latency_ms"]
    assert latency["inference"] == {"p50": 7.0, "p99": 22.0, "count": 10}
    assert set(latency) == {"decode", "queue", "inference", "publish", "total"}


def test_pipeline_status_is_taken_once_per_half_second(pipeline_api):
    calls = []

    def status():
        calls.append(time.monotonic())
        return pipeline_status(
            streams=(stream_status("a", frames=100 * len(calls)),), workers=(worker_status(0),)
        )

    api = pipeline_api(status)
    started = time.monotonic()
    first = api.get("/streams").json()
    for path in ("/streams", "/workers", "/snapshots", "/readyz"):  # one dashboard poll
        assert api.get(path).status_code == 200, path
    if time.monotonic() - started < 0.5:  # (a loaded machine may take longer)
        assert len(calls) == 1, f"Pipeline.status called {len(calls)} times in one poll"
    assert first["source"] == "pipeline" and first["model_id"] == "demo-1"
    fresh = wait_until(
        lambda: (f := api.get("/streams").json()["streams"][0]["frames"]) > 100 and f,
        10,
        "the snapshot was never taken again",
    )
    assert fresh > first["streams"][0]["frames"] and calls[1] - calls[0] >= 0.5


def test_workers_report_placement_load_and_rate(redis_api, redis_server, redis_client, key_prefix):
    placement = "GPU 1 (H100 80GB HBM3, GPU-8f3a1b2c…)"
    write_status(
        redis_server,
        key_prefix,
        pipeline_status(
            workers=(
                worker_status(0, batches=100, placement=placement),
                worker_status(1, state="starting"),
            )
        ),
    )
    api = redis_api()
    first = api.get("/workers").json()["workers"]
    assert [w["id"] for w in first] == [0, 1]
    w0 = first[0]
    assert w0["placement"] == placement and w0["backend"] == "onnxruntime"
    assert w0["mean_batch"] == 4.0 and w0["queue_depth"] == 1 and w0["restarts"] == 0
    assert w0["batches_per_s"] is None  # one sample so far
    assert w0["gpu"] is None  # no GPU with that UUID on this host
    t1 = float(redis_client.hget(f"{key_prefix}:worker:0", "updated_ts"))
    time.sleep(0.6)  # not a synchronisation: the next sample must be >= 0.5 s later
    write_status(
        redis_server,
        key_prefix,
        pipeline_status(workers=(worker_status(0, batches=160, frames=640, placement=placement),)),
    )
    t2 = float(redis_client.hget(f"{key_prefix}:worker:0", "updated_ts"))
    w0 = api.get("/workers").json()["workers"][0]
    assert w0["batches_per_s"] == round(60 / (t2 - t1), 2), (w0, t1, t2)


def test_many_workers_are_all_read(redis_api, redis_server, key_prefix):
    workers = tuple(worker_status(i) for i in range(20))  # more than one chunk of hashes
    write_status(redis_server, key_prefix, pipeline_status(workers=workers))
    assert [w["id"] for w in redis_api().get("/workers").json()["workers"]] == list(range(20))


def test_every_fleet_nodes_workers_are_listed_with_their_node(
    redis_api, redis_server, redis_client, key_prefix
):
    config = RedisConfig(url=redis_server, key_prefix=key_prefix)
    writers = {}
    for node, workers in (("gpu-a", 2), ("gpu-b", 18), ("gpu-c", 1)):  # b: > one chunk
        redis_client.hset(fleet_nodes_key(key_prefix), node, "{}")  # its heartbeat record
        if node != "gpu-c":  # c's liveness key expired: it died, its record stays a while
            redis_client.set(fleet_alive_key(key_prefix, node), "running")
        status = pipeline_status(workers=tuple(worker_status(i) for i in range(workers)))
        writers[node] = RedisStatusWriter(config, redis_server, lambda s=status: s, True, node)
        writers[node].write()
    # the nodes' worker 0 no longer collide: each has its own hash, which expires unless
    # written again within a few status intervals
    assert redis_client.exists(f"{key_prefix}:worker:gpu-a:0", f"{key_prefix}:worker:gpu-b:0") == 2
    ttl_ms = redis_client.pttl(f"{key_prefix}:worker:gpu-b:17")
    assert 0 < ttl_ms <= 5 * config.status_interval_s * 1000, ttl_ms
    assert not redis_client.exists(f"{key_prefix}:worker:0")
    api = redis_api()
    listed = [(w["node"], w["id"]) for w in api.get("/workers").json()["workers"]]
    assert listed == [("gpu-a", 0), ("gpu-a", 1), *(("gpu-b", i) for i in range(18))]
    writers["gpu-c"].write(final=True)  # a node leaving deletes its worker hashes
    assert not redis_client.exists(f"{key_prefix}:worker:gpu-c:0")
    for writer in writers.values():
        writer._client.close()
    metrics = api.get("/metrics").text
    assert 'visionflow_worker_batches_total{backend="onnxruntime",node="gpu-b",' in metrics
    write_status(redis_server, key_prefix, pipeline_status(workers=(worker_status(0),)))
    workers = api.get("/workers").json()["workers"]  # a single pipeline's (no node) too
    assert (workers[0]["node"], workers[0]["id"]) == (None, 0) and len(workers) == 21


def test_a_fleet_nodes_own_api_names_its_node(redis_server, key_prefix):
    status = pipeline_status(workers=(worker_status(0),))
    client = redis.Redis.from_url(redis_server)
    context = ApiContext(PipelineSource(lambda: status, node_id="gpu-a"), client, key_prefix)
    try:
        workers = TestClient(create_app(context, None)).get("/workers").json()["workers"]
    finally:
        client.close()
    assert [(w["node"], w["id"]) for w in workers] == [("gpu-a", 0)]
