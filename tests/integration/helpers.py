"""Running a real pipeline inside a test."""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import redis

from tests.conftest import ROOT
from visionflow.config import AppConfig, parse_config
from visionflow.schema import Entry, detections_key, parse_entry
from visionflow.workers.supervisor import Pipeline


def config(streams: list[dict[str, Any]], redis_url: str, prefix: str, **extra: Any) -> AppConfig:
    raw: dict[str, Any] = {
        "streams": streams,
        "redis": {"url": redis_url, "key_prefix": prefix},
        "source": {
            "open_timeout_s": 4,
            "read_timeout_s": 2,
            "stall_timeout_s": 3,
            "backoff_initial_s": 0.3,
            "backoff_max_s": 2,
            # FFmpeg's default probing (up to 5 s) adds ~1.5 s to every open and reconnect
            # of a 10-15 fps test camera; the CLI tests (configs of their own) and
            # test_end_to_end's four cameras keep it
            "analyze_duration_s": 1,
            "allowed_schemes": ["rtsp", "rtsps", "file"],
        },
    }
    for key, value in extra.items():  # a section given here is merged into the defaults
        base = raw.get(key)
        raw[key] = (
            {**base, **value} if isinstance(base, dict) and isinstance(value, dict) else value
        )
    return parse_config(raw, "<test>")


@contextlib.contextmanager
def running(cfg: AppConfig, redis_url: str) -> Iterator[Pipeline]:
    pipeline = Pipeline(cfg, redis_url, log_level=logging.INFO)
    pipeline.start()
    try:
        pipeline.wait_ready(60)
        yield pipeline
    finally:
        pipeline.stop()


def published(pipeline: Pipeline) -> dict[str, int]:
    """Each stream's published count now."""
    return {s.stream_id: s.published for s in pipeline.status().streams}


def wait_published_past(
    pipeline: Pipeline, before: dict[str, int], more: int, timeout: float, what: str
) -> None:
    """Wait until every stream has published ``more`` entries past ``before``."""
    from tests.conftest import wait_until

    wait_until(
        lambda: all(s.published >= before[s.stream_id] + more for s in pipeline.status().streams),
        timeout,
        lambda: f"{what}: {pipeline.status().streams}",
    )


def entries(client: redis.Redis, prefix: str, stream_id: str) -> list[Entry]:
    return [parse_entry(i, f) for i, f in client.xrange(detections_key(prefix, stream_id))]


def entry_count(client: redis.Redis, prefix: str, stream_id: str) -> int:
    """``len(entries(...))`` without reading them (XLEN): cheap enough to poll."""
    return int(client.xlen(detections_key(prefix, stream_id)))


def last_entry(client: redis.Redis, prefix: str, stream_id: str) -> Entry | None:
    """``entries(...)[-1]`` without reading the others (XREVRANGE COUNT 1); None while the
    stream is empty.  Polling this instead of every entry keeps a waiting test from taking
    the CPU the pipeline under test needs."""
    newest = client.xrevrange(detections_key(prefix, stream_id), count=1)
    return parse_entry(*newest[0]) if newest else None


def assert_books_balance(status: Any, client: redis.Redis, prefix: str) -> None:
    """After stop: no ledger violation; every stream fully accounted with nothing in flight;
    Redis holds exactly the published entries, seq strictly increasing (never repeated)."""
    assert status.ledger_violations == 0
    for s in status.streams:
        assert s.in_flight == 0 and s.unaccounted == 0 and s.accounted, s
        seqs = [e.seq for e in entries(client, prefix, s.stream_id)]
        assert all(b > a for a, b in itertools.pairwise(seqs)), f"{s.stream_id}: seq repeated"
        assert len(seqs) == s.published, s


def start_cli(
    args: list[str], lines: list[str], env: dict[str, str] | None = None
) -> tuple[subprocess.Popen[str], threading.Thread]:
    """``python -m visionflow <args>`` of this checkout in the background (``env`` added to
    the environment); its output (stdout and stderr) is appended to ``lines`` by the
    returned thread."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "visionflow", *args],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
    )
    assert proc.stdout is not None
    stdout = proc.stdout
    reader = threading.Thread(target=lambda: lines.extend(stdout), daemon=True)
    reader.start()
    return proc, reader


def start_run(path: Path, lines: list[str]) -> tuple[subprocess.Popen[str], threading.Thread]:
    """``visionflow run -c path --plain`` in the background (see :func:`start_cli`)."""
    return start_cli(["run", "-c", str(path), "--plain"], lines)


@contextlib.contextmanager
def visionflow_cli(*args: str, env: dict[str, str] | None = None) -> Iterator[list[str]]:
    """``python -m visionflow <args>`` in the background; yields its output lines as they
    come; SIGTERM at the end, and the process must still have been running then."""
    lines: list[str] = []
    proc, reader = start_cli(list(args), lines, env)
    try:
        yield lines
        assert proc.poll() is None, "".join(lines)
    finally:
        stop_process(proc, signal.SIGTERM, 40)
        reader.join(timeout=5)


def stop_process(proc: subprocess.Popen[Any], sig: int, timeout: float) -> None:
    """Send ``sig``; SIGKILL the process if it has not exited within ``timeout`` s."""
    proc.send_signal(sig)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def http_get(base: str, path: str, **kwargs: Any) -> httpx.Response | None:
    """GET ``base + path``; None when nothing answers."""
    try:
        return httpx.get(base + path, timeout=5, **kwargs)
    except httpx.HTTPError:
        return None
