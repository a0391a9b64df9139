"""``visionflow run`` stopped by SIGTERM (a service manager, ``docker stop``, Kubernetes)
shuts down like Ctrl-C: in-flight batches drain, the output stage flushes, exit 0."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import pytest
import redis

from tests.conftest import wait_until
from tests.integration.helpers import start_run
from visionflow.schema import detections_key

pytestmark = [pytest.mark.integration, pytest.mark.serial]  # rates, latencies, deadlines
STOP_DEADLINE_S = 25.0  # read_timeout_s + 3 for the readers, flush_timeout 5, joins: ~15 s


@pytest.mark.parametrize(
    "signals",
    [(signal.SIGTERM,), (signal.SIGTERM, signal.SIGINT, signal.SIGTERM)],
    ids=["sigterm", "sigterm-then-more-while-stopping"],
)
def test_sigterm_drains_flushes_and_exits_0(
    signals: tuple[signal.Signals, ...],
    rtsp,
    redis_server: str,
    redis_client: redis.Redis,
    key_prefix: str,
    tmp_path: Path,
):
    server = rtsp({"cam": "test:320x240@15"})
    cfg = {
        "streams": [{"id": "cam", "url": server.url("cam")}],
        "redis": {"url": redis_server, "key_prefix": key_prefix, "spool_dir": ""},
        "source": {"open_timeout_s": 4, "read_timeout_s": 2, "stall_timeout_s": 3},
    }
    path = tmp_path / "site.yaml"
    path.write_text(json.dumps(cfg))  # JSON is YAML
    lines: list[str] = []
    proc, reader = start_run(path, lines)
    try:
        key = detections_key(key_prefix, "cam")
        wait_until(
            lambda: proc.poll() is not None or redis_client.xlen(key) > 20,
            60,
            "visionflow run wrote no detections",
        )
        assert proc.poll() is None, "".join(lines)
        proc.send_signal(signals[0])
        sent = time.monotonic()
        for later in signals[1:]:  # an impatient operator / service manager: ignored
            wait_until(
                lambda: proc.poll() is not None or "stopping...\n" in lines, 10, "not stopping"
            )
            proc.send_signal(later)
        proc.wait(timeout=STOP_DEADLINE_S + 10)
        took = time.monotonic() - sent
        reader.join(timeout=5)
        output = "".join(lines)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, output[-3000:]
    assert took < STOP_DEADLINE_S, f"stopping took {took:.1f}s"
    assert "stopping" in output
    status = redis_client.hgetall(f"{key_prefix}:status:cam")
    assert status, f"no final status hash: {redis_client.keys(key_prefix + '*')}"
    assert status["state"] == "stopped", status
    assert status["in_flight"] == "0" and status["unaccounted"] == "0", status
    drops = json.loads(status["drops"])
    frames, published = int(status["frames"]), int(status["published"])
    assert frames == published + sum(drops.values()), status
    assert published >= redis_client.xlen(key) > 20  # all it counted is there
