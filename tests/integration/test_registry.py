"""Runtime stream changes through the registry in Redis, applied to a running pipeline with
real RTSP cameras; they survive a restart; the config file is hot-reloaded by
``visionflow run``; no password reaches Redis."""

from __future__ import annotations

import json
import signal
from typing import Any

import pytest
import redis
from cryptography.fernet import Fernet

from tests.conftest import wait_until
from tests.integration.helpers import config, entries, running, start_run
from visionflow.config import AppConfig
from visionflow.schema import detections_key, status_key
from visionflow.streams.config import StreamConfig
from visionflow.streams.control import StreamPatch
from visionflow.streams.registry import StreamRegistry
from visionflow.streams.secrets import KEY_ENV
from visionflow.workers.reconcile import Reconciler
from visionflow.workers.supervisor import Pipeline

pytestmark = [pytest.mark.integration, pytest.mark.serial]  # rates, latencies, deadlines
SECRET = "Reg1stry-S3cret"
CAM = "test:320x240@15"


def published(client: redis.Redis, prefix: str, sid: str) -> int:
    return int(client.xlen(detections_key(prefix, sid)))


def keep_publishing(client: redis.Redis, prefix: str, ids: list[str], pipeline: Pipeline) -> None:
    """Every stream in ``ids`` publishes at least 10 more entries (bounded wait)."""
    before = {sid: published(client, prefix, sid) for sid in ids}
    wait_until(
        lambda: all(published(client, prefix, sid) >= before[sid] + 10 for sid in ids),
        30,
        lambda: (
            f"not all of {ids} kept publishing: before {before}, now "
            f"{ {sid: published(client, prefix, sid) for sid in ids} }; "
            f"{[(s.stream_id, s.state, s.last_error) for s in pipeline.status().streams]}"
        ),
    )


def stream_status(pipeline: Pipeline, sid: str) -> Any:
    return next((s for s in pipeline.status().streams if s.stream_id == sid), None)


def every_value(client: redis.Redis, prefix: str) -> str:
    """All keys under ``prefix`` and every value in them, whatever their type."""
    out = []
    kw = client.connection_pool.connection_kwargs
    raw = redis.Redis(host=kw["host"], port=kw["port"], db=kw.get("db", 0))
    for key in client.scan_iter(f"{prefix}:*"):
        kind = client.type(key)
        if kind == "hash":
            value: Any = client.hgetall(key)
        elif kind == "string":  # JPEG snapshots too: read as bytes, searched as latin-1
            value = raw.get(key).decode("latin-1")
        elif kind == "stream":
            value = client.xrange(key)
        elif kind == "set":
            value = client.smembers(key)
        elif kind == "list":
            value = client.lrange(key, 0, -1)
        else:
            value = kind
        out.append(f"{key}: {value}")
    return "\n".join(out)


def start(cfg: AppConfig, redis_url: str) -> tuple[StreamRegistry, AppConfig]:
    """What ``visionflow run`` does: the desired set from the registry is the start set."""
    registry = StreamRegistry.from_config(cfg, redis_url)
    return registry, cfg.model_copy(update={"streams": list(registry.desired().streams)})


def test_runtime_changes_apply_in_place_and_survive_a_restart(
    rtsp, redis_server, redis_client, key_prefix, monkeypatch
):
    monkeypatch.setenv(KEY_ENV, Fernet.generate_key().decode())
    server = rtsp({"a": CAM, "b": CAM, "c": CAM}, auth=f"viewer:{SECRET}")
    creds = f"viewer:{SECRET}"
    cfg = config(
        [{"id": sid, "url": server.url(sid, creds)} for sid in ("a", "b")],
        redis_server,
        key_prefix,
        registry={"poll_interval_s": 0.2},
    )
    count = lambda sid: published(redis_client, key_prefix, sid)  # noqa: E731
    registry, start_cfg = start(cfg, redis_server)
    with running(start_cfg, redis_server) as pipeline:
        reconciler = Reconciler(pipeline, registry, cfg)
        reconciler.start()
        try:
            keep_publishing(redis_client, key_prefix, ["a", "b"], pipeline)
            # add a third camera (inline password: stored encrypted)
            registry.add(StreamConfig(id="c", url=server.url("c", creds), labels={"k": "v"}))
            wait_until(
                lambda: count("c") > 10,
                30,
                lambda: f"c never published: {stream_status(pipeline, 'c')}",
            )
            keep_publishing(redis_client, key_prefix, ["a", "b", "c"], pipeline)

            # disable: c stops, listed as disabled; the others go on
            registry.update("c", StreamPatch(enabled=False))
            wait_until(
                lambda: (
                    (s := stream_status(pipeline, "c"))
                    and s.state == "disabled"
                    and s.in_flight == 0
                ),
                20,
                lambda: f"c not disabled: {stream_status(pipeline, 'c')}",
            )
            frozen = count("c")
            keep_publishing(redis_client, key_prefix, ["a", "b"], pipeline)
            assert count("c") == frozen, "a disabled stream published"
            wait_until(
                lambda: redis_client.hget(status_key(key_prefix, "c"), "state") == "disabled",
                10,
                "the Redis status hash never showed c disabled",
            )
            # enable again: c resumes, its counters went on (not reset)
            frames_before = stream_status(pipeline, "c").frames
            registry.update("c", StreamPatch(enabled=True))
            wait_until(
                lambda: count("c") >= frozen + 10,
                30,
                lambda: f"c did not resume: {stream_status(pipeline, 'c')}",
            )
            assert stream_status(pipeline, "c").frames > frames_before
            keep_publishing(redis_client, key_prefix, ["a", "b"], pipeline)

            # analysis_fps and labels of a file stream, in place
            registry.update("a", StreamPatch(analysis_fps=3, labels={"zone": "gate"}))
            wait_until(
                lambda: (
                    (s := stream_status(pipeline, "a")).target_fps == 3
                    and s.labels == {"zone": "gate"}
                ),
                15,
                lambda: f"a not updated: {stream_status(pipeline, 'a')}",
            )
            # remove a file stream: gone; the others go on
            registry.remove("b")
            wait_until(lambda: stream_status(pipeline, "b") is None, 15, "b still listed")
            keep_publishing(redis_client, key_prefix, ["a", "c"], pipeline)
        finally:
            reconciler.stop()
    registry.close()

    # restart on the same Redis: c is back, b stays removed, a keeps its patch
    restarted = config(
        [{"id": sid, "url": server.url(sid, creds)} for sid in ("a", "b")],
        redis_server,
        key_prefix,
    )
    registry, start_cfg = start(restarted, redis_server)
    assert [s.id for s in start_cfg.streams] == ["a", "c"]
    with running(start_cfg, redis_server) as pipeline:
        keep_publishing(redis_client, key_prefix, ["a", "c"], pipeline)
        a = stream_status(pipeline, "a")
        assert a.labels == {"zone": "gate"} and a.target_fps == 3
        assert stream_status(pipeline, "b") is None
    registry.close()
    stored = every_value(redis_client, key_prefix)
    assert f"{key_prefix}:registry" in stored and "127.0.0.1" in stored
    assert SECRET not in stored, "a password reached Redis"


def test_visionflow_run_hot_reloads_the_config_file_and_follows_the_registry(
    rtsp, redis_server, redis_client, key_prefix, tmp_path
):
    server = rtsp({"a": CAM, "e": CAM, "f": CAM})
    raw: dict[str, Any] = {
        "streams": [{"id": "a", "url": server.url("a")}],
        "redis": {"url": redis_server, "key_prefix": key_prefix, "spool_dir": ""},
        "source": {"open_timeout_s": 4, "read_timeout_s": 2, "stall_timeout_s": 3},
        "registry": {"poll_interval_s": 0.2, "watch_interval_s": 0.2},
    }
    path = tmp_path / "site.yaml"
    path.write_text(json.dumps(raw))  # JSON is YAML
    lines: list[str] = []
    proc, _ = start_run(path, lines)
    count = lambda sid: published(redis_client, key_prefix, sid)  # noqa: E731
    output = lambda: "".join(lines)[-3000:]  # noqa: E731
    try:
        wait_until(lambda: proc.poll() is not None or count("a") > 10, 60, output)
        assert proc.poll() is None, output()
        # a valid edit: one stream more, and a section that needs a restart
        raw["streams"].append({"id": "e", "url": server.url("e")})
        raw["batching"] = {"max_batch": 4}
        path.write_text(json.dumps(raw))
        wait_until(lambda: count("e") > 10, 40, lambda: f"e never published:\n{output()}")
        wait_until(lambda: "need a restart" in output(), 10, output)
        assert "batching" in output()
        # an invalid edit: reported precisely, the running streams are kept
        before = {sid: count(sid) for sid in ("a", "e")}
        raw["streams"][0]["analysis_fps"] = -1
        path.write_text(json.dumps(raw))
        wait_until(lambda: "is invalid" in output(), 10, output)
        assert "stream 'a' (streams[0]), field 'analysis_fps'" in output()
        wait_until(
            lambda: all(count(sid) >= before[sid] + 10 for sid in before),
            30,
            lambda: f"streams stopped after an invalid edit:\n{output()}",
        )
        assert proc.poll() is None
        # the registry (e.g. written by an API process) is followed too
        reg_cfg = config([{"id": "a", "url": server.url("a")}], redis_server, key_prefix)
        registry = StreamRegistry.from_config(reg_cfg, redis_server)
        registry.add(StreamConfig(id="f", url=server.url("f")))
        registry.close()
        wait_until(lambda: count("f") > 10, 40, lambda: f"f never published:\n{output()}")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=40) == 0, output()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    final = redis_client.hgetall(status_key(key_prefix, "e"))
    assert final.get("state") == "stopped", final


def test_disabled_in_the_file_starts_disabled_and_a_new_url_reopens_in_place(
    rtsp, redis_server, redis_client, key_prefix
):
    server = rtsp({"a": CAM, "b": CAM, "b2": "test:640x360@15"})
    cfg = config(
        [
            {"id": "a", "url": server.url("a")},
            {"id": "b", "url": server.url("b"), "enabled": False},
        ],
        redis_server,
        key_prefix,
    )
    with running(cfg, redis_server) as pipeline:
        wait_until(lambda: published(redis_client, key_prefix, "a") > 10, 30, "a never published")
        assert stream_status(pipeline, "b").state == "disabled"
        enabled = cfg.streams[1].model_copy(update={"enabled": True})
        pipeline.update_stream(enabled)
        wait_until(
            lambda: published(redis_client, key_prefix, "b") > 10,
            30,
            lambda: f"b never published once enabled: {stream_status(pipeline, 'b')}",
        )
        assert [t.target for t in pipeline.transitions("b")][:2] == ["disabled", "connecting"]
        # another URL: the stream is reopened in place, seq goes on
        pipeline.update_stream(enabled.model_copy(update={"url": server.url("b2")}))
        wait_until(
            lambda: any(e.width == 640 for e in entries(redis_client, key_prefix, "b")),
            30,
            lambda: f"b never read the new URL: {stream_status(pipeline, 'b')}",
        )
        seqs = [e.seq for e in entries(redis_client, key_prefix, "b")]
        assert seqs == sorted(set(seqs)), "seq repeated or went back after the reopen"
        reasons = [t.reason for t in pipeline.transitions("b")]
        assert "stream entry changed" in reasons, reasons
        keep_publishing(redis_client, key_prefix, ["a", "b"], pipeline)
