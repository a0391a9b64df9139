"""GET /counts from the minute buckets (layout of visionflow.schema)."""

from __future__ import annotations

import time

import pytest

from visionflow.schema import count_field, counts_key


def _count(client, prefix, minute, stream, label, n, metric="boxes"):
    client.hincrby(counts_key(prefix, minute), count_field(stream, label, metric), n)


def test_minutes_are_summed_per_label_and_bucket(redis_api, redis_client, key_prefix):
    now = time.time()
    minute = int(now // 60) * 60
    _count(redis_client, key_prefix, minute, "cam1", "car", 3)
    _count(redis_client, key_prefix, minute, "cam2", "car", 4)
    _count(redis_client, key_prefix, minute - 60, "cam1", "person", 2)
    _count(redis_client, key_prefix, minute - 600, "cam1", "car", 5)
    _count(redis_client, key_prefix, minute, "cam1", "car", 9, metric="tracks")
    _count(redis_client, key_prefix, minute - 7200, "cam1", "car", 100)  # outside the window
    api = redis_api()
    body = api.get("/counts", params={"window": 3600}).json()
    assert len(body["buckets"]) == 60 and body["buckets"][-1] == minute
    series = {s["label"]: s["counts"] for s in body["series"]}
    assert series["car"][-1] == 7 and series["car"][-11] == 5 and sum(series["car"]) == 12
    assert series["person"][-2] == 2
    assert body["totals"] == {"car": 12, "person": 2}
    tracks = api.get("/counts", params={"metric": "tracks"}).json()
    assert tracks["totals"] == {"car": 9}
    one = api.get("/counts", params={"stream": "cam2", "label": "car"}).json()
    assert one["totals"] == {"car": 4}
    per = api.get("/counts", params={"stream": "cam1,cam2", "per_stream": True}).json()
    assert {(s["label"], s["stream"]): s["total"] for s in per["series"]} == {
        ("car", "cam1"): 8,
        ("car", "cam2"): 4,
        ("person", "cam1"): 2,
    }


def test_buckets_aggregate_minutes(redis_api, redis_client, key_prefix):
    hour = int(time.time() // 3600) * 3600
    for k in range(3):
        _count(redis_client, key_prefix, hour + 60 * k, "cam1", "car", 1)
    _count(redis_client, key_prefix, hour - 3600, "cam1", "car", 7)
    body = redis_api().get("/counts", params={"window": 7200, "bucket": 3600}).json()
    assert body["buckets"] == [hour - 3600, hour]
    assert body["series"] == [{"label": "car", "stream": None, "counts": [7, 3], "total": 10}]


def test_bad_windows_are_refused(redis_api):
    api = redis_api()
    assert api.get("/counts", params={"bucket": 90}).status_code == 400
    assert api.get("/counts", params={"window": 60, "bucket": 300}).status_code == 400
    assert api.get("/counts", params={"window": 10**7}).status_code == 400


@pytest.mark.serial  # reads the server's command count (a Redis given by URL is shared)
def test_one_round_trip_for_an_hour_of_100_streams(redis_api, redis_client, key_prefix):
    minute = int(time.time() // 60) * 60
    pipe = redis_client.pipeline()
    for m in range(60):
        for s in range(100):
            pipe.hincrby(counts_key(key_prefix, minute - 60 * m), count_field(f"cam{s}", "car"), 1)
    pipe.execute()
    before = redis_client.info("stats")["total_commands_processed"]
    body = redis_api().get("/counts").json()
    after = redis_client.info("stats")["total_commands_processed"]
    assert body["totals"] == {"car": 6000}
    assert after - before <= 62, "one HGETALL per minute (+ the INFO call), nothing more"
