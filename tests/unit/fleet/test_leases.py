"""Leases on a real Redis: exclusive, renewed with the seq floor, lost, released."""

from __future__ import annotations

import redis

from tests.conftest import wait_until
from visionflow.fleet.leases import LeaseBook
from visionflow.schema import fleet_lease_key


def test_one_holder_at_a_time_and_the_holder_is_readable(redis_client, key_prefix):
    a = LeaseBook(redis_client, key_prefix, "node-a", 5.0)
    b = LeaseBook(redis_client, key_prefix, "node-b", 5.0)
    lease = a.try_acquire("cam1")
    assert lease is not None and lease.token.startswith("node-a/")
    assert b.try_acquire("cam1") is None
    assert b.owners(["cam1", "cam2"]) == {"cam1": "node-a", "cam2": None}
    second = b.try_acquire("cam2")
    assert second is not None and second.fence > lease.fence  # fencing tokens only grow


def test_renewal_extends_and_records_the_floor(redis_client, key_prefix):
    book = LeaseBook(redis_client, key_prefix, "node-a", 1.0)
    lease = book.try_acquire("cam1")
    assert lease is not None
    assert book.renew([lease], {"cam1": 500}) == []
    assert redis_client.pttl(fleet_lease_key(key_prefix, "cam1")) > 900
    floor = book.floor("cam1")
    assert floor is not None and (floor.floor, floor.node, floor.released) == (500, "node-a", False)


def test_an_expired_lease_is_lost_and_its_floor_cannot_move(redis_client, key_prefix):
    a = LeaseBook(redis_client, key_prefix, "node-a", 1.0)
    b = LeaseBook(redis_client, key_prefix, "node-b", 5.0)
    lease = a.try_acquire("cam1")
    assert lease is not None and a.renew([lease], {"cam1": 10}) == []
    taken = wait_until(lambda: b.try_acquire("cam1"), 5, "lease never expired")
    assert a.renew([lease], {"cam1": 99}) == ["cam1"]  # the old holder learns it lost it
    assert not a.release(lease, 99)
    assert b.owners(["cam1"]) == {"cam1": "node-b"}
    floor = b.floor("cam1")
    assert floor is not None and floor.floor == 10  # the stale holder wrote nothing
    assert b.release(taken, 42)
    released = b.floor("cam1")
    assert released is not None and (released.floor, released.released) == (42, True)
    assert b.owners(["cam1"]) == {"cam1": None}


def test_redis_emptied_means_every_lease_lost(redis_server, key_prefix):
    client = redis.Redis.from_url(redis_server)
    try:
        book = LeaseBook(client, key_prefix, "node-a", 5.0)
        leases = [book.try_acquire(f"cam{i}") for i in range(3)]
        assert all(leases)
        client.delete(*[fleet_lease_key(key_prefix, f"cam{i}") for i in range(3)])
        assert sorted(book.renew([x for x in leases if x], {})) == ["cam0", "cam1", "cam2"]
    finally:
        client.close()
