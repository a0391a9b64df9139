"""The ``visionflow`` command as a user runs it (subprocesses)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration


def visionflow(*args: str, env: dict[str, str] | None = None, timeout: float = 120):
    return subprocess.run(
        [sys.executable, "-m", "visionflow", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )


def test_validate_bad_config_exits_2_naming_file_stream_and_field(tmp_path: Path):
    path = tmp_path / "site.yaml"
    path.write_text(
        "streams:\n  - id: lobby\n    url: rtsp://a:b@h/x\n  - id: dock\n    url: rtsp://h/y\n    fps_cap: 0\n"
    )
    result = visionflow("validate", "-c", str(path))
    assert result.returncode == 2, result
    assert str(path) in result.stderr and "'dock'" in result.stderr and "fps_cap" in result.stderr
    assert "a:b@" not in result.stderr + result.stdout


def test_validate_good_config(tmp_path: Path):
    path = tmp_path / "site.yaml"
    path.write_text("streams:\n  - id: lobby\n    url: rtsp://cam/x\n")
    result = visionflow("validate", "-c", str(path))
    assert result.returncode == 0 and "1 stream(s)" in result.stdout, result


def test_run_with_a_missing_model_exits_2(tmp_path: Path):
    path = tmp_path / "site.yaml"
    path.write_text(
        "model: {path: nowhere.onnx}\nsource: {allowed_schemes: [file]}\n"
        "streams:\n  - id: a\n    url: x.mp4\n"
    )
    result = visionflow("run", "-c", str(path), "--duration", "1", "--plain")
    assert result.returncode == 2 and "nowhere.onnx" in result.stderr, result


#: the demo scene the demo renders itself in the test; the others are found in its cache
RENDERED_BY_DEMO = "gate"
#: the demo loops its clips; its --snapshot-dir PNGs are taken 60 frames (2 s) into them
CACHED_SECONDS = 3.0


def test_demo_runs_publishes_and_writes_snapshots(tmp_path: Path):
    """The demo renders a scene missing from its cache and uses the cached ones as they are
    (rendering all four 12 s scenes took most of this test's minute and a half)."""
    from visionflow.demo import DEMO_SCENES, demo_clip_path, demo_folder
    from visionflow.scenes.clips import write_clip
    from visionflow.scenes.generator import SceneSpec

    cache = tmp_path / "cache"
    paths = {scene[0]: demo_clip_path(demo_folder(cache), scene) for scene in DEMO_SCENES}
    cached = {}
    for sid, w, h, codec, seed in DEMO_SCENES:
        if sid != RENDERED_BY_DEMO:
            write_clip(SceneSpec(w, h, seed=seed), paths[sid], CACHED_SECONDS, codec)  # type: ignore[arg-type]
            cached[sid] = paths[sid].stat().st_mtime_ns
    snaps = tmp_path / "snaps"
    result = visionflow(
        "demo",
        "--duration",
        "12",  # 8 s published 49 entries on a 2-core AMD EPYC VM at 2 GHz
        "--plain",
        "--snapshot-dir",
        str(snaps),
        env={"VISIONFLOW_CACHE": str(cache)},
        timeout=240,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert {sid: paths[sid].stat().st_mtime_ns for sid in cached} == cached, "re-rendered"
    assert paths[RENDERED_BY_DEMO].is_file(), "the missing scene was not rendered"
    assert (
        "redis-cli -p" in result.stdout and "XREVRANGE visionflow:detections:lobby" in result.stdout
    )
    for stream in ("lobby", "parking", "street", "gate"):
        png = snaps / f"{stream}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"{stream}:streaming" in result.stdout or f"{stream}:stopped" in result.stdout
    published = [
        int(tok.split(":")[3].removesuffix("pub"))
        for tok in result.stdout.split()
        if tok.count(":") == 3 and tok.endswith("pub")
    ]
    assert published and max(published) > 50, result.stdout


def test_run_keeps_a_configured_redis_that_is_down_and_delivers_once_it_is_up(
    rtsp, killable_redis, tmp_path: Path
):
    """`visionflow run` never swaps a configured but unreachable Redis for a private one
    (consumers of the configured one would see nothing): it says so, spools, and delivers
    when that Redis comes up."""
    import json
    import signal

    import redis

    from tests.conftest import wait_until
    from tests.integration.helpers import start_run

    killable_redis.kill()
    server = rtsp({"cam": "test:160x120@10"})
    cfg = {
        "streams": [{"id": "cam", "url": server.url("cam")}],
        "redis": {"url": killable_redis.url, "key_prefix": "down", "spool_dir": str(tmp_path)},
    }
    path = tmp_path / "site.yaml"
    path.write_text(json.dumps(cfg))
    lines: list[str] = []
    proc, reader = start_run(path, lines)
    try:
        wait_until(lambda: "not reachable yet" in "".join(lines), 60, lambda: "".join(lines))
        assert "private local server" not in "".join(lines)
        killable_redis.start()
        client = redis.Redis.from_url(killable_redis.url)
        wait_until(
            lambda: client.xlen("down:detections:cam") > 0,
            60,
            lambda: f"nothing delivered to the configured Redis: {''.join(lines)[-2000:]}",
        )
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
        reader.join(timeout=5)


def test_run_no_api_does_not_serve_the_config_api_section(
    tmp_path: Path, redis_server: str, redis_client, key_prefix: str
):
    """docker/compose.yaml's pipeline services: the api: section is the api service's."""
    import json
    import socket

    from tests.conftest import wait_until
    from tests.integration.helpers import visionflow_cli
    from visionflow.redis_server import free_port
    from visionflow.schema import pipeline_key

    port = free_port()
    path = tmp_path / "site.yaml"
    cfg = {
        "streams": [],
        "redis": {"url": redis_server, "key_prefix": key_prefix, "spool_dir": ""},
        "api": {"listen": f"127.0.0.1:{port}"},
    }
    path.write_text(json.dumps(cfg))
    with visionflow_cli("run", "-c", str(path), "--plain", "--no-api") as lines:
        wait_until(
            lambda: redis_client.exists(pipeline_key(key_prefix)),
            60,
            lambda: f"the pipeline never wrote its status: {''.join(lines)[-3000:]}",
        )
        with socket.socket() as sock:
            assert sock.connect_ex(("127.0.0.1", port)) != 0, "the API is served"
        assert "Dashboard and API" not in "".join(lines)
