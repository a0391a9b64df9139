"""The operator API served by ``visionflow run`` (a thread of its process) and by
``visionflow api`` (alone, reading Redis), checked over real HTTP against a real pipeline:
real RTSP cameras (one behind a password), a real Redis."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import wait_until
from tests.integration.helpers import http_get, visionflow_cli
from visionflow.redis_server import free_port

pytestmark = pytest.mark.integration
TOKEN = "it-token-5b1e"
SECRET = "pw-9f3c2a"
#: the registry seals inline passwords with it (the pipeline and `visionflow api` share it)
REGISTRY_KEY = "0HDNqTSCm7hfkK_5W-7fvSLXn8wEB4yCeA8AphLyW8k="


@contextlib.contextmanager
def cli(*args: str) -> Iterator[list[str]]:
    with visionflow_cli(
        *args, env={"VF_API_TOKEN": TOKEN, "VISIONFLOW_REGISTRY_KEY": REGISTRY_KEY}
    ) as lines:
        yield lines


def _frames(base: str) -> dict[str, int]:
    answer = http_get(base, "/streams")
    if answer is None:
        return {}
    return {s["id"]: s["frames"] for s in answer.json()["streams"]}


def test_api_of_a_running_pipeline_and_of_visionflow_api(
    rtsp, redis_server, key_prefix, tmp_path: Path
):
    server = rtsp({"open": "test:320x240@15", "locked": "test:320x240@15"}, auth=f"viewer:{SECRET}")
    port, alone_port = free_port(), free_port()
    streams = [
        {"id": "cam-open", "url": server.url("open", f"viewer:{SECRET}")},
        {"id": "cam-locked", "url": server.url("locked", f"viewer:{SECRET}")},
    ]
    cfg = {
        "streams": streams,
        "redis": {"url": redis_server, "key_prefix": key_prefix, "spool_dir": ""},
        "source": {"open_timeout_s": 4, "read_timeout_s": 2, "stall_timeout_s": 3},
        "api": {"listen": f"127.0.0.1:{port}", "token": "${VF_API_TOKEN}"},
    }
    path = tmp_path / "site.yaml"
    path.write_text(json.dumps(cfg))  # JSON is YAML
    base = f"http://127.0.0.1:{port}"
    answers: list[str] = []
    with cli("run", "-c", str(path), "--plain") as lines:
        wait_until(
            lambda: http_get(base, "/healthz") is not None, 60, lambda: f"no API: {''.join(lines)}"
        )
        ready = wait_until(
            lambda: (r := http_get(base, "/readyz")) is not None and r.status_code == 200 and r,
            60,
            lambda: f"never ready: {http_get(base, '/readyz').json()}",  # type: ignore[union-attr]
        )
        answers.append(ready.text)
        first = wait_until(
            lambda: (f := _frames(base)) and all(n > 0 for n in f.values()) and len(f) == 2 and f,
            60,
            lambda: f"streams never all decoding: {http_get(base, '/streams').text}",  # type: ignore[union-attr]
        )
        wait_until(
            lambda: all(n > first[s] + 10 for s, n in _frames(base).items()),
            30,
            "frames did not grow",
        )
        body = httpx.get(base + "/streams", timeout=5).json()
        answers.append(json.dumps(body))
        assert {s["state"] for s in body["streams"]} == {"streaming"}
        assert all(s["url"].startswith("rtsp://viewer:***@") for s in body["streams"])
        metrics = httpx.get(base + "/metrics", timeout=5).text
        answers.append(metrics)
        families = {f.name: f for f in text_string_to_metric_families(metrics)}
        frames = {s.labels["stream"]: s.value for s in families["visionflow_stream_frames"].samples}
        assert set(frames) == {"cam-open", "cam-locked"} and min(frames.values()) > 0
        workers = httpx.get(base + "/workers", timeout=5).json()
        answers.append(json.dumps(workers))
        assert workers["workers"][0]["state"] == "ready"
        entries = httpx.get(base + "/streams/cam-open/detections?limit=5", timeout=5).json()
        assert len(entries["entries"]) == 5 and entries["next"]
        for method, route in (("POST", "/streams"), ("DELETE", "/streams/cam-open")):
            refused = httpx.request(method, base + route, json={"id": "x", "url": "rtsp://h/x"})
            assert refused.status_code == 401, refused.text
            answers.append(refused.text)
        # a stream added at run time (its URL has a password) starts, then goes away again
        auth = {"Authorization": f"Bearer {TOKEN}"}
        extra = {"id": "cam-extra", "url": server.url("open", f"viewer:{SECRET}")}
        added = httpx.post(base + "/streams", json=extra, headers=auth, timeout=10)
        assert added.status_code == 201, added.text
        answers.append(added.text)
        wait_until(
            lambda: _frames(base).get("cam-extra", 0) > 0,
            30,
            lambda: f"the added stream never decoded: {http_get(base, '/streams/cam-extra').text}",  # type: ignore[union-attr]
        )
        answers.append(httpx.get(base + "/streams/cam-extra", timeout=5).text)
        gone = httpx.delete(base + "/streams/cam-extra", headers=auth, timeout=10)
        assert gone.status_code == 204, gone.text
        wait_until(  # the reconciler applies registry changes within its poll interval
            lambda: "cam-extra" not in _frames(base),
            15,
            lambda: f"the removed stream is still listed: {sorted(_frames(base))}",
        )
        # the same deployment through visionflow api, reading Redis only
        alone = f"http://127.0.0.1:{alone_port}"
        with cli("api", "-c", str(path), "--listen", f"127.0.0.1:{alone_port}") as alone_lines:
            wait_until(
                lambda: (r := http_get(alone, "/readyz")) is not None and r.status_code == 200,
                30,
                lambda: f"visionflow api never ready: {''.join(alone_lines)}",
            )
            wait_until(  # the next status write drops the removed stream from the set
                lambda: set(_frames(alone)) == {"cam-open", "cam-locked"},
                10,
                lambda: f"visionflow api lists {set(_frames(alone))}",
            )
            from_redis = httpx.get(alone + "/streams", timeout=5).json()
            answers.append(json.dumps(from_redis))
            assert from_redis["source"] == "redis"
            assert min(s["frames"] for s in from_redis["streams"]) > 0
            answers.append(httpx.get(alone + "/metrics", timeout=5).text)
            answers.append(httpx.get(alone + "/workers", timeout=5).text)
            # a change made through the API on another host reaches the running pipeline
            paused = httpx.patch(
                alone + "/streams/cam-locked", json={"enabled": False}, headers=auth, timeout=10
            )
            assert paused.status_code == 200, paused.text
            answers.append(paused.text)
            wait_until(
                lambda: (
                    (r := http_get(base, "/streams/cam-locked")) is not None
                    and r.json()["state"] == "disabled"
                ),
                15,
                lambda: f"not disabled: {http_get(base, '/streams/cam-locked').text}",  # type: ignore[union-attr]
            )
            conflicts = httpx.get(alone + "/registry/conflicts", headers=auth, timeout=5)
            assert conflicts.status_code == 200 and conflicts.json() == [], conflicts.text
        answers += lines
        assert f"Dashboard and API: {base}/" in "".join(lines)
    for text in answers:
        assert SECRET not in text, text
