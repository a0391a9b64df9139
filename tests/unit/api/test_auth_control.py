"""Mutating routes: bearer token on every one of them, StreamControl errors, no password out."""

from __future__ import annotations

import json
import logging

import pytest
from fastapi.routing import APIRoute

from tests.unit.api.conftest import PASSWORD_URL, TOKEN, MemoryControl
from visionflow.streams.config import StreamConfig

AUTH = {"Authorization": f"Bearer {TOKEN}"}


def _walk(routes) -> list[APIRoute]:
    """Every APIRoute, also inside included routers (FastAPI keeps those as one entry of
    app.routes holding the router)."""
    out = []
    for route in routes:
        inner = getattr(route, "original_router", None)
        if inner is not None:
            out += _walk(inner.routes)
        elif isinstance(route, APIRoute):
            out.append(route)
    return out


def _mutating(app) -> list[APIRoute]:
    routes = [r for r in _walk(app.routes) if set(r.methods) - {"GET", "HEAD"}]
    walked = {(m, r.path) for r in routes for m in r.methods}
    documented = {
        (method.upper(), path)
        for path, ops in app.openapi()["paths"].items()
        for method in ops
        if method not in ("get", "head")
    }
    assert walked == documented, "the walk missed a route the OpenAPI schema lists"
    assert walked >= {
        ("POST", "/streams"),
        ("PATCH", "/streams/{stream_id}"),
        ("DELETE", "/streams/{stream_id}"),
    }
    return routes


def test_every_mutating_route_needs_the_token(redis_api):
    control = MemoryControl([StreamConfig(id="cam1", url="rtsp://h/a")])
    api = redis_api(control)
    for route in _mutating(api.app):
        path = route.path.replace("{stream_id}", "cam1")
        for method in route.methods:
            for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic eDp5"}):
                answer = api.request(method, path, headers=headers)
                assert answer.status_code == 401, (method, path, headers, answer.text)
                assert answer.headers["www-authenticate"] == "Bearer"
    assert [s.id for s in control.list()] == ["cam1"], "a refused request changed something"


def test_without_a_token_the_api_is_read_only(redis_api):
    api = redis_api(MemoryControl(), token=None)
    for route in _mutating(api.app):
        for method in route.methods:
            answer = api.request(method, route.path.replace("{stream_id}", "x"), headers=AUTH)
            assert answer.status_code == 403 and "read-only" in answer.json()["detail"]


def test_post_patch_delete_through_the_control(redis_api, caplog):
    control = MemoryControl()
    api = redis_api(control)
    caplog.set_level(logging.DEBUG)
    answer = api.post("/streams", json={"id": "cam9", "url": PASSWORD_URL}, headers=AUTH)
    assert answer.status_code == 201, answer.text
    assert answer.json()["url"] == "rtsp://admin:***@10.0.0.5:554/live"
    assert control.streams["cam9"].url == PASSWORD_URL  # stored as given, for the reader
    dup = api.post("/streams", json={"id": "cam9", "url": PASSWORD_URL}, headers=AUTH)
    assert dup.status_code == 409 and "already registered" in dup.json()["detail"]
    patched = api.patch(
        "/streams/cam9", json={"enabled": False, "labels": {"z": "1"}}, headers=AUTH
    )
    assert patched.status_code == 200 and patched.json()["enabled"] is False
    assert patched.json()["labels"] == {"z": "1"} and "hunter2" not in patched.text
    assert api.patch("/streams/ghost", json={"enabled": True}, headers=AUTH).status_code == 404
    assert api.patch("/streams/cam9", json={"fps": 3}, headers=AUTH).status_code == 422
    assert api.delete("/streams/cam9", headers=AUTH).status_code == 204
    assert api.delete("/streams/cam9", headers=AUTH).status_code == 404
    assert "hunter2" not in caplog.text


def test_invalid_or_refused_posts_never_echo_the_password(redis_api):
    api = redis_api(MemoryControl())
    bad = api.post("/streams", json={"id": "bad id!", "url": PASSWORD_URL}, headers=AUTH)
    assert bad.status_code == 422 and "hunter2" not in bad.text
    refused = api.post(
        "/streams", json={"id": "f", "url": "rtsp://admin:hunter2@refused/a"}, headers=AUTH
    )
    assert refused.status_code == 400 and "not allowed" in refused.json()["detail"]
    assert "hunter2" not in refused.text


@pytest.mark.parametrize("method", ["post", "delete"])
def test_no_control_is_503(redis_api, method):
    api = redis_api(None)
    kwargs = {"json": {"id": "a", "url": "rtsp://h/a"}} if method == "post" else {}
    path = "/streams" if method == "post" else "/streams/a"
    answer = getattr(api, method)(path, headers=AUTH, **kwargs)
    assert answer.status_code == 503


def test_docs_dashboard_and_static(redis_api):
    api = redis_api()
    assert api.get("/docs").status_code == 200
    schema = api.get("/openapi.json").json()
    assert {"/streams", "/counts", "/workers", "/readyz", "/metrics"} <= set(schema["paths"])
    page = api.get("/")
    assert page.status_code == 200 and "visionflow" in page.text
    assert api.get("/static/index.html").status_code == 200
    assert json.dumps(schema).count("hunter2") == 0
