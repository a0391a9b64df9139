"""GET /fleet: nodes with liveness and load, streams by holder, unassigned ones."""

from __future__ import annotations

import json
import time

import redis
from fastapi.testclient import TestClient

from visionflow.api.app import create_app
from visionflow.api.context import ApiContext
from visionflow.api.sources import RedisSource
from visionflow.fleet.leases import LeaseBook
from visionflow.schema import fleet_alive_key, fleet_nodes_key


def _node(client: redis.Redis, prefix: str, node_id: str, alive: bool, **rec: object) -> None:
    record = {"node_id": node_id, "state": "running", "weight": 1.0, "capacity": 4,
              "labels": {"site": "north"}, "heartbeat_ts": time.time(), **rec}  # fmt: skip
    client.hset(fleet_nodes_key(prefix), node_id, json.dumps(record))
    if alive:
        client.set(fleet_alive_key(prefix, node_id), "running", px=5000)


def test_fleet_lists_nodes_their_streams_and_load(redis_api, redis_server, key_prefix):
    client = redis.Redis.from_url(redis_server)
    _node(client, key_prefix, "gpu-1", True)
    _node(client, key_prefix, "gpu-2", False)
    book = LeaseBook(client, key_prefix, "gpu-1", 5.0)
    assert book.try_acquire("cam1") and book.try_acquire("cam2")
    body = redis_api().get("/fleet").json()
    client.close()
    nodes = {n["node_id"]: n for n in body["nodes"]}
    assert nodes["gpu-1"]["alive"] and nodes["gpu-1"]["streams"] == ["cam1", "cam2"]
    assert nodes["gpu-1"]["load"] == 0.5 and nodes["gpu-1"]["labels"] == {"site": "north"}
    assert not nodes["gpu-2"]["alive"] and nodes["gpu-2"]["state"] == "gone"
    assert body["streams"] == {"cam1": "gpu-1", "cam2": "gpu-1"}


def test_fleet_is_503_when_redis_is_unreachable():
    dead = redis.Redis(port=1, socket_connect_timeout=0.2)
    ctx = ApiContext(RedisSource(dead, "x"), dead, "x")
    answer = TestClient(create_app(ctx, None)).get("/fleet")
    assert answer.status_code == 503 and "redis unreachable" in answer.json()["detail"]


def test_drain_and_undrain_a_node_need_the_token(redis_api, redis_server, key_prefix):
    from tests.unit.api.conftest import TOKEN
    from visionflow.schema import fleet_drain_key

    client = redis.Redis.from_url(redis_server)
    _node(client, key_prefix, "gpu-1", True)
    api = redis_api()
    route = "/fleet/nodes/gpu-1/drain"
    assert api.post(route).status_code == 401
    auth = {"Authorization": f"Bearer {TOKEN}"}
    assert api.post("/fleet/nodes/nope/drain", headers=auth).status_code == 404
    assert api.post(route, headers=auth).status_code == 202
    assert client.exists(fleet_drain_key(key_prefix, "gpu-1"))
    assert api.delete(route, headers=auth).status_code == 204
    assert not client.exists(fleet_drain_key(key_prefix, "gpu-1"))
    client.close()
