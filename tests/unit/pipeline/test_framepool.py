from __future__ import annotations

import uuid

import numpy as np
import pytest

from visionflow.pipeline.framepool import FramePool, PoolCache


def test_slots_cycle_between_producer_and_consumer():
    name = f"vft-{uuid.uuid4().hex[:8]}"
    producer = FramePool(name, 3, 4, 5, create=True)
    consumers = PoolCache(4, 5, 3)
    try:
        taken = []
        for value in (1, 2, 3):
            slot = producer.acquire()
            assert slot is not None
            producer.image(slot)[:] = value
            producer.publish(slot)
            taken.append(slot)
        assert producer.acquire() is None and producer.free_slots() == 0
        view = consumers.get(name)
        assert [int(view.image(s)[0, 0, 0]) for s in taken] == [1, 2, 3]
        consumers.release(name, taken[1])
        assert producer.acquire() == taken[1]
    finally:
        consumers.close()
        producer.close()
    with pytest.raises(FileNotFoundError):
        FramePool(name, 3, 4, 5)


def test_too_many_slots_rejected():
    with pytest.raises(ValueError):
        FramePool("x", 65, 2, 2, create=True)


def test_release_of_a_vanished_pool_is_harmless():
    PoolCache(2, 2, 2).release("vft-never-existed", 0)
    assert np.zeros(1).size == 1
