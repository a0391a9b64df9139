"""An inference worker SIGKILLed mid-run: its batches move to the other worker, it restarts,
and the ledger shows every frame resolved exactly once (real RTSP cameras, real Redis)."""

from __future__ import annotations

import contextlib
import os
import signal
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import wait_until
from tests.integration.helpers import (
    assert_books_balance,
    config,
    published,
    running,
    wait_published_past,
)
from visionflow.workers.supervisor import Pipeline

pytestmark = [pytest.mark.integration, pytest.mark.serial]  # rates, latencies, deadlines


def test_killed_worker_loses_nothing_unaccounted_and_comes_back(
    rtsp, redis_server, redis_client, key_prefix, tmp_path
):
    kill_a_worker(rtsp, redis_server, redis_client, key_prefix, tmp_path, output_processes=1)


def test_with_two_output_processes_each_writes_its_streams_and_a_killed_worker_loses_nothing(
    rtsp, redis_server, redis_client, key_prefix, tmp_path
):
    """Results split by stream over two output processes: every stream still arrives whole
    and in order, and a worker killed mid-run (its batches abandoned or re-sent to both
    processes) leaves the books balanced."""
    pipeline = kill_a_worker(
        rtsp, redis_server, redis_client, key_prefix, tmp_path, output_processes=2
    )
    assert {"output-0", "output-1"} <= set(pipeline.group.children), pipeline.group.children
    shards = dict(pipeline._shards.items())
    assert sorted(shards.values()) == [0, 0, 1, 1], shards  # two streams each


def kill_a_worker(
    rtsp: Any,
    redis_server: str,
    redis_client: Any,
    key_prefix: str,
    spool: Path,
    output_processes: int,
) -> Pipeline:
    cams = {f"cam{i}": "test:320x240@15" for i in range(4)}
    server = rtsp(cams)
    cfg = config(
        [{"id": c, "url": server.url(c)} for c in cams],
        redis_server,
        key_prefix,
        workers={"inference_workers": 2},
        batching={"max_batch": 4, "max_delay_ms": 10, "max_inflight_per_worker": 2},
        output={"processes": output_processes},
        redis={"url": redis_server, "key_prefix": key_prefix, "spool_dir": str(spool)},
    )
    with running(cfg, redis_server) as pipeline:
        wait_until(
            lambda: all(w.batches >= 5 for w in pipeline.status().workers),
            40,
            lambda: f"both workers should take batches: {pipeline.status().workers}",
        )
        victim = pipeline.group.children["inference-0"].process
        os.kill(victim.pid, signal.SIGKILL)
        wait_until(
            lambda: pipeline.status().workers[0].restarts == 1,
            15,
            lambda: f"the killed worker was never noticed: {pipeline.status().workers}",
        )
        before = published(pipeline)
        wait_until(
            lambda: pipeline.status().workers[0].state == "ready",
            60,
            lambda: f"the killed worker never came back: {pipeline.status().workers}",
        )
        wait_published_past(pipeline, before, 20, 30, "publishing did not go on")
    final = pipeline.status()
    assert_books_balance(final, redis_client, key_prefix)
    for s in final.streams:
        assert set(s.drops) <= {"worker_lost", "inference_behind", "backpressure"}, s.drops
    return pipeline


def test_a_wedged_output_process_is_killed_and_publishing_resumes(
    rtsp, redis_server, redis_client, key_prefix, tmp_path, monkeypatch
):
    """An output process that stops answering (SIGSTOP: as wedged in a C call) sends no
    stats; silent past its limit (``OUTPUT_SILENT_S``, at least the batch deadline + 15 s;
    6 s here) it is killed and restarted, and every stream is published again."""
    from visionflow.workers import supervisor

    monkeypatch.setattr(supervisor.Pipeline, "_output_silent_s", lambda self: 6.0)
    cams = {f"cam{i}": "test:320x240@15" for i in range(2)}
    server = rtsp(cams)
    cfg = config(
        [{"id": c, "url": server.url(c)} for c in cams],
        redis_server,
        key_prefix,
        batching={"max_batch": 4, "max_delay_ms": 10},
        output={"processes": 1},
        redis={"url": redis_server, "key_prefix": key_prefix, "spool_dir": str(tmp_path)},
    )
    with running(cfg, redis_server) as pipeline:
        wait_until(
            lambda: all(s.published >= 10 for s in pipeline.status().streams),
            40,
            lambda: f"nothing published: {pipeline.status().streams}",
        )
        output = pipeline.group.children["output"]
        wedged = output.process.pid
        os.kill(wedged, signal.SIGSTOP)
        try:
            wait_until(
                lambda: output.restarts >= 1 and output.alive and output.process.pid != wedged,
                30,
                lambda: f"the silent output process was never restarted: {output}",
            )
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.kill(wedged, signal.SIGCONT)  # not left stopped if the test failed
        wait_published_past(pipeline, published(pipeline), 20, 60, "publishing did not resume")
