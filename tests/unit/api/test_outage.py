"""Redis away: the data routes answer 503 quickly (no retry, short timeouts), one warning per
outage instead of a traceback per request, and /healthz answers while requests pend."""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
import time
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from tests.conftest import KillableRedis, wait_until
from tests.unit.api.conftest import pipeline_status, stream_status, write_status
from visionflow.api.server import ApiServer, bind, redis_app
from visionflow.config import parse_config

pytestmark = pytest.mark.serial  # answers within 1-1.5 s: latency bounds

DATA_ROUTES = (
    "/streams",
    "/streams/cam1",
    "/workers",
    "/snapshots",
    "/counts",
    "/streams/cam1/detections",
    "/streams/cam1/snapshot",
)


def _config(url: str, **api: object):
    return parse_config({"redis": {"url": url, "key_prefix": "outage"}, "api": dict(api)})


def test_data_routes_answer_503_quickly_with_one_warning(killable_redis: KillableRedis, caplog):
    write_status(killable_redis.url, "outage", pipeline_status((stream_status("cam1"),)))
    cfg = _config(killable_redis.url)
    app = redis_app(cfg, killable_redis.url)
    with TestClient(app, base_url="http://127.0.0.1", raise_server_exceptions=False) as api:
        assert api.get("/streams").status_code == 200  # connected once: a pooled connection
        killable_redis.kill()
        caplog.set_level(logging.DEBUG)
        for path in DATA_ROUTES * 2:
            started = time.monotonic()
            answer = api.get(path)
            took = time.monotonic() - started
            assert answer.status_code == 503, (path, answer.status_code, answer.text)
            assert answer.json()["detail"].startswith("Redis unavailable"), answer.text
            assert took < 1.5, f"{path} took {took:.1f}s to answer 503"
        assert api.get("/healthz").status_code == 200
    warnings = [r for r in caplog.records if "Redis unreachable" in r.getMessage()]
    assert len(warnings) == 1, [r.getMessage() for r in caplog.records]
    assert not [r for r in caplog.records if r.exc_info], "a traceback was logged"


@pytest.fixture
def frozen_redis(killable_redis: KillableRedis) -> Iterator[KillableRedis]:
    """A Redis that accepts connections and never answers (SIGSTOP), thawed afterwards."""
    assert killable_redis.server and killable_redis.server.process
    pid = killable_redis.server.process.pid
    os.kill(pid, signal.SIGSTOP)
    try:
        yield killable_redis
    finally:
        os.kill(pid, signal.SIGCONT)


def _send_get(port: int, path: str) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode())
    return sock


def _status_line(sock: socket.socket) -> str:
    with sock:
        data = b""
        while b"\r\n" not in data:
            chunk = sock.recv(4096)
            if not chunk:
                break
            data += chunk
    return data.split(b"\r\n", 1)[0].decode()


def test_healthz_answers_while_data_requests_pend_on_a_frozen_redis(frozen_redis):
    pending = 120  # three rounds of AnyIO's 40 worker threads, 1 s each
    cfg = _config(frozen_redis.url, listen="127.0.0.1:0", redis_timeout_s=1.0)
    assert cfg.api is not None
    server = ApiServer(redis_app(cfg, frozen_redis.url), bind(cfg.api)).start()
    port = server.sock.getsockname()[1]
    try:
        wait_until(lambda: server.server.started, 15, "the API server did not start")
        answers: list[str] = []
        socks = [_send_get(port, "/streams") for _ in range(pending)]
        readers = [
            threading.Thread(target=lambda s=s: answers.append(_status_line(s)), daemon=True)
            for s in socks
        ]
        for reader in readers:
            reader.start()
        started = time.monotonic()
        health = _status_line(_send_get(port, "/healthz"))
        took, done_then = time.monotonic() - started, len(answers)
        assert health.endswith("200 OK"), health
        assert took < 1.0, f"/healthz took {took:.1f}s behind {pending} pending requests"
        assert done_then <= pending - 40, f"only {pending - done_then} requests were pending"
        for reader in readers:
            reader.join(30)
        assert len(answers) == pending and all(
            a.endswith("503 Service Unavailable") for a in answers
        ), set(answers)
    finally:
        server.stop()
