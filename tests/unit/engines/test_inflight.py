"""Several batches in flight: the slot ring every GPU backend uses, and its batches."""

from __future__ import annotations

import numpy as np
import pytest

from visionflow.engines.base import PendingBatch
from visionflow.engines.inflight import InflightRing, SlotBatch
from visionflow.errors import EngineError


def _dets(value: float):
    return [(np.zeros((1, 4), np.float32), np.array([value], np.float32), np.zeros(1, np.intp))]


class Stream:
    """A stand-in for a CUDA stream: work queued on it completes when ``run`` is called."""

    def __init__(self) -> None:
        self.queued: list[float] = []
        self.finished: list[float] = []

    def run(self) -> None:
        self.finished.extend(self.queued)
        self.queued.clear()


def _submit(ring: InflightRing[Stream], value: float) -> SlotBatch:
    index, stream = ring.acquire()
    stream.queued.append(value)

    def wait():
        stream.run()
        return _dets(stream.finished[-1])

    return SlotBatch(ring, index, wait, poll=lambda: not stream.queued)


def test_slots_are_taken_round_robin_and_reused_after_collection():
    streams = [Stream(), Stream()]
    ring = InflightRing(streams)
    a, b = _submit(ring, 1.0), _submit(ring, 2.0)
    assert isinstance(a, PendingBatch) and ring.pending == 2
    assert streams[0].queued == [1.0] and streams[1].queued == [2.0]
    assert not a.done()
    with pytest.raises(EngineError, match="already in flight"):
        ring.acquire()
    assert a.result()[0][1].tolist() == [1.0] and a.done() and ring.pending == 1
    c = _submit(ring, 3.0)  # slot 0 again: the oldest was collected
    assert streams[0].queued == [3.0]
    assert b.result()[0][1].tolist() == [2.0] and c.result()[0][1].tolist() == [3.0]
    assert a.result()[0][1].tolist() == [1.0]  # a second call returns the same detections
    assert ring.pending == 0


def test_results_must_be_collected_in_submit_order():
    ring = InflightRing([Stream(), Stream(), Stream()])
    first, second = _submit(ring, 1.0), _submit(ring, 2.0)
    with pytest.raises(EngineError, match="submit order"):
        second.result()
    assert ring.pending == 2  # the refused call changed nothing
    first.result()
    second.result()


def test_a_failed_wait_frees_its_slot_and_raises_again():
    ring = InflightRing([Stream()])
    index, _ = ring.acquire()

    def fail():
        raise EngineError("device lost")

    batch = SlotBatch(ring, index, fail, poll=lambda: True, keep=object())
    for _ in range(2):
        with pytest.raises(EngineError, match="device lost"):
            batch.result()
    assert ring.pending == 0 and batch.done()
    _submit(ring, 1.0).result()


def test_a_batch_that_could_not_start_gives_its_slot_back():
    ring = InflightRing(["s0", "s1"])
    assert ring.acquire() == (0, "s0")
    index, _ = ring.acquire()
    ring.abandon(index)
    assert ring.pending == 1 and ring.acquire() == (1, "s1")
    with pytest.raises(ValueError):
        InflightRing([])
