"""Small hardening: a malformed status field spoils only itself, NVML is retried after a
failure, PATCH {} is refused, a racing POST of the same id is a 409, a runtime URL cannot
name the pipeline's environment."""

from __future__ import annotations

import redis

from tests.unit.api.conftest import TOKEN, pipeline_status, stream_status, write_status
from tests.unit.api.test_gpu import RecordedNvml
from visionflow.api.gpu import GpuProbe
from visionflow.schema import registry_key
from visionflow.streams.config import StreamConfig
from visionflow.streams.registry import StreamRegistry

AUTH = {"Authorization": f"Bearer {TOKEN}"}
FILE_STREAM = StreamConfig(id="cam1", url="rtsp://h/a")


def test_malformed_drops_or_labels_spoil_only_that_field(
    redis_api, redis_server, redis_client, key_prefix
):
    streams = (stream_status("ok"), stream_status("list"), stream_status("junk"))
    write_status(redis_server, key_prefix, pipeline_status(streams))
    redis_client.hset(f"{key_prefix}:status:list", mapping={"drops": "[1, 2]", "labels": '"x"'})
    redis_client.hset(f"{key_prefix}:status:junk", "drops", '{"late": "x", "behind": 3}')
    answer = redis_api().get("/streams")
    assert answer.status_code == 200, answer.text
    got = {s["id"]: s for s in answer.json()["streams"]}
    assert got["ok"]["drops"] == {"inference_behind": 8}
    assert got["list"]["drops"] == {} and got["list"]["labels"] == {}
    assert got["junk"]["drops"] == {"behind": 3}


def test_nvml_failure_is_retried_later():
    class Flaky(RecordedNvml):
        fail = True

        def nvmlInit(self):
            if self.fail:
                raise RuntimeError("NVML_ERROR_UNKNOWN")
            super().nvmlInit()

    nvml = Flaky()
    probe = GpuProbe(nvml, max_age_s=0.0, retry_after_s=0.0)
    assert probe.devices() == []
    nvml.fail = False
    assert len(probe.devices()) == 3, "GPU figures never came back after one NVML failure"
    waiting = GpuProbe(Flaky(), max_age_s=0.0, retry_after_s=3600)
    assert waiting.devices() == []
    waiting._nvml.fail = False
    assert waiting.devices() == [], "retried before retry_after_s"


def _registry(redis_server: str, key_prefix: str) -> StreamRegistry:
    return StreamRegistry(redis.Redis.from_url(redis_server), key_prefix, [FILE_STREAM])


def test_patch_with_nothing_to_change_is_refused(redis_api, redis_server, redis_client, key_prefix):
    registry = _registry(redis_server, key_prefix)
    api = redis_api(registry)
    answer = api.patch("/streams/cam1", json={}, headers=AUTH)
    assert answer.status_code == 400 and "nothing to change" in answer.json()["detail"]
    assert registry.version() == 0 and not redis_client.exists(registry_key(key_prefix))
    assert api.patch("/streams/cam1", json={"labels": {}}, headers=AUTH).status_code == 200


def test_post_losing_a_race_for_the_same_id_is_a_conflict(redis_api, redis_server, key_prefix):
    other = _registry(redis_server, key_prefix)

    class Racing(StreamRegistry):
        def add(self, stream: StreamConfig) -> None:
            other.add(stream)  # a concurrent POST lands after this one's check
            super().add(stream)

    racing = Racing(redis.Redis.from_url(redis_server), key_prefix, [FILE_STREAM])
    answer = redis_api(racing).post(
        "/streams", json={"id": "new", "url": "rtsp://h/n"}, headers=AUTH
    )
    assert answer.status_code == 409 and "already registered" in answer.json()["detail"]


def test_post_cannot_read_the_pipeline_environment(
    redis_api, redis_server, key_prefix, monkeypatch
):
    monkeypatch.setenv("VISIONFLOW_REGISTRY_KEY", "the-registry-key")
    registry = _registry(redis_server, key_prefix)
    api = redis_api(registry)
    for url in (
        "rtsp://cam.example/live/${VISIONFLOW_REGISTRY_KEY}",
        "rtsp://u:${VISIONFLOW_REGISTRY_KEY}@cam.example/live",
    ):
        answer = api.post("/streams", json={"id": "evil", "url": url}, headers=AUTH)
        assert answer.status_code == 400 and "whole password" in answer.json()["detail"]
    assert registry.version() == 0
    ok = api.post(
        "/streams", json={"id": "c7", "url": "rtsp://u:${CAM7_PASSWORD}@cam7/live"}, headers=AUTH
    )
    assert ok.status_code == 201, ok.text
    assert "the-registry-key" not in api.get("/streams").text
