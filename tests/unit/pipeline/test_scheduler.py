"""The scheduler on an injected clock: batching, dispatch, the ledger, dead workers."""

from __future__ import annotations

from visionflow.pipeline.frames import FrameRef
from visionflow.pipeline.letterbox import letterbox_geometry
from visionflow.pipeline.scheduler import Scheduler

LB = letterbox_geometry(64, 64, 32, 32)


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def frames(stream: str, seqs: range, pool: str = "p") -> tuple[FrameRef, ...]:
    return tuple(FrameRef(stream, s, None, 0.0, 1.0, pool, s % 8, LB) for s in seqs)


def make(max_batch: int = 4, delay: float = 0.01, buffer: int = 16, workers: int = 1):
    clock = Clock()
    s = Scheduler(max_batch, delay, buffer, clock=clock, wall=clock)
    for w in range(workers):
        s.add_worker(w, capacity=2)
        s.worker_ready(w)
    return s, clock


def test_a_full_batch_leaves_at_once_and_a_partial_one_after_the_delay():
    s, clock = make()
    s.add_stream("a")
    s.on_frames(frames("a", range(5)))
    sends = s.take_due()
    assert [len(x.request.frames) for x in sends] == [4]
    assert s.take_due() == []  # one frame waits for its delay
    clock.t += 0.011
    assert [len(x.request.frames) for x in s.take_due()] == [1]
    assert [x.request.batch_id for x in sends] == [1]


def test_every_frame_is_resolved_exactly_once():
    s, clock = make(buffer=2)
    s.add_stream("a")
    free = s.on_frames(frames("a", range(5)))  # buffer 2: three oldest dropped
    assert [f.seq for f in free] == [0, 1, 2]
    sends = s.take_due()
    clock.t += 1
    sends += s.take_due()
    for send in sends:
        s.on_done(send.request.batch_id, 0, 1.0, None)
    snap = s.ledger.snapshot("a")
    assert (snap.announced, snap.inferred, snap.drops, snap.in_flight) == (
        5,
        2,
        {"inference_behind": 3},
        0,
    )
    assert s.ledger.violations == 0
    s.on_done(sends[0].request.batch_id, 0, 1.0, None)  # a duplicate answer frees nothing
    assert s.ledger.violations == 0 and s.ledger.snapshot("a").inferred == 2


def test_frames_of_unknown_streams_are_freed_not_counted():
    s, _ = make()
    assert len(s.on_frames(frames("ghost", range(3)))) == 3
    assert s.ledger.in_flight == 0


def test_a_dead_workers_batches_keep_their_ids_on_another_worker():
    s, _ = make(workers=2)
    s.add_stream("a")
    s.on_frames(frames("a", range(8)))
    sends = s.take_due()
    assert {x.worker_id for x in sends} == {0, 1}, "alike idle workers should both get work"
    lost_worker = sends[0].worker_id
    lost = s.on_worker_lost(lost_worker)
    assert [x.request.batch_id for x in lost.resend] == [sends[0].request.batch_id]
    assert lost.resend[0].worker_id != lost_worker and not lost.abandoned
    # the dead worker's late answer must not free frames the new owner is reading
    assert s.on_done(sends[0].request.batch_id, lost_worker, 1.0, None) == []
    done = s.on_done(sends[0].request.batch_id, lost.resend[0].worker_id, 1.0, None)
    assert len(done) == 4 and s.ledger.violations == 0


def test_without_another_worker_a_lost_batch_is_abandoned_and_counted():
    s, _ = make(workers=1)
    s.add_stream("a")
    s.on_frames(frames("a", range(4)))
    (send,) = s.take_due()
    lost = s.on_worker_lost(0)
    assert lost.resend == () and [r.batch_id for r in lost.abandoned] == [send.request.batch_id]
    assert len(lost.free) == 4
    snap = s.ledger.snapshot("a")  # the output stage decides written or lost, not the ledger
    assert snap.abandoned == 4 and snap.drops == {} and snap.in_flight == 0


def test_inference_errors_are_drops_and_removal_resolves_waiting_frames():
    s, _ = make()
    s.add_stream("a")
    s.on_frames(frames("a", range(6)))
    (send,) = s.take_due()
    s.on_done(send.request.batch_id, 0, None, "RuntimeError: boom")
    assert len(s.remove_stream("a")) == 2
    snap = s.ledger.snapshot("a")
    assert snap.drops == {"inference_error": 4, "stream_removed": 2} and snap.in_flight == 0


def test_round_robin_keeps_a_slow_stream_in_every_batch():
    s, _ = make(max_batch=4, buffer=8)
    for sid in ("busy", "slow"):
        s.add_stream(sid)
    s.on_frames(frames("busy", range(8)) + frames("slow", range(1)))
    first = s.take_due()[0].request.frames
    assert "slow" in {f.stream_id for f in first}


def test_frames_a_worker_could_not_read_are_dropped_not_inferred():
    s, _ = make()
    s.add_stream("a")
    s.on_frames(frames("a", range(4)))
    (send,) = s.take_due()
    gone = send.request.frames[1]
    s.on_done(send.request.batch_id, 0, 1.0, None, ((gone.pool, gone.seq),))
    snap = s.ledger.snapshot("a")
    assert snap.inferred == 3 and snap.drops == {"frame_unavailable": 1}


def test_a_batch_held_past_the_deadline_marks_its_worker_hung_and_a_resend_starts_afresh():
    s, clock = make(workers=2)
    s.add_stream("a")
    s.on_frames(frames("a", range(4)))
    (send,) = s.take_due()
    clock.t += 5
    assert s.overdue(10.0) == []
    clock.t += 6
    assert s.overdue(10.0) == [send.worker_id]
    lost = s.on_worker_lost(send.worker_id)
    assert lost.resend and lost.resend[0].request.formed_ts == clock.t
    assert s.overdue(10.0) == []


def test_the_same_seq_from_a_new_pool_is_another_frame():
    s, _ = make()
    s.add_stream("a")
    s.on_frames(frames("a", range(2), pool="p-old"))
    s.on_frames(frames("a", range(2), pool="p-new"))  # ingest restarted: seq from 0 again
    assert s.ledger.violations == 0 and s.ledger.snapshot("a").in_flight == 4
