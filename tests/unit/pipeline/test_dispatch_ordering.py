from __future__ import annotations

from visionflow.pipeline.dispatch import Dispatcher
from visionflow.pipeline.frames import BatchRequest, FrameRef, FrameResult
from visionflow.pipeline.letterbox import letterbox_geometry
from visionflow.pipeline.ordering import ReorderBuffer

LB = letterbox_geometry(64, 64, 32, 32)


def frame(stream: str, seq: int) -> FrameRef:
    return FrameRef(stream, seq, None, 0.0, 1.0, "p", 0, LB)


def result(f: FrameRef) -> FrameResult:
    return FrameResult(f, (), 0.0, 0.0, 1, 0, 0.0)


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


def test_results_are_released_in_sequence_order():
    r = ReorderBuffer()
    f = [frame("a", i) for i in range(4)]
    r.sent(tuple(f[:2]))
    r.sent(tuple(f[2:]))
    assert r.resolve(tuple(f[2:]), tuple(result(x) for x in f[2:])) == []
    ready = r.resolve(tuple(f[:2]), tuple(result(x) for x in f[:2]))
    assert [x.frame.seq for x in ready] == [0, 1, 2, 3]


def test_dropped_frames_unblock_later_results():
    r = ReorderBuffer()
    a, b = frame("a", 0), frame("a", 1)
    r.sent((a,))
    r.sent((b,))
    assert r.resolve((b,), (result(b),)) == []
    assert [x.frame.seq for x in r.resolve((a,))] == [1]
