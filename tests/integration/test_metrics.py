"""``/metrics`` of a running pipeline (real RTSP camera, real Redis that is killed for a
while): per-worker inference histograms fill up; failed writes and the spool show while Redis
is gone, the spool drains back to zero once it returns; ``visionflow api`` alone (reading
Redis) sees the same figures through the worker and pipeline hashes."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import redis
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import wait_until
from tests.integration.helpers import config, running
from visionflow.api.app import create_app
from visionflow.api.context import ApiContext
from visionflow.api.sources import PipelineSource, RedisSource, StatusSource

pytestmark = pytest.mark.integration


def _scrape(api: TestClient) -> dict[str, float]:
    """Every sample of ``/metrics`` summed over its labels: {sample name: value}."""
    text = api.get("/metrics").text
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if "le" not in s.labels:
                out[s.name] = out.get(s.name, 0.0) + s.value
    return out


def _api(source: StatusSource, client: redis.Redis, prefix: str) -> TestClient:
    return TestClient(create_app(ApiContext(source, client, prefix), None))


def _until(api: TestClient, test: Callable[[dict[str, float]], bool], timeout: float, what: str):
    seen: list[dict[str, float]] = [{}]

    def check() -> bool:
        seen[0] = _scrape(api)
        return test(seen[0])

    wait_until(check, timeout, lambda: f"{what}; last scrape: {_brief(seen[0])}", interval=0.3)
    return seen[0]


def _brief(samples: dict[str, float]) -> dict[str, float]:
    keys = ("publish_errors", "spool_", "redis_", "inference_seconds_count", "stream_published")
    return {k: v for k, v in samples.items() if any(p in k for p in keys)}


def test_worker_histograms_publish_errors_and_spool_of_a_running_pipeline(
    rtsp, killable_redis, key_prefix, tmp_path: Path
):
    server = rtsp({"cam": "test:320x240@15"})
    url = killable_redis.url
    cfg = config(
        [{"id": "cam", "url": server.url("cam")}],
        url,
        key_prefix,
        redis={
            "spool_dir": str(tmp_path / "spool"),
            "spool_after_s": 0.2,
            "socket_timeout_s": 0.5,
            "status_interval_s": 0.3,
        },
    )
    client = redis.Redis.from_url(url)
    try:
        with running(cfg, url) as pipeline:
            api = _api(PipelineSource(pipeline.status), client, key_prefix)
            first = _until(
                api,
                lambda m: (
                    m.get("visionflow_worker_inference_seconds_count", 0) > 0
                    and m.get("visionflow_worker_batch_size_count", 0) > 0
                    and m.get("visionflow_stream_published_total", 0) > 10
                ),
                60,
                "no inference histogram",
            )
            assert first["visionflow_worker_inference_seconds_sum"] > 0
            assert (
                first["visionflow_worker_batch_size_sum"]
                >= first["visionflow_worker_batch_size_count"]
            )  # at least a frame per batch
            assert first["visionflow_publish_errors_total"] == 0
            killable_redis.kill()
            down = _until(
                api,
                lambda m: (
                    m["visionflow_publish_errors_total"] > 0
                    and m["visionflow_spool_entries"] > 0
                    and m["visionflow_spool_bytes"] > 0
                ),
                30,
                "Redis down: no publish error or nothing spooled",
            )
            assert down["visionflow_redis_connected"] == 0
            killable_redis.start()
            back = _until(
                api,
                lambda m: (
                    m["visionflow_spool_entries"] == 0
                    and m["visionflow_spool_bytes"] == 0
                    and m["visionflow_spool_replayed_total"] > 0
                    and m["visionflow_redis_connected"] == 1
                ),
                40,
                "Redis back: the spool did not drain",
            )
            assert (
                back["visionflow_publish_errors_total"] >= down["visionflow_publish_errors_total"]
            )
            assert back["visionflow_spool_overflow_total"] == 0
            # `visionflow api` alone reads the same from the worker and pipeline hashes
            alone = _api(RedisSource(client, key_prefix), client, key_prefix)
            from_redis = _until(
                alone,
                lambda m: (
                    m.get("visionflow_spool_replayed_total", 0) > 0
                    and m.get("visionflow_spool_entries", 1) == 0
                ),
                20,
                "the pipeline hash never showed the drained spool",
            )
            assert from_redis["visionflow_publish_errors_total"] > 0
            assert from_redis["visionflow_worker_inference_seconds_count"] > 0
            workers = alone.get("/workers").json()["workers"]
            assert workers[0]["inference_ms"]["count"] > 0
            assert 0 < workers[0]["inference_ms"]["p50"] <= workers[0]["inference_ms"]["p99"]
    finally:
        client.close()
