from __future__ import annotations

from visionflow.pipeline.dispatch import Dispatcher
from visionflow.pipeline.frames import BatchRequest, FrameRef
from visionflow.pipeline.letterbox import letterbox_geometry
from visionflow.pipeline.ordering import BatchReorder

LB = letterbox_geometry(64, 64, 32, 32)


def frame(stream: str, seq: int) -> FrameRef:
    return FrameRef(stream, seq, None, 0.0, 1.0, "p", 0, LB)


def test_least_loaded_worker_with_room_is_picked():
    d = Dispatcher()
    d.add_worker(0, capacity=2)
    d.add_worker(1, capacity=2)
    d.sent(d.pick(), BatchRequest(1, (frame("a", 0), frame("a", 1)), 0.0))
    assert d.pick().worker_id == 1
    d.sent(d.workers[1], BatchRequest(2, (frame("a", 2),), 0.0))
    d.sent(d.workers[1], BatchRequest(3, (frame("a", 3),), 0.0))
    assert d.pick().worker_id == 0  # 1 is full
    d.sent(d.workers[0], BatchRequest(4, (frame("a", 4),), 0.0))
    assert d.pick() is None and not d.has_capacity()
    assert d.completed(2, 1.0).batch_id == 2 and d.pick().worker_id == 1


def test_slow_worker_gets_less():
    d = Dispatcher()
    d.add_worker(0, capacity=4)
    d.add_worker(1, capacity=4)
    d.workers[0].busy_ms_ewma, d.workers[1].busy_ms_ewma = 10.0, 1.0
    d.sent(d.workers[1], BatchRequest(1, (frame("a", 0),), 0.0))
    assert d.pick().worker_id == 1


def test_dead_worker_gives_back_its_batches():
    d = Dispatcher()
    d.add_worker(0, capacity=2)
    d.sent(d.workers[0], BatchRequest(7, (frame("a", 0),), 0.0))
    lost = d.fail_worker(0)
    assert [b.batch_id for b in lost] == [7] and d.pick() is None
    assert d.completed(7, None) is None


def test_alike_workers_take_turns():
    d = Dispatcher()
    d.add_worker(0, capacity=4)
    d.add_worker(1, capacity=4)
    d.workers[0].busy_ms_ewma, d.workers[1].busy_ms_ewma = 1.00, 1.08  # alike GPUs, noise
    picks = []
    for i in range(100):
        w = d.pick()
        picks.append(w.worker_id)
        d.sent(w, BatchRequest(i, (frame("a", i),), 0.0))
        d.completed(i, None)
    assert abs(picks.count(0) - picks.count(1)) <= 2, picks


def test_batches_are_released_in_batch_order():
    r: BatchReorder[str] = BatchReorder()
    assert r.add(2, "b2") == [] and r.add(3, "b3") == []
    assert r.add(1, "b1") == ["b1", "b2", "b3"]
    assert r.waiting_for == 4 and r.held == 0


def test_abandoned_batches_unblock_later_ones_and_duplicates_are_ignored():
    r: BatchReorder[str] = BatchReorder()
    assert r.add(2, "b2") == []
    assert r.abandon(1) == ["b2"]
    assert r.add(2, "again") == [] and r.add(1, "late") == []
    assert r.duplicates == 2


def test_a_gap_that_never_closes_is_skipped_after_the_timeout():
    now = [0.0]
    r: BatchReorder[str] = BatchReorder(first_batch_id=5, clock=lambda: now[0])
    assert r.add(7, "b7") == [] and r.skip_stale(15.0) == []
    now[0] = 14.0
    assert r.add(8, "b8") == [] and r.skip_stale(15.0) == [], "the wait counts from the first held"
    now[0] = 15.5
    assert r.skip_stale(15.0) == ["b7", "b8"] and r.skipped == [5, 6]
    assert r.add(6, "late") == [] and r.duplicates == 1
