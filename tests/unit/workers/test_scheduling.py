"""The scheduler thread: whatever one step raises, the loop goes on (a dead scheduler thread
would hang every stream)."""

from __future__ import annotations

import queue
import threading

from tests.conftest import wait_until
from visionflow.pipeline.framepool import PoolCache
from visionflow.pipeline.frames import FrameRef
from visionflow.pipeline.letterbox import letterbox_geometry
from visionflow.pipeline.scheduler import Scheduler, Send
from visionflow.workers.messages import BatchDone, FrameBatch
from visionflow.workers.scheduling import SchedulerLoop

LB = letterbox_geometry(64, 64, 32, 32)


def frames(seqs: range) -> tuple[FrameRef, ...]:
    return tuple(FrameRef("a", s, None, 0.0, 1.0, "vf-none", s % 4, LB) for s in seqs)


def test_a_failing_send_is_logged_and_the_loop_keeps_dispatching():
    scheduler = Scheduler(max_batch=2, max_delay_s=0.0, buffer_per_stream=8)
    scheduler.add_stream("a")
    scheduler.add_worker(0, capacity=4)
    scheduler.worker_ready(0)
    sent: list[Send] = []
    failed = threading.Event()

    def send(s: Send) -> None:
        if not failed.is_set():
            failed.set()
            raise BrokenPipeError("worker queue gone")
        sent.append(s)

    inbox: queue.Queue[object] = queue.Queue()
    loop = SchedulerLoop(scheduler, inbox, PoolCache(32, 32, 4), send, lambda m: None)
    loop.start()
    try:
        inbox.put(FrameBatch(0, frames(range(2))))
        wait_until(failed.is_set, 5, "the first batch was never sent")
        inbox.put(FrameBatch(0, frames(range(2, 4))))
        wait_until(lambda: sent, 5, "the loop stopped after a failing step")
        assert loop.thread.is_alive() and loop.errors == 1
        inbox.put(BatchDone(sent[0].request.batch_id, 0, 2, 1.0))
        wait_until(
            lambda: scheduler.ledger.snapshot("a").inferred == 2,
            5,
            "BatchDone not handled after the failure",
        )
    finally:
        loop.stop()
    assert not loop.thread.is_alive()
