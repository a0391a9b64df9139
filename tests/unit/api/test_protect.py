"""api.protect_reads (the data GET routes need the token) and the Host check."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError

from tests.unit.api.conftest import TOKEN, pipeline_status, stream_status, write_status
from visionflow.api.config import ApiConfig
from visionflow.api.server import redis_app
from visionflow.config import parse_config

AUTH = {"Authorization": f"Bearer {TOKEN}"}
READS = ("/streams", "/streams/cam1", "/workers", "/snapshots", "/counts", "/metrics")
OPEN = ("/healthz", "/", "/static/app.js", "/openapi.json")


def test_protect_reads_defaults_on_off_loopback_and_needs_a_token():
    assert ApiConfig(listen="0.0.0.0:80", token="t").reads_protected
    assert not ApiConfig(listen="127.0.0.1:80").reads_protected
    assert not ApiConfig(listen="[::]:80", token="t", protect_reads=False).reads_protected
    assert ApiConfig(listen="127.0.0.1:80", token="t", protect_reads=True).reads_protected
    with pytest.raises(ValidationError, match="protect_reads needs token"):
        ApiConfig(protect_reads=True)


def _api(redis_server: str, key_prefix: str, **api: object) -> TestClient:
    cfg = parse_config({"redis": {"url": redis_server, "key_prefix": key_prefix}, "api": api})
    return TestClient(redis_app(cfg, redis_server), base_url="http://127.0.0.1")


def test_protected_reads_need_the_token_health_and_page_do_not(redis_server, key_prefix):
    write_status(redis_server, key_prefix, pipeline_status((stream_status("cam1"),)))
    api = _api(redis_server, key_prefix, token=TOKEN, protect_reads=True)
    for path in READS:
        assert api.get(path).status_code == 401, path
        assert api.get(path, headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert api.get(path, headers=AUTH).status_code == 200, path
    for path in OPEN:
        assert api.get(path).status_code == 200, path
    assert api.get("/readyz").status_code in (200, 503)  # answered, not 401
    assert api.get("/streams/cam1/detections").status_code == 401
    assert api.get("/streams/cam1/snapshot").status_code == 401


def test_reads_open_on_loopback_by_default(redis_server, key_prefix):
    write_status(redis_server, key_prefix, pipeline_status((stream_status("cam1"),)))
    api = _api(redis_server, key_prefix, token=TOKEN)
    for path in READS:
        assert api.get(path).status_code == 200, path


@pytest.mark.parametrize(
    ("api", "host", "served"),
    [
        ({}, "127.0.0.1:8080", True),
        ({}, "localhost:8080", True),
        ({}, "[::1]:8080", True),
        ({}, "evil.example:8080", False),  # DNS rebinding to a loopback API
        ({}, "evil.example", False),
        ({"allowed_hosts": ["vf.lan"]}, "VF.lan:8080", True),
        ({"allowed_hosts": ["*"]}, "evil.example", True),
        ({"listen": "[::1]:0"}, "[::1]:9", True),
        ({"listen": "0.0.0.0:0", "token": "t"}, "any.example", True),  # the token guards
        ({"listen": "0.0.0.0:0", "token": "t", "allowed_hosts": ["vf.lan"]}, "x.example", False),
    ],
)
def test_host_check(redis_server, key_prefix, api, host, served):
    client = _api(redis_server, key_prefix, **api)
    answer = client.get("/healthz", headers={"Host": host})
    assert (answer.status_code == 200) is served, (host, answer.status_code, answer.text)
