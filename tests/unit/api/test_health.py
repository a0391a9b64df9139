"""GET /healthz and /readyz."""

from __future__ import annotations

import time

import redis
from fastapi.testclient import TestClient

from tests.conftest import wait_until
from tests.unit.api.conftest import pipeline_status, stream_status, worker_status, write_status
from visionflow.api.app import create_app
from visionflow.api.context import ApiContext
from visionflow.api.sources import RedisSource
from visionflow.redis_server import free_port


def test_ready_only_once_a_worker_has_loaded_its_model(pipeline_api):
    states = {"w": "starting"}
    api = pipeline_api(lambda: pipeline_status(workers=(worker_status(0, state=states["w"]),)))
    assert api.get("/healthz").json() == {"status": "ok"}
    answer = api.get("/readyz")
    assert answer.status_code == 503
    assert "worker 0 starting" in answer.json()["reasons"][0]
    states["w"] = "ready"  # seen once the status snapshot (kept 0.5 s) is taken again
    answer = wait_until(
        lambda: (a := api.get("/readyz")).status_code == 200 and a, 10, "never ready"
    )
    assert answer.json()["workers"] == {"ready": 1, "total": 1}


def test_not_ready_when_the_output_stage_lost_redis(pipeline_api):
    api = pipeline_api(
        lambda: pipeline_status(
            workers=(worker_status(0),), redis_connected=False, redis_error="Connection refused"
        )
    )
    answer = api.get("/readyz")
    assert answer.status_code == 503 and "cannot reach Redis" in answer.json()["reasons"][0]


def test_redis_source_is_not_ready_when_status_is_stale(redis_api, redis_server, key_prefix):
    api = redis_api(stale_after_s=1.0)
    answer = api.get("/readyz")
    assert answer.status_code == 503 and "no pipeline status" in " ".join(answer.json()["reasons"])
    write_status(redis_server, key_prefix, pipeline_status((stream_status(),), (worker_status(),)))
    assert api.get("/readyz").status_code == 200
    deadline = time.monotonic() + 10
    while api.get("/readyz").status_code == 200 and time.monotonic() < deadline:
        time.sleep(0.2)
    answer = api.get("/readyz")
    assert answer.status_code == 503 and "last written" in " ".join(answer.json()["reasons"])


def test_unreachable_redis_is_503_not_500(key_prefix):
    client = redis.Redis(port=free_port(), socket_connect_timeout=0.5, socket_timeout=0.5)
    api = TestClient(
        create_app(ApiContext(RedisSource(client, key_prefix), client, key_prefix), None)
    )
    assert api.get("/healthz").status_code == 200
    answer = api.get("/readyz")
    assert answer.status_code == 503 and "redis unreachable" in answer.json()["reasons"][0]
