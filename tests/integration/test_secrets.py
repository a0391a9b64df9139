"""Secrets (issue #9): the Redis password and camera passwords come from secret files and the
environment, and never show in any process's command line or title, in the logs (FFmpeg's
errors included) or in Redis, with the pipeline started as a user starts it (the CLI)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import redis
import yaml

from tests.conftest import ROOT, wait_until
from tests.integration.helpers import stop_process
from tests.integration.secure_redis import PASSWORDS, PREFIX, publish, sink_config

pytestmark = pytest.mark.integration
CAMERA_PW = "cam-Pw-61v"
WRONG_PW = "bad-Pw-07h"


def descendants(root: int) -> list[int]:
    """``root`` and every process below it (from /proc/<pid>/stat's parent field)."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    found, frontier = [root], [root]
    while frontier:
        frontier = [pid for pid, parent in parents.items() if parent in frontier]
        found += frontier
    return found


def titles(pids: list[int]) -> dict[int, str]:
    """What ps shows: the command line (NULs as spaces) and the name (comm)."""
    out: dict[int, str] = {}
    for pid in pids:
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
            out[pid] = cmdline + " | " + Path(f"/proc/{pid}/comm").read_text().strip()
        except OSError:
            continue  # ended meanwhile
    return out


def redis_text(admin: redis.Redis) -> str:
    text = ""
    for key in admin.scan_iter("*"):
        kind = admin.type(key)
        if kind == "hash":
            text += repr(admin.hgetall(key))
        elif kind == "stream":
            text += repr(admin.xrange(key))
        elif kind == "set":
            text += repr(admin.smembers(key))
        elif kind == "string":  # raw: a snapshot is a JPEG, not UTF-8
            raw = admin.execute_command("GET", key, NEVER_DECODE=True)
            text += raw.decode("latin-1") if raw is not None else ""
    return text


def test_secrets_stay_out_of_argv_titles_logs_and_redis(rtsp, tls_redis, tmp_path):
    server = tls_redis()
    camera = rtsp({"cam": "test:160x120@10"}, auth=f"viewer:{CAMERA_PW}")
    (tmp_path / "camera-password").write_text(CAMERA_PW + "\n")
    cfg = {
        "streams": [
            {"id": "cam", "url": f"rtsp://viewer:${{file:camera-password}}@127.0.0.1:{camera.port}/cam"},
            {"id": "denied", "url": f"rtsp://viewer:${{VF_TEST_WRONG_PW}}@127.0.0.1:{camera.port}/cam"},
        ],
        "redis": {"key_prefix": PREFIX, "tls_ca_file": "ca.crt", "spool_dir": "spool"},
        "source": {"backoff_initial_s": 0.5, "backoff_max_s": 2},
    }  # fmt: skip
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "VF_TEST_REDIS_URL": server.url("vf-publisher"),
        "VF_TEST_WRONG_PW": WRONG_PW,
    }
    env.pop("VISIONFLOW_REDIS_URL", None)
    log = (tmp_path / "run.log").open("w")
    args = ["run", "-c", "cfg.yaml", "--plain", "--duration", "120"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "visionflow", *args, "--redis-url", "${VF_TEST_REDIS_URL}"],
        cwd=tmp_path,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    admin = server.admin()
    secrets = (PASSWORDS["vf-publisher"], CAMERA_PW, WRONG_PW)
    try:
        wait_until(
            lambda: int(admin.hget(f"{PREFIX}:status:cam", "published") or 0) > 10,
            90,
            lambda: f"the CLI never published over TLS:\n{(tmp_path / 'run.log').read_text()}",
        )
        wait_until(
            lambda: admin.hget(f"{PREFIX}:status:denied", "last_error"), 30, "denied: no error"
        )
        seen = titles(descendants(proc.pid))
        assert len(seen) >= 4, f"expected the CLI, output, inference and ingest: {seen}"
        assert "${VF_TEST_REDIS_URL}" in seen[proc.pid]
        for pid, title in seen.items():
            for secret in secrets:
                assert secret not in title, f"process {pid} shows a password: {title}"
    finally:
        stop_process(proc, signal.SIGINT, 60)
        log.close()
    logs = (tmp_path / "run.log").read_text()
    assert "401" in logs or "Unauthorized" in logs, logs[-3000:]  # FFmpeg's refusal, redacted
    stored = redis_text(admin)
    admin.close()
    assert "viewer:***@" in stored
    for secret in secrets:
        assert secret not in logs, f"a password in the logs:\n{logs[-3000:]}"
        assert secret not in stored, "a password in Redis"


def test_consume_takes_the_url_from_visionflow_redis_url(tls_redis, tmp_path):
    """`visionflow consume` over TLS as the consumer user, the URL (with its password) only in
    the environment: VISIONFLOW_REDIS_URL."""
    server = tls_redis()
    publish(sink_config(server, tmp_path), server.url("vf-publisher"), 5)
    cfg = {"streams": [{"id": "cam", "url": "rtsp://127.0.0.1:9/x"}],
           "redis": {"key_prefix": PREFIX, "tls_ca_file": server.ca}}  # fmt: skip
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "VISIONFLOW_REDIS_URL": server.url("vf-consumer")}
    done = subprocess.run(
        [sys.executable, "-m", "visionflow", "consume", "-c", "cfg.yaml", "--from-start", "--max", "5"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "acked 5" in done.stderr, done.stderr
    assert PASSWORDS["vf-consumer"] not in done.stdout + done.stderr
