"""Per-worker batch-size and inference-time histograms: fed by the scheduler thread, carried
on WorkerStatus, written to and read back from the worker's Redis hash."""

from __future__ import annotations

import queue

import pytest
import redis

from tests.conftest import wait_until
from tests.unit.workers.test_scheduling import frames
from visionflow.api.sources import RedisSource
from visionflow.config import RedisConfig
from visionflow.engines.base import EngineInfo
from visionflow.pipeline.framepool import PoolCache
from visionflow.pipeline.scheduler import Scheduler, Send
from visionflow.schema import worker_key
from visionflow.workers.board import RedisStatusWriter, StatusBoard, WorkerLoadView
from visionflow.workers.latency import WORKER_HISTOGRAMS, LatencyBook, StageLatency
from visionflow.workers.messages import BatchDone, FrameBatch, WorkerReady
from visionflow.workers.scheduling import SchedulerLoop
from visionflow.workers.status import PipelineStatus, WorkerStatus


def _book(batches: list[tuple[int, float]]) -> dict[str, StageLatency]:
    book = LatencyBook(stages=WORKER_HISTOGRAMS, refresh_s=0.0)
    for size, ms in batches:
        book.observe("0", {"batch_size": size, "inference_ms": ms})
    return dict(dict(book.snapshot())["0"])


def test_batch_sizes_and_inference_ms_fall_into_their_buckets():
    hists = _book([(1, 3.0), (3, 12.0), (32, 40.0), (200, 700.0)])
    sizes, ms = hists["batch_size"], hists["inference_ms"]
    assert dict(sizes.buckets) == {1: 1, 2: 1, 4: 2, 8: 2, 16: 2, 32: 3, 64: 3, 128: 3}
    assert (sizes.count, sizes.sum) == (4, 236.0)  # 200 frames: only in +Inf
    assert dict(ms.buckets)[5] == 1 and dict(ms.buckets)[20] == 2 and dict(ms.buckets)[50] == 3
    assert dict(ms.buckets)[1000] == 4 and ms.sum == 755.0
    assert ms.p50 == 26.0  # between 12 and 40 (recent window, interpolated)


def test_the_scheduler_thread_observes_every_finished_batch_but_failed_ones():
    scheduler = Scheduler(max_batch=4, max_delay_s=0.0, buffer_per_stream=16)
    scheduler.add_stream("a")
    scheduler.add_worker(3, capacity=8)
    scheduler.worker_ready(3)
    sent: queue.Queue[Send] = queue.Queue()
    inbox: queue.Queue[object] = queue.Queue()
    loop = SchedulerLoop(scheduler, inbox, PoolCache(32, 32, 4), sent.put, lambda m: None)
    loop.batch_book.refresh_s = 0.0
    loop.start()
    try:
        inbox.put(FrameBatch(0, frames(range(4))))
        first = sent.get(timeout=5)
        inbox.put(FrameBatch(0, frames(range(4, 6))))
        second = sent.get(timeout=5)
        inbox.put(BatchDone(first.request.batch_id, 3, 4, 8.0))
        inbox.put(BatchDone(second.request.batch_id, 3, 2, 500.0, error="engine raised"))
        wait_until(lambda: scheduler.ledger.snapshot("a").in_flight == 0, 5, "batches not handled")
    finally:
        loop.stop()
    hists = dict(dict(loop.batch_book.snapshot())["3"])
    assert hists["batch_size"].count == 1 and hists["batch_size"].sum == 4
    assert hists["inference_ms"].sum == 8.0  # the failed batch's 500 ms is not inference time


def test_histograms_round_trip_through_the_worker_hash(redis_server, key_prefix):
    hists = _book([(4, 8.0), (8, 16.5), (8, 30.25)])
    board = StatusBoard("m")
    board.apply(WorkerReady(0, EngineInfo("null", "cpu", 32, 32, "float32", 8, 80), 1))
    load = WorkerLoadView(3, 20, 1, hists["batch_size"], hists["inference_ms"])
    status = board.snapshot({}, {0: load})
    worker = status.workers[0]
    assert worker.batch_size == hists["batch_size"] and worker.mean_inference_ms == 18.25
    _write(redis_server, key_prefix, status)
    client = redis.Redis.from_url(redis_server)
    try:
        raw = client.hget(worker_key(key_prefix, 0), "batch_size_hist")
        assert raw is not None and b'"buckets"' in raw
        back = RedisSource(client, key_prefix).snapshot().workers[0].status
    finally:
        client.close()
    assert worker.batch_size is not None and worker.inference_ms is not None
    assert back.batch_size == StageLatency.from_json(worker.batch_size.to_json())
    assert back.inference_ms == StageLatency.from_json(worker.inference_ms.to_json())
    assert back.inference_ms.p99 == pytest.approx(29.98, abs=0.01)
    assert back.mean_inference_ms == 18.25 and dict(back.batch_size.buckets)[4] == 1


def test_a_worker_before_its_first_batch_has_no_histograms(redis_server, key_prefix):
    idle = WorkerStatus(0, "ready", "null", "cpu", 0, 0, 0, 0, None)
    status = PipelineStatus((), (idle,), True, None, 0, "m", 1.0)
    assert status.workers[0].redis_fields()["inference_ms"] == ""
    _write(redis_server, key_prefix, status)
    client = redis.Redis.from_url(redis_server)
    try:
        back = RedisSource(client, key_prefix).snapshot().workers[0].status
    finally:
        client.close()
    assert back.batch_size is None and back.inference_ms is None and back.mean_inference_ms is None


def _write(url: str, prefix: str, status: PipelineStatus) -> None:
    writer = RedisStatusWriter(RedisConfig(url=url, key_prefix=prefix), url, lambda: status)
    writer.write()
    writer._client.close()
