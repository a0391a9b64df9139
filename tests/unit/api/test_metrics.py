"""GET /metrics: Prometheus text that Prometheus' own parser reads back."""

from __future__ import annotations

import json

from prometheus_client.parser import text_string_to_metric_families

from tests.unit.api.conftest import pipeline_status, stream_status, worker_status, write_status
from visionflow.workers.latency import WORKER_HISTOGRAMS, LatencyBook, StageLatency
from visionflow.workers.status import PipelineStatus, PublishStats

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
    assert hist[("visionflow_stage_latency_seconds_bucket", _le("0.01", key))] == 7
    assert hist[("visionflow_stage_latency_seconds_bucket", _le("+Inf", key))] == 10
    assert hist[("visionflow_stage_latency_seconds_sum", key)] == 0.1
    worker = _samples(families["visionflow_worker_batches"])
    assert list(worker.values()) == [100]
    assert _samples(families["visionflow_redis_pending"]) == {("visionflow_redis_pending", ()): 0}


def test_metrics_from_redis_before_the_pipeline_hash_leave_the_output_side_out(
    redis_api, redis_client, key_prefix
):
    redis_client.hset(f"{key_prefix}:worker:0", mapping={"state": "ready", "batches": "3"})
    families = _families(redis_api().get("/metrics").text)
    assert "visionflow_redis_pending" not in families  # a pipeline of an older version
    assert "visionflow_publish_errors" not in families
    assert not families["visionflow_worker_inference_seconds"].samples


def test_metrics_from_the_pipeline_include_the_output_stage(pipeline_api):
    api = pipeline_api(
        lambda: pipeline_status((stream_status(),), (worker_status(),), redis_pending=7)
    )
    families = _families(api.get("/metrics").text)
    assert _samples(families["visionflow_redis_pending"]) == {("visionflow_redis_pending", ()): 7}
    assert _samples(families["visionflow_redis_connected"]) == {
        ("visionflow_redis_connected", ()): 1
    }
    assert list(_samples(families["visionflow_worker_mean_batch_size"]).values()) == [4.0]


def _histograms() -> dict[str, StageLatency]:
    """A worker's histograms as the scheduler's batch book makes them."""
    book = LatencyBook(stages=WORKER_HISTOGRAMS, refresh_s=0.0)
    for frames, ms in [(4, 8.0), (8, 16.0), (8, 24.0), (16, 60.0)]:
        book.observe("0", {"batch_size": frames, "inference_ms": ms})
    return dict(dict(book.snapshot())["0"])


def _busy_status() -> PipelineStatus:
    h = _histograms()
    worker = worker_status(0, batch_size=h["batch_size"], inference_ms=h["inference_ms"])
    publish = PublishStats(
        errors=3, spool_entries=12, spool_bytes=6000, replayed=20, overflow=1, fenced=7
    )
    return pipeline_status((stream_status(),), (worker,), redis_pending=12, publish=publish)


def _le(bound: str, key: tuple) -> tuple:
    return tuple(sorted((("le", bound), *key)))


def _check_worker_and_output_families(text: str) -> None:
    families = _families(text)
    key = (("backend", "onnxruntime"), ("placement", "cpu"), ("worker", "0"))
    sizes = _samples(families["visionflow_worker_batch_size"])
    assert sizes[("visionflow_worker_batch_size_bucket", _le("4.0", key))] == 1
    assert sizes[("visionflow_worker_batch_size_bucket", _le("8.0", key))] == 3
    assert sizes[("visionflow_worker_batch_size_bucket", _le("+Inf", key))] == 4
    assert sizes[("visionflow_worker_batch_size_count", key)] == 4
    assert sizes[("visionflow_worker_batch_size_sum", key)] == 36
    seconds = _samples(families["visionflow_worker_inference_seconds"])
    assert seconds[("visionflow_worker_inference_seconds_bucket", _le("0.01", key))] == 1
    assert seconds[("visionflow_worker_inference_seconds_bucket", _le("0.05", key))] == 3
    assert seconds[("visionflow_worker_inference_seconds_count", key)] == 4
    assert seconds[("visionflow_worker_inference_seconds_sum", key)] == 0.108
    single = {
        "visionflow_publish_errors": ("visionflow_publish_errors_total", 3),
        "visionflow_spool_entries": ("visionflow_spool_entries", 12),
        "visionflow_spool_bytes": ("visionflow_spool_bytes", 6000),
        "visionflow_spool_replayed": ("visionflow_spool_replayed_total", 20),
        "visionflow_spool_overflow": ("visionflow_spool_overflow_total", 1),
        "visionflow_fenced": ("visionflow_fenced_total", 7),
        "visionflow_redis_pending": ("visionflow_redis_pending", 12),
    }
    for family, (sample, value) in single.items():
        assert _samples(families[family]) == {(sample, ()): value}, family


def test_worker_histograms_and_spool_from_redis(redis_api, redis_server, key_prefix):
    write_status(redis_server, key_prefix, _busy_status())
    _check_worker_and_output_families(redis_api().get("/metrics").text)


def test_worker_histograms_and_spool_from_the_pipeline(pipeline_api):
    _check_worker_and_output_families(pipeline_api(_busy_status).get("/metrics").text)


def test_workers_route_has_inference_mean_p50_p99(redis_api, redis_server, key_prefix):
    write_status(redis_server, key_prefix, _busy_status())
    body = redis_api().get("/workers").json()
    worker = body["workers"][0]
    assert worker["inference_ms"] == {"mean": 27.0, "p50": 20.0, "p99": 58.92, "count": 4}
    assert worker["batch_size"]["mean"] == 9.0
    assert body["redis"]["publish_errors"] == 3 and body["redis"]["spool_entries"] == 12
