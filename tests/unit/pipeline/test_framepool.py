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


def test_slots_are_taken_round_robin_from_the_one_after_the_last():
    pool = FramePool(f"vft-{uuid.uuid4().hex[:8]}", 4, 2, 2, create=True)
    try:
        for slot in (0, 1, 2):
            assert pool.acquire() == slot
            pool.publish(slot)
        assert pool.free_slots() == 1
        pool.release(1)  # 3 is next, then the search wraps round to 1
        assert pool.acquire() == 3
        pool.publish(3)
        assert pool.acquire() == 1
        pool.publish(1)
        assert pool.acquire() is None and pool.free_slots() == 0
        pool.release(2)
        pool.release(0)
        assert pool.acquire() == 2, "the search starts after the slot last taken (1)"
        # 2 was taken but not published (still free): the next acquire moves on past it
        assert pool.acquire() == 0, "3 is full, so the search wraps to 0, not back to 2"
    finally:
        pool.close()


def test_too_many_slots_rejected():
    with pytest.raises(ValueError):
        FramePool("x", 65, 2, 2, create=True)


def test_release_of_a_vanished_pool_is_harmless():
    PoolCache(2, 2, 2).release("vft-never-existed", 0)
    assert np.zeros(1).size == 1


def _device_producer(name: str, ready, done) -> None:  # runs in a spawned process
    import torch

    pool = FramePool(name, 2, 4, 5, create=True, device=0)
    slot = pool.acquire()
    assert slot == 0
    torch.as_tensor(pool.image(1), device="cuda").fill_(7)
    torch.as_tensor(pool.image(slot), device="cuda").copy_(
        torch.arange(60, dtype=torch.uint8, device="cuda").reshape(4, 5, 3)
    )
    torch.cuda.synchronize()
    pool.publish(slot)
    ready.set()
    done.wait(60)
    pool.close()


@pytest.mark.gpu
def test_device_pool_crosses_processes_by_cuda_ipc():
    import multiprocessing as mp

    import torch

    ctx = mp.get_context("spawn")
    ready, done = ctx.Event(), ctx.Event()
    name = f"vft-{uuid.uuid4().hex[:8]}"
    child = ctx.Process(target=_device_producer, args=(name, ready, done))
    child.start()
    consumers = PoolCache(4, 5, 2)
    try:
        assert ready.wait(60), "the producer process did not publish a frame"
        pool = consumers.get(name)
        assert pool.on_device and pool.free_slots() == 1
        image = pool.image(0)
        assert hasattr(image, "__cuda_array_interface__")
        got = torch.as_tensor(image, device="cuda").cpu().numpy()
        assert (got.reshape(-1) == np.arange(60)).all()
        assert int(torch.as_tensor(pool.image(1), device="cuda").sum()) == 7 * 60
    finally:
        consumers.close()
        done.set()
        child.join(30)
    assert child.exitcode == 0
