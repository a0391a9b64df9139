"""No password from a stream URL reaches logs, Redis or the status table."""

from __future__ import annotations

import io

import pytest
from rich.console import Console

from tests.conftest import wait_until
from tests.integration.helpers import config, running
from visionflow.cli import render_status
from visionflow.streams.state import StreamState

pytestmark = pytest.mark.integration
SECRET = "s3cr3tPassw0rd"
WRONG = "wr0ngPassw0rd"
ENV_SECRET = "fr0mEnvPassw0rd"


def test_passwords_never_leak(rtsp, redis_server, redis_client, key_prefix, capfd, monkeypatch):
    monkeypatch.setenv("VF_TEST_PW", ENV_SECRET)
    server = rtsp({"cam": "test:320x240@15"}, auth=f"viewer:{SECRET}")
    cfg = config(
        [
            {"id": "good", "url": server.url("cam", f"viewer:{SECRET}")},
            {"id": "denied", "url": server.url("cam", f"viewer:{WRONG}")},
            {"id": "env", "url": "rtsp://viewer:${VF_TEST_PW}@127.0.0.1:9/x"},
        ],
        redis_server,
        key_prefix,
    )
    with running(cfg, redis_server) as pipeline:
        wait_until(lambda: pipeline.status().stream("good").published > 10, 20, "no frames")
        wait_until(
            lambda: (
                pipeline.status().stream("denied").state is StreamState.BACKOFF
                and pipeline.status().stream("denied").last_error
            ),
            15,
            "denied stream did not fail",
        )
        wait_until(lambda: redis_client.exists(f"{key_prefix}:status:denied"), 5, "no status")
        status = pipeline.status()
        table = io.StringIO()
        Console(file=table, width=300).print(render_status(status, {}))
    captured = capfd.readouterr()
    text = captured.out + captured.err + table.getvalue() + repr(status)
    for key in redis_client.scan_iter(f"{key_prefix}:*"):
        kind = redis_client.type(key)
        if kind == "hash":
            text += repr(redis_client.hgetall(key))
        elif kind == "stream":
            text += repr(redis_client.xrange(key))
    assert "401" in text or "Unauthorized" in text, "the auth failure should be reported"
    assert "viewer:***@" in text
    for secret in (SECRET, WRONG, ENV_SECRET):
        assert secret not in text
