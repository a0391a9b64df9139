"""The runtime stream registry against a real Redis: merge with the config file, tombstones,
conflicts, atomic writes, encrypted credentials."""

from __future__ import annotations

import logging

import pytest
import redis
from cryptography.fernet import Fernet

from visionflow.config import parse_config
from visionflow.errors import ConfigError
from visionflow.schema import registry_key
from visionflow.streams.config import StreamConfig
from visionflow.streams.control import StreamControl, StreamPatch
from visionflow.streams.merge import record_update
from visionflow.streams.registry import StreamRegistry
from visionflow.streams.secrets import KEY_ENV, UrlSealer, load_key

A = StreamConfig(id="a", url="rtsp://cam-a/live")
B = StreamConfig(id="b", url="rtsp://cam-b/live", labels={"site": "north"})
PASSWORD = "s3cr3t-Pa55"


def make(
    redis_server: str, prefix: str, file: list[StreamConfig], key: Fernet | None = None
) -> StreamRegistry:
    client = redis.Redis.from_url(redis_server)
    return StreamRegistry(
        client, prefix, file, allowed_schemes=("rtsp", "rtsps"), sealer=UrlSealer(key)
    )


@pytest.fixture
def reg(redis_server, key_prefix):
    registry = make(redis_server, key_prefix, [A, B])
    yield registry
    registry.close()


def ids(registry: StreamRegistry) -> list[str]:
    return [s.id for s in registry.list()]


def all_values(client: redis.Redis, prefix: str) -> str:
    """Every key and value under the prefix, as one text (hashes, strings)."""
    out = []
    for key in client.scan_iter(f"{prefix}:*"):
        kind = client.type(key)
        if kind == "hash":
            out.append(f"{key} {client.hgetall(key)}")
        elif kind == "string":
            out.append(f"{key} {client.get(key)}")
    return "\n".join(out)


def test_registry_implements_the_stream_control_protocol(reg):
    control: StreamControl = reg
    assert control.list() == [A, B]


def test_runtime_addition_survives_a_restart(reg, redis_server, key_prefix):
    c = StreamConfig(id="c", url="rtsp://cam-c/live", analysis_fps=5)
    reg.add(c)
    assert ids(reg) == ["a", "b", "c"]
    again = make(redis_server, key_prefix, [A, B])
    assert again.list() == [A, B, c]
    assert again.version() == 1


def test_duplicate_and_unknown_ids_raise_and_change_nothing(reg):
    before = reg.version()
    with pytest.raises(ConfigError, match="'a' is already registered"):
        reg.add(StreamConfig(id="a", url="rtsp://other/live"))
    with pytest.raises(ConfigError, match="'zz' is not registered"):
        reg.update("zz", StreamPatch(enabled=False))
    with pytest.raises(ConfigError, match="'zz' is not registered"):
        reg.remove("zz")
    with pytest.raises(ConfigError, match=r"scheme .file. is not in source\.allowed_schemes"):
        reg.add(StreamConfig(id="f", url="/tmp/clip.mp4"))
    with pytest.raises(ConfigError, match="no runtime record"):
        reg.reset("a")
    assert reg.version() == before and reg.list() == [A, B]


def test_patch_of_a_file_stream_is_kept_across_restarts(reg, redis_server, key_prefix):
    new = reg.update("b", StreamPatch(enabled=False, analysis_fps=2.5))
    assert (new.enabled, new.analysis_fps, new.labels) == (False, 2.5, {"site": "north"})
    new = reg.update("b", StreamPatch(labels={"site": "south"}))
    assert (new.enabled, new.analysis_fps, new.labels) == (False, 2.5, {"site": "south"})
    again = make(redis_server, key_prefix, [A, B])
    assert again.list()[1] == new
    assert again.conflicts() == []


def test_patch_of_a_runtime_stream_changes_its_entry(reg):
    reg.add(StreamConfig(id="c", url="rtsp://cam-c/live"))
    assert reg.update("c", StreamPatch(analysis_fps=1)).analysis_fps == 1
    assert reg.get("c").analysis_fps == 1


def test_removed_file_stream_stays_removed_after_restart(reg, redis_server, key_prefix):
    reg.remove("a")
    assert ids(reg) == ["b"]
    again = make(redis_server, key_prefix, [A, B])
    assert ids(again) == ["b"]
    assert again.conflicts() == []
    with pytest.raises(ConfigError, match="not registered"):
        again.update("a", StreamPatch(enabled=True))
    again.add(StreamConfig(id="a", url="rtsp://cam-a2/live"))  # may come back as a new entry
    assert again.get("a").url == "rtsp://cam-a2/live"
    assert again.conflicts() == []  # the file entry is the one the re-add replaced knowingly


def test_removing_a_runtime_stream_leaves_no_record(reg, redis_client, key_prefix):
    reg.add(StreamConfig(id="c", url="rtsp://cam-c/live"))
    reg.remove("c")
    assert ids(reg) == ["a", "b"]
    assert redis_client.hgetall(registry_key(key_prefix)) == {}


def test_file_change_of_a_patched_field_is_a_conflict_runtime_wins(reg, caplog):
    reg.update("a", StreamPatch(analysis_fps=5))
    reg.set_file_streams([A.model_copy(update={"analysis_fps": 10.0}), B])
    with caplog.at_level(logging.WARNING, "visionflow.registry"):
        assert reg.get("a").analysis_fps == 5
        [conflict] = reg.conflicts()
        reg.list()
    assert (conflict.stream_id, conflict.kind) == ("a", "file_changed_patched_field")
    assert "analysis_fps from None to 10.0" in conflict.detail
    logged = [r for r in caplog.records if "file_changed_patched_field" in r.getMessage()]
    assert len(logged) == 1, "a conflict is logged once"
    # a field the patch did not set follows the file without conflict
    reg.set_file_streams([A.model_copy(update={"analysis_fps": 10.0, "loop": True}), B])
    assert reg.get("a").loop is True and len(reg.conflicts()) == 1
    # patching the field again decides it: the conflict is gone
    reg.update("a", StreamPatch(analysis_fps=7))
    assert reg.conflicts() == [] and reg.get("a").analysis_fps == 7


def test_runtime_id_later_defined_by_the_file_is_a_conflict(reg):
    c = StreamConfig(id="c", url="rtsp://runtime/live")
    reg.add(c)
    file_c = StreamConfig(id="c", url="rtsp://from-file/live")
    reg.set_file_streams([A, B, file_c])
    assert reg.get("c") == c
    [conflict] = reg.conflicts()
    assert (conflict.stream_id, conflict.kind) == ("c", "added_id_in_file")
    reg.reset("c")  # settle it in the file's favour
    assert reg.get("c") == file_c and reg.conflicts() == []


def test_file_change_of_a_removed_stream_is_a_conflict_it_stays_removed(reg):
    reg.remove("b")
    reg.set_file_streams([A, B.model_copy(update={"url": "rtsp://cam-b-new/live"})])
    assert ids(reg) == ["a"]
    [conflict] = reg.conflicts()
    assert (conflict.stream_id, conflict.kind) == ("b", "file_changed_removed")


def test_file_dropping_a_patched_stream_is_reported(reg):
    reg.update("b", StreamPatch(enabled=False))
    reg.set_file_streams([A])
    assert ids(reg) == ["a"]
    assert [(c.stream_id, c.kind) for c in reg.conflicts()] == [("b", "patched_not_in_file")]


def test_unreadable_record_is_left_out_and_can_be_reset(reg, redis_client, key_prefix):
    redis_client.hset(registry_key(key_prefix), "x", "{not json")
    reg.add(StreamConfig(id="c", url="rtsp://cam-c/live"))
    assert ids(reg) == ["a", "b", "c"]
    assert [(c.stream_id, c.kind) for c in reg.conflicts()] == [("x", "unreadable")]
    reg.reset("x")
    assert reg.conflicts() == []


def test_concurrent_writers_never_lose_each_others_changes(reg, redis_server, key_prefix):
    """Registry B writes between A's read and A's write: A's transaction is retried on
    top of B's change instead of overwriting it."""
    other = make(redis_server, key_prefix, [A, B])
    interfered = []

    def change(file_stream, record, now):
        if not interfered:
            interfered.append(other.update("a", StreamPatch(labels={"by": "other"})))
        return record_update("a", StreamPatch(analysis_fps=3), file_stream, record, now)

    reg._write("a", change)
    entry = make(redis_server, key_prefix, [A, B]).get("a")
    assert entry.labels == {"by": "other"} and entry.analysis_fps == 3
    assert reg.version() == 2


def test_many_concurrent_additions_all_land(redis_server, key_prefix):
    import threading

    registries = [make(redis_server, key_prefix, [A]) for _ in range(4)]

    def add(n: int) -> None:
        for i in range(10):
            registries[n].add(StreamConfig(id=f"s{n}-{i}", url=f"rtsp://cam/{n}/{i}"))

    threads = [threading.Thread(target=add, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(registries[0].list()) == 41
    assert registries[0].version() == 40


# ---- credentials ---------------------------------------------------------------------------
def test_inline_password_is_stored_encrypted_and_survives_restart(
    redis_server, redis_client, key_prefix
):
    key = Fernet(Fernet.generate_key())
    reg = make(redis_server, key_prefix, [A], key)
    url = f"rtsp://admin:{PASSWORD}@cam-c:554/live?token=tok-{PASSWORD}"
    reg.add(StreamConfig(id="c", url=url))
    reg.update("c", StreamPatch(enabled=False))
    stored = all_values(redis_client, key_prefix)
    assert "cam-c" in stored and PASSWORD not in stored, stored
    again = make(redis_server, key_prefix, [A], key)
    assert again.get("c").url == url
    assert again.desired().streams[-1].url == url


def test_inline_password_without_key_is_refused_with_how_to(reg, redis_client, key_prefix):
    with pytest.raises(ConfigError) as info:
        reg.add(StreamConfig(id="c", url=f"rtsp://admin:{PASSWORD}@cam-c/live"))
    message = str(info.value)
    assert KEY_ENV in message and "${ENV_VAR}" in message and PASSWORD not in message
    assert reg.version() == 0 and PASSWORD not in all_values(redis_client, key_prefix)


def test_encrypted_url_without_the_right_key_is_unreadable(redis_server, key_prefix):
    reg = make(redis_server, key_prefix, [A], Fernet(Fernet.generate_key()))
    reg.add(StreamConfig(id="c", url=f"rtsp://admin:{PASSWORD}@cam-c/live"))
    for key in (None, Fernet(Fernet.generate_key())):
        other = make(redis_server, key_prefix, [A], key)
        assert ids(other) == ["a"]
        [conflict] = other.conflicts()
        assert conflict.kind == "unreadable" and PASSWORD not in conflict.detail


def test_env_reference_is_kept_as_written_and_resolved_for_the_pipeline(
    reg, redis_client, key_prefix, monkeypatch
):
    url = "rtsp://admin:${CAM_VF_TEST_PW}@cam-c/live"
    reg.add(StreamConfig(id="c", url=url))  # no key needed
    assert "${CAM_VF_TEST_PW}" in all_values(redis_client, key_prefix)
    assert reg.get("c").url == url
    monkeypatch.setenv("CAM_VF_TEST_PW", PASSWORD)
    desired = reg.desired()
    assert desired.streams[-1].url == f"rtsp://admin:{PASSWORD}@cam-c/live"
    monkeypatch.delenv("CAM_VF_TEST_PW")
    desired = reg.desired()
    assert [s.id for s in desired.streams] == ["a", "b"]
    assert [(c.stream_id, c.kind) for c in desired.conflicts] == [("c", "unreadable")]


def test_key_lookup_from_config_file_and_environment(tmp_path, monkeypatch):
    monkeypatch.delenv(KEY_ENV, raising=False)
    assert load_key(None) is None
    key = Fernet.generate_key().decode()
    path = tmp_path / "registry.key"
    path.write_text(key + "\n")
    assert load_key(str(path)) is not None
    monkeypatch.setenv(KEY_ENV, key)
    assert load_key(None) is not None
    monkeypatch.setenv(KEY_ENV, "not-a-key")
    with pytest.raises(ConfigError, match=f"\\${KEY_ENV}: not a Fernet key"):
        load_key(None)
    with pytest.raises(ConfigError, match="cannot read"):
        load_key(str(tmp_path / "missing.key"))


def test_from_config_uses_prefix_file_streams_and_schemes(redis_server, key_prefix):
    cfg = parse_config(
        {
            "streams": [{"id": "a", "url": "rtsp://cam-a/live"}],
            "redis": {"url": redis_server, "key_prefix": key_prefix},
            "source": {"allowed_schemes": ["rtsp", "file"]},
        }
    )
    reg = StreamRegistry.from_config(cfg, redis_server)
    reg.add(StreamConfig(id="f", url="/tmp/clip.mp4"))  # file is allowed here
    assert ids(reg) == ["a", "f"]
    reg.close()


@pytest.mark.parametrize(
    "url",
    [
        "rtsp://cam.example/live/${VISIONFLOW_REGISTRY_KEY}",
        "rtsp://cam.example/live?x=${HOME}",
        "rtsp://${CAM_HOST}/live",
        "rtsp://${CAM_USER}:pw@cam/live",
        "rtsp://admin:${VISIONFLOW_REGISTRY_KEY}@cam/live",
        "rtsp://admin:${HOME}@cam/live",
        "rtsp://admin:${CAM_PW:-plain}@cam/live",
        "rtsp://admin:x${CAM_PW}@cam/live",
        "rtsp://admin:${file:/etc/shadow}@cam/live",
        "rtsp://cam.example/live/${file:/etc/shadow}",
    ],
)
def test_runtime_url_cannot_read_the_pipeline_environment(reg, url, monkeypatch):
    monkeypatch.setenv("VISIONFLOW_REGISTRY_KEY", "the-registry-key")
    with pytest.raises(ConfigError, match="only as the whole password") as err:
        reg.add(StreamConfig(id="evil", url=url))
    assert "the-registry-key" not in str(err.value)
    assert reg.version() == 0 and "evil" not in ids(reg)


def test_record_written_before_the_rule_is_left_out_not_resolved(
    reg, redis_client, key_prefix, monkeypatch
):
    from visionflow.streams.merge import Record
    from visionflow.streams.registry import encode_record

    monkeypatch.setenv("VISIONFLOW_REGISTRY_KEY", "the-registry-key")
    stream = StreamConfig(id="evil", url="rtsp://cam/live/${VISIONFLOW_REGISTRY_KEY}")
    record = Record("added", 1.0, stream=stream)
    redis_client.hset(registry_key(key_prefix), "evil", encode_record(record, UrlSealer(None)))
    desired = reg.desired()
    assert [s.id for s in desired.streams] == ["a", "b"]
    [conflict] = desired.conflicts
    assert conflict.kind == "unreadable" and "whole password" in conflict.detail
    assert "the-registry-key" not in repr(desired)


def test_config_file_urls_keep_full_env_support(redis_server, key_prefix, monkeypatch):
    monkeypatch.setenv("SITE_HOST", "cam-site")
    file_stream = StreamConfig(id="f", url="rtsp://${SITE_HOST}/live/${SITE_HOST}")
    registry = make(redis_server, key_prefix, [file_stream])
    try:
        registry.update("f", StreamPatch(enabled=False))  # a patched file stream too
        [stream] = registry.desired().streams
        assert stream.url == "rtsp://cam-site/live/cam-site" and not stream.enabled
    finally:
        registry.close()
