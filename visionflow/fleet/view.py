"""The fleet as Redis holds it, for ``GET /fleet``: nodes, the streams each holds, load."""

from __future__ import annotations

import json
import time
from typing import Any

import redis

from visionflow.fleet.leases import owner_of
from visionflow.schema import fleet_alive_key, fleet_lease_key, fleet_nodes_key


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def lease_holders(client: redis.Redis, prefix: str) -> dict[str, str]:
    """Every stream with a lease now -> the node holding it (SCAN over the lease keys)."""
    head = f"{prefix}:fleet:lease:"
    keys = [_text(k) for k in client.scan_iter(match=f"{head}*", count=500)]
    if not keys:
        return {}
    values = client.mget(keys)
    holders = {}
    for key, value in zip(keys, values, strict=True):  # type: ignore[arg-type]
        owner = owner_of(value)
        if owner is not None:
            holders[key[len(head) :]] = owner
    return holders


def node_records(client: redis.Redis, prefix: str) -> list[tuple[str, dict[str, Any], str | None]]:
    """Every node's last heartbeat record and its alive flag (None: gone), by node id."""
    raw = client.hgetall(fleet_nodes_key(prefix))
    records = {_text(k): json.loads(_text(v)) for k, v in raw.items()}  # type: ignore[union-attr]
    ids = sorted(records)
    alive = client.mget([fleet_alive_key(prefix, nid) for nid in ids]) if ids else []
    flags = [None if flag is None else _text(flag) for flag in alive]  # type: ignore[union-attr]
    return [(nid, records[nid], flag) for nid, flag in zip(ids, flags, strict=True)]


def fleet_view(
    client: redis.Redis, prefix: str, streams: list[str] | None = None
) -> dict[str, Any]:
    """``{"nodes": [...], "unassigned": [...], "streams": {id: node}}``; each node with
    ``alive``, ``last_heartbeat_ts``, weight, capacity, labels, state, its leased streams
    and ``load`` (leased streams / capacity, or the count when it has no capacity)."""
    holders = lease_holders(client, prefix)
    by_node: dict[str, list[str]] = {}
    for sid, node in sorted(holders.items()):
        by_node.setdefault(node, []).append(sid)
    nodes = []
    for nid, rec, flag in node_records(client, prefix):
        leased = by_node.get(nid, [])
        capacity = rec.get("capacity")
        nodes.append(
            {
                "node_id": nid,
                "alive": flag is not None,
                "state": rec.get("state") if flag is not None else "gone",
                "last_heartbeat_ts": rec.get("heartbeat_ts"),
                "heartbeat_age_s": round(time.time() - float(rec.get("heartbeat_ts", 0)), 3),
                "weight": rec.get("weight"),
                "capacity": capacity,
                "labels": rec.get("labels", {}),
                "streams": leased,
                "reading": rec.get("reading", []),
                "load": round(len(leased) / capacity, 3) if capacity else len(leased),
                "handovers": rec.get("handovers", 0),
                "error": rec.get("error"),
            }
        )
    unassigned = sorted(s for s in (streams or []) if s not in holders)
    return {"nodes": nodes, "streams": dict(sorted(holders.items())), "unassigned": unassigned}


__all__ = ["fleet_lease_key", "fleet_view", "lease_holders"]
