"""GET /streams/{id}/detections: entries decoded by the schema's parser, paged by entry id."""

from __future__ import annotations

import time

from tests.unit.api.conftest import write_entries


def test_newest_first_pages_cover_every_entry_once(redis_api, redis_client, key_prefix):
    ids = write_entries(redis_client, key_prefix, "cam1", [["car"]] * 25, time.time() - 10)
    api = redis_api()
    seen, until = [], None
    for _ in range(10):
        params = {"limit": 10} | ({"until": until} if until else {})
        page = api.get("/streams/cam1/detections", params=params).json()
        seen += [e["id"] for e in page["entries"]]
        until = page["next"]
        if until is None:
            break
    assert seen == list(reversed(ids))
    first = api.get("/streams/cam1/detections", params={"limit": 1}).json()["entries"][0]
    assert first["seq"] == 24 and first["stream_id"] == "cam1" and first["model_id"] == "demo-1"
    assert first["detections"][0]["label"] == "car" and set(first["latency_ms"]) >= {"total"}


def test_since_until_accept_ids_and_epoch_ms_and_order_asc(redis_api, redis_client, key_prefix):
    t0 = time.time() - 10
    ids = write_entries(redis_client, key_prefix, "cam1", [["car"]] * 10, t0)
    api = redis_api()
    page = api.get(
        "/streams/cam1/detections", params={"since": ids[2], "until": ids[5], "order": "asc"}
    ).json()
    assert [e["id"] for e in page["entries"]] == ids[2:6] and page["next"] is None
    since_ms = int(ids[7].split("-")[0])
    page = api.get(
        "/streams/cam1/detections", params={"since": str(since_ms), "order": "asc"}
    ).json()
    assert [e["id"] for e in page["entries"]] == ids[7:]
    assert api.get("/streams/cam1/detections", params={"since": "yesterday"}).status_code == 400


def test_label_filter_keeps_matching_entries_and_detections(redis_api, redis_client, key_prefix):
    labels = [["car", "person"] if i % 3 == 0 else ["car"] for i in range(30)]
    ids = write_entries(redis_client, key_prefix, "cam1", labels, time.time() - 10)
    api = redis_api()
    page = api.get("/streams/cam1/detections", params={"label": "person", "limit": 4}).json()
    assert [e["id"] for e in page["entries"]] == [ids[i] for i in (27, 24, 21, 18)]
    assert all([d["label"] for d in e["detections"]] == ["person"] for e in page["entries"])
    rest = api.get(
        "/streams/cam1/detections", params={"label": "person", "until": page["next"]}
    ).json()
    assert [e["id"] for e in rest["entries"]] == [ids[i] for i in (15, 12, 9, 6, 3, 0)]


def test_unknown_stream_is_404(redis_api):
    assert redis_api().get("/streams/ghost/detections").status_code == 404
