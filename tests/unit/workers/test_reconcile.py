"""The reconciler's parts: the diff, the config file watcher, one pass against a real Redis
registry (the pipeline is replaced by a recording target: the seam the integration tests in
tests/integration/test_registry.py cross with a real pipeline)."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import pytest
import redis

from visionflow.config import load_config, parse_config
from visionflow.errors import ConfigError
from visionflow.streams.config import StreamConfig
from visionflow.streams.control import StreamPatch
from visionflow.streams.registry import StreamRegistry
from visionflow.workers.reconcile import ConfigFileWatcher, Reconciler, diff, restart_sections

A = StreamConfig(id="a", url="rtsp://cam-a/live")
B = StreamConfig(id="b", url="rtsp://cam-b/live")


def test_diff_adds_updates_and_removes_only_what_changed():
    a2 = A.model_copy(update={"enabled": False})
    c = StreamConfig(id="c", url="rtsp://cam-c/live")
    changes = diff({"a": A, "b": B}, [a2, c])
    assert changes.add == (c,) and changes.update == (a2,) and changes.remove == ("b",)
    assert changes.describe() == "added c; updated a; removed b"
    assert not diff({"a": A}, [A])


def test_restart_sections_names_every_changed_section_but_streams():
    old = parse_config({"streams": [A.model_dump()]})
    new = parse_config({"streams": [], "batching": {"max_batch": 4}, "redis": {"maxlen": 5}})
    assert restart_sections(old, new) == ["redis", "batching"]


def write(path: Path, raw: dict) -> None:
    path.write_text(json.dumps(raw))
    st = path.stat()  # a new mtime even within the file system's timestamp granularity
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))


def test_file_watcher_returns_valid_edits_and_logs_invalid_ones(tmp_path, caplog):
    path = tmp_path / "site.yaml"
    raw = {"streams": [A.model_dump()]}
    write(path, raw)
    watcher = ConfigFileWatcher(path, load_config(path))
    assert watcher.poll() is None  # unchanged
    raw["streams"].append(B.model_dump())
    raw["workers"] = {"inference_workers": 2}
    write(path, raw)
    with caplog.at_level(logging.INFO, "visionflow.reconcile"):
        edited = watcher.poll()
    assert edited is not None and [s.id for s in edited.streams] == ["a", "b"]
    assert "changes to workers need a restart" in caplog.text
    raw["streams"][1]["fps_cap"] = 0
    write(path, raw)
    caplog.clear()
    with caplog.at_level(logging.INFO, "visionflow.reconcile"):
        assert watcher.poll() is None
        assert watcher.poll() is None  # logged once per edit
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1
    assert "stream 'b' (streams[1]), field 'fps_cap'" in errors[0].getMessage()


class Recorder:
    """Records what the reconciler asks of the pipeline; ``fail`` ids raise."""

    def __init__(self, streams: list[StreamConfig], fail: set[str] | None = None) -> None:
        self.running = {s.id: s for s in streams}
        self.calls: list[tuple[str, str]] = []
        self.fail = fail or set()

    def streams(self) -> dict[str, StreamConfig]:
        return dict(self.running)

    def _do(self, what: str, sid: str) -> None:
        self.calls.append((what, sid))
        if sid in self.fail:
            raise ConfigError(f"stream {sid!r}: refused")

    def add_stream(self, stream: StreamConfig) -> None:
        self._do("add", stream.id)
        self.running[stream.id] = stream

    def update_stream(self, stream: StreamConfig) -> None:
        self._do("update", stream.id)
        self.running[stream.id] = stream

    def remove_stream(self, stream_id: str) -> None:
        self._do("remove", stream_id)
        del self.running[stream_id]


@pytest.fixture
def registry(redis_server, key_prefix):
    reg = StreamRegistry(redis.Redis.from_url(redis_server), key_prefix, [A, B])
    yield reg
    reg.close()


def test_sync_applies_registry_changes_once_per_version(registry):
    target = Recorder([A, B])
    cfg = parse_config({"streams": [A.model_dump(), B.model_dump()]})
    reconciler = Reconciler(target, registry, cfg)
    assert not reconciler.sync()  # nothing to do
    registry.add(StreamConfig(id="c", url="rtsp://cam-c/live"))
    registry.update("a", StreamPatch(enabled=False))
    registry.remove("b")
    changes = reconciler.sync()
    assert target.calls == [("remove", "b"), ("update", "a"), ("add", "c")]
    assert changes.describe() == "added c; updated a; removed b"
    assert target.running["a"].enabled is False
    assert not reconciler.sync() and len(target.calls) == 3  # same version: one GET only


def test_one_failing_stream_does_not_stop_the_others(registry, caplog):
    target = Recorder([A, B], fail={"c"})
    reconciler = Reconciler(target, registry, parse_config({}))
    registry.add(StreamConfig(id="c", url="rtsp://cam-c/live"))
    registry.add(StreamConfig(id="d", url="rtsp://cam-d/live"))
    with caplog.at_level(logging.ERROR, "visionflow.reconcile"):
        reconciler.sync()
    assert ("add", "d") in target.calls and "d" in target.running
    assert "stream c: add failed" in caplog.text
    # the failed change is tried again on the next pass, without another registry write
    target.fail.clear()
    reconciler.sync()
    assert "c" in target.running and target.calls.count(("add", "c")) == 2
    assert target.calls.count(("add", "d")) == 1  # what succeeded is not redone


def test_hot_reload_applies_the_files_streams(registry, tmp_path):
    path = tmp_path / "site.yaml"
    write(path, {"streams": [A.model_dump(), B.model_dump()]})
    cfg = load_config(path)
    target = Recorder([A, B])
    reconciler = Reconciler(target, registry, cfg, path)
    reconciler.sync()
    c = StreamConfig(id="c", url="rtsp://cam-c/live")
    write(path, {"streams": [A.model_dump(), c.model_dump()]})
    assert reconciler.check_file()
    reconciler.sync()
    assert set(target.running) == {"a", "c"}
