"""Stream leases in Redis: which node reads a stream.

A lease is redis-py's :class:`redis.lock.Lock` on ``<prefix>:fleet:lease:<stream_id>``
(``SET NX PX`` to take it, its compare-and-delete Lua script to give it back): a well-kept,
widely used primitive whose value is a token only its holder knows.  Our token is
``<node_id>/<fence>.<nonce>``, ``fence`` a counter bumped for every lease taken (a fencing
token: a later owner always has a higher one) and ``nonce`` 8 random hex digits (a Redis that
restarted without its data restarts the counter too: the nonce keeps a new lease's value from
repeating an old one, which the write fence compares), so the holder is readable with one GET.

Renewal is one Lua script per lease, all of a node's leases in one pipelined round trip:
the compare-and-extend of ``Lock.extend`` (PEXPIRE only while the value is still our token)
plus, in the same atomic step, the stream's *seq floor* (``<prefix>:fleet:seq``): the lowest
``seq`` the next owner may use.  A node that lost a lease (it expired, or Redis restarted
empty) learns it from the script's 0 and can no longer move the floor.
"""

from __future__ import annotations

import contextlib
import json
import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import redis
from redis.lock import Lock

from visionflow.schema import fleet_fence_key, fleet_lease_key, fleet_seq_key

# KEYS[1] lease, KEYS[2] seq hash; ARGV: token, ttl ms, stream id, floor JSON ('' = keep)
RENEW_LUA = """
if redis.call('get', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('pexpire', KEYS[1], ARGV[2])
if ARGV[4] ~= '' then redis.call('hset', KEYS[2], ARGV[3], ARGV[4]) end
return 1
"""


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


@dataclass
class Lease:
    """A lease this node holds; ``valid_until`` (monotonic) is when it may have expired:
    the start of the last successful renewal plus the timeout."""

    stream_id: str
    token: str
    fence: int
    lock: Lock
    valid_until: float


@dataclass(frozen=True)
class SeqFloor:
    """What the previous owner left for the next: the lowest seq it may use."""

    floor: int
    node: str
    released: bool


def owner_of(token: str | bytes | None) -> str | None:
    """The node id in a lease value (``<node_id>/<fence>.<nonce>``)."""
    if token is None:
        return None
    return _text(token).rsplit("/", 1)[0]


class LeaseBook:
    """Takes, renews and gives back stream leases of one node."""

    def __init__(self, client: redis.Redis, prefix: str, node_id: str, ttl_s: float) -> None:
        self.client, self.prefix, self.node_id, self.ttl_s = client, prefix, node_id, ttl_s
        self.seq_key = fleet_seq_key(prefix)
        self._renew = client.register_script(RENEW_LUA)

    def _floor_json(self, lease: Lease, floor: int, released: bool = False) -> str:
        return json.dumps(
            {
                "floor": floor,
                "node": self.node_id,
                "fence": lease.fence,
                "released": released,
                "ts": round(time.time(), 3),
            },
            separators=(",", ":"),
        )

    def try_acquire(self, stream_id: str) -> Lease | None:
        """The stream's lease, or None when another node holds it."""
        fence = int(self.client.incr(fleet_fence_key(self.prefix)))  # type: ignore[arg-type]
        token = f"{self.node_id}/{fence}.{secrets.token_hex(4)}"
        lock = Lock(
            self.client, fleet_lease_key(self.prefix, stream_id), timeout=self.ttl_s,
            thread_local=False,
        )  # fmt: skip
        started = time.monotonic()
        if not lock.acquire(blocking=False, token=token):
            return None
        return Lease(stream_id, token, fence, lock, started + self.ttl_s)

    def renew(self, leases: Sequence[Lease], floors: dict[str, int]) -> list[str]:
        """Extend every lease (and record its seq floor) in one round trip; the ids of the
        leases no longer ours.  ``redis.RedisError`` when Redis cannot be reached (then
        nothing is known: the caller stops streams before their ``valid_until``)."""
        if not leases:
            return []
        started = time.monotonic()
        pipe = self.client.pipeline(transaction=False)
        ttl_ms = int(self.ttl_s * 1000)
        for lease in leases:
            floor = floors.get(lease.stream_id)
            payload = "" if floor is None else self._floor_json(lease, floor)
            self._renew(
                keys=[lease.lock.name, self.seq_key],
                args=[lease.token, ttl_ms, lease.stream_id, payload],
                client=pipe,
            )
        lost = []
        for lease, ok in zip(leases, pipe.execute(), strict=True):
            if int(ok):
                lease.valid_until = started + self.ttl_s
            else:
                lost.append(lease.stream_id)
        return lost

    def release(self, lease: Lease, floor: int) -> bool:
        """Record the final seq floor and give the lease back; False when it was no longer
        ours (then the floor was not written either)."""
        ttl_ms = int(self.ttl_s * 1000)
        payload = self._floor_json(lease, floor, released=True)
        ok = self._renew(
            keys=[lease.lock.name, self.seq_key],
            args=[lease.token, ttl_ms, lease.stream_id, payload],
        )
        if not int(ok):
            return False
        try:
            lease.lock.release()
        except redis.exceptions.LockNotOwnedError:
            return False
        return True

    def give_back(self, lease: Lease) -> None:
        """Give a lease back without recording a floor (it was taken, nothing read): best
        effort; when Redis cannot be reached the lease expires on its own."""
        with contextlib.suppress(redis.RedisError):
            lease.lock.release()

    def floor(self, stream_id: str) -> SeqFloor | None:
        """The seq floor the stream's previous owner left (None: never owned)."""
        raw = self.client.hget(self.seq_key, stream_id)
        if raw is None:
            return None
        data = json.loads(_text(raw))  # type: ignore[arg-type]
        return SeqFloor(int(data["floor"]), str(data["node"]), bool(data.get("released")))

    def owners(self, stream_ids: Sequence[str]) -> dict[str, str | None]:
        """The node holding each stream's lease (None: nobody), one MGET."""
        if not stream_ids:
            return {}
        keys = [fleet_lease_key(self.prefix, sid) for sid in stream_ids]
        values = self.client.mget(keys)
        return {sid: owner_of(v) for sid, v in zip(stream_ids, values, strict=True)}  # type: ignore[arg-type]
