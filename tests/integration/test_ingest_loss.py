"""An ingest process SIGKILLed mid-run: it is restarted, its streams resume with seq going on
(never repeated), frames it had announced are resolved, and nothing is counted twice."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from tests.conftest import wait_until
from tests.integration.helpers import (
    assert_books_balance,
    config,
    published,
    running,
    wait_published_past,
)

pytestmark = pytest.mark.integration


def test_killed_ingest_process_restarts_and_the_books_balance(
    rtsp, redis_server, redis_client, key_prefix
):
    cams = {"a": "test:320x240@15", "b": "test:320x240@15"}
    server = rtsp(cams)
    cfg = config(
        [{"id": c, "url": server.url(c)} for c in cams],
        redis_server,
        key_prefix,
        workers={"ingest_processes": 1},
    )
    with running(cfg, redis_server) as pipeline:
        wait_until(
            lambda: all(s.published >= 15 for s in pipeline.status().streams),
            30,
            lambda: f"never streamed: {pipeline.status().streams}",
        )
        child = pipeline.group.children["ingest-0"]
        old = child.process
        os.kill(old.pid, signal.SIGKILL)
        wait_until(
            lambda: child.process is not old and child.alive,
            20,
            "the ingest process was not restarted",
        )
        wait_published_past(pipeline, published(pipeline), 15, 40, "streams did not resume")
        # the dead process's frame pools are unmapped by every inference worker (a soak found
        # each ingest restart leaking them: memory and fds of every worker grew)
        dead = f"/dev/shm/vf-{pipeline.run_id}r0-"
        workers = [c.process.pid for k, c in pipeline.group.children.items() if "inference" in k]
        wait_until(
            lambda: not any(dead in Path(f"/proc/{pid}/maps").read_text() for pid in workers),
            20,
            lambda: f"an inference worker still maps the dead ingest's pools ({dead}*)",
        )
    assert_books_balance(pipeline.status(), redis_client, key_prefix)  # seq goes on, never back
