"""GET /metrics: Prometheus text that Prometheus' own parser reads back."""

from __future__ import annotations

import json

from prometheus_client.parser import text_string_to_metric_families

from tests.unit.api.conftest import pipeline_status, stream_status, worker_status, write_status

LATENCY = {
    "inference": {
        "p50": 8.0,
        "p99": 30.0,
        "count": 10,
        "sum": 100.0,
        "buckets": [[5, 2], [10, 7], [50, 10]],
    }
}


def _families(text: str) -> dict[str, object]:
    return {f.name: f for f in text_string_to_metric_families(text)}


def _samples(family) -> dict[tuple, float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value for s in family.samples}


def test_metrics_from_redis_status(redis_api, redis_server, redis_client, key_prefix):
    status = pipeline_status(
        streams=(stream_status("cam1", drops={"inference_behind": 8, "backpressure": 2}),),
        workers=(worker_status(0, placement="GPU 0 (H100, GPU-1234abcd…)"),),
    )
    write_status(redis_server, key_prefix, status)
    redis_client.hset(f"{key_prefix}:status:cam1", "latency_ms", json.dumps(LATENCY))
    answer = redis_api().get("/metrics")
    assert answer.status_code == 200 and answer.headers["content-type"].startswith("text/plain")
    families = _families(answer.text)
    drops = _samples(families["visionflow_stream_drops"])
    assert (
        drops[("visionflow_stream_drops_total", (("reason", "backpressure"), ("stream", "cam1")))]
        == 2
    )
    assert (
        _samples(families["visionflow_stream_fps"])[
            ("visionflow_stream_fps", (("stream", "cam1"),))
        ]
        == 25
    )
    assert (
        _samples(families["visionflow_stream_reconnects"])[
            ("visionflow_stream_reconnects_total", (("stream", "cam1"),))
        ]
        == 1
    )
    state = _samples(families["visionflow_stream_state"])
    assert state[("visionflow_stream_state", (("state", "streaming"), ("stream", "cam1")))] == 1
    hist = _samples(families["visionflow_stage_latency_seconds"])
    key = (("stage", "inference"), ("stream", "cam1"))
    assert hist[("visionflow_stage_latency_seconds_bucket", (("le", "0.01"), *key))] == 7
    assert hist[("visionflow_stage_latency_seconds_bucket", (("le", "+Inf"), *key))] == 10
    assert hist[("visionflow_stage_latency_seconds_sum", key)] == 0.1
    worker = _samples(families["visionflow_worker_batches"])
    assert list(worker.values()) == [100]
    assert "visionflow_publish_pending" not in families  # Redis alone does not know it


def test_metrics_from_the_pipeline_include_the_output_stage(pipeline_api):
    api = pipeline_api(
        lambda: pipeline_status((stream_status(),), (worker_status(),), redis_pending=7)
    )
    families = _families(api.get("/metrics").text)
    assert _samples(families["visionflow_publish_pending"]) == {
        ("visionflow_publish_pending", ()): 7
    }
    assert _samples(families["visionflow_redis_connected"]) == {
        ("visionflow_redis_connected", ()): 1
    }
    assert list(_samples(families["visionflow_worker_mean_batch_size"]).values()) == [4.0]
