"""Result channels: a worker SIGKILLed while writing a large result costs only its own pipe;
the other workers' results and the output's inbox keep flowing (a shared queue wedges)."""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import os
import queue
import signal
import time

import pytest

from visionflow.workers.channels import ChannelReaders, ChannelWriter

CTX = mp.get_context("spawn")
BIG = 4_000_000  # far past a pipe's buffer: the write takes many system calls


def _big_writer(conn, started) -> None:  # type: ignore[no-untyped-def]
    writer = ChannelWriter(conn)
    started.set()
    while True:
        writer.put(b"x" * BIG)
        time.sleep(0.001)


def _small_writer(conn, n) -> None:  # type: ignore[no-untyped-def]
    writer = ChannelWriter(conn)
    for i in range(n):
        writer.put(("result", i))
    writer.close()
    writer.join_thread()


def _read_until(readers: ChannelReaders, want: int, timeout: float) -> list[object]:
    got: list[object] = []
    until = time.monotonic() + timeout
    while len([m for m in got if isinstance(m, tuple)]) < want and time.monotonic() < until:
        try:
            got.append(readers.get(timeout=0.2))
        except queue.Empty:
            continue
    return got


@pytest.mark.parametrize("trial", range(3))
def test_a_writer_killed_mid_message_costs_only_its_own_channel(trial: int) -> None:
    inbox = CTX.Queue()
    readers = ChannelReaders(inbox)
    big_r, big_w = CTX.Pipe(duplex=False)
    small_r, small_w = CTX.Pipe(duplex=False)
    started = CTX.Event()
    victim = CTX.Process(target=_big_writer, args=(big_w, started), daemon=True)
    victim.start()
    big_w.close()  # the writer's copy is the only one: its death ends the channel
    readers.add(1, big_r)
    readers.add(2, small_r)
    assert started.wait(30), "the writer never started"
    first = readers.get(timeout=30)  # one whole message, then the kill lands mid-write
    assert isinstance(first, bytes) and len(first) == BIG
    time.sleep(0.002 * trial)
    os.kill(victim.pid, signal.SIGKILL)  # type: ignore[arg-type]
    victim.join(10)
    other = CTX.Process(target=_small_writer, args=(small_w, 20), daemon=True)
    other.start()
    small_w.close()
    inbox.put(("control", "still read"))
    got = _read_until(readers, 21, timeout=30)
    results = [m for m in got if isinstance(m, tuple) and m[0] == "result"]
    assert [m[1] for m in results] == list(range(20)), f"the other worker's results: {results}"
    assert ("control", "still read") in got, "the inbox stopped with the killed writer"
    # the killed writer's channel ended (EOF or a cut message): dropped, nothing else
    until = time.monotonic() + 10
    while 1 in readers.channels and time.monotonic() < until:
        with contextlib.suppress(queue.Empty):
            readers.get(timeout=0.2)
    assert 1 not in readers.channels, "the dead writer's channel was never dropped"
    other.join(10)


def test_drain_reads_what_stopped_writers_left_then_the_channels_end() -> None:
    readers = ChannelReaders(CTX.Queue())
    r, w = CTX.Pipe(duplex=False)
    writer = CTX.Process(target=_small_writer, args=(w, 5), daemon=True)
    writer.start()
    w.close()
    writer.join(30)
    readers.add(7, r)
    assert [m for m in readers.drain()] == [("result", i) for i in range(5)]
    assert list(readers.drain()) == []


def _put_and_return(conn) -> None:  # type: ignore[no-untyped-def]
    writer = ChannelWriter(conn)
    writer.put(b"y" * BIG)
    writer.close()
    writer.join_thread(timeout=30)  # what the worker does before it exits


def test_a_worker_that_exits_right_after_putting_still_delivers() -> None:
    readers = ChannelReaders(CTX.Queue())
    r, w = CTX.Pipe(duplex=False)
    proc = CTX.Process(target=_put_and_return, args=(w,), daemon=True)
    proc.start()
    w.close()
    readers.add(1, r)
    got = readers.get(timeout=30)  # the sender thread finished before the process ended
    assert isinstance(got, bytes) and len(got) == BIG
    proc.join(30)


class _Stage:
    def __init__(self) -> None:
        self.calls: list[tuple[str, int]] = []

    def on_result(self, msg) -> None:  # type: ignore[no-untyped-def]
        self.calls.append(("result", msg.batch_id))

    def on_abandoned(self, batch_id, frames, reason) -> None:  # type: ignore[no-untyped-def]
        self.calls.append(("abandoned", batch_id))


def test_an_abandonment_never_overtakes_a_result_already_in_a_channel() -> None:
    """The worker wrote batch 5's result, then died; the pipeline's abandonment of batch 5
    comes through the inbox, another channel, and is read first: the output stage still
    takes the result first, so the frames count published, not lost."""
    from visionflow.pipeline.frames import BatchResult
    from visionflow.workers.messages import BatchAbandoned
    from visionflow.workers.output import _handle

    readers = ChannelReaders(CTX.Queue())
    r, w = CTX.Pipe(duplex=False)
    readers.add(1, r)
    w.send(BatchResult(5, 0, ()))
    w.close()
    stage = _Stage()
    _handle(stage, readers, BatchAbandoned(5, (("cam", 4),)))  # type: ignore[arg-type]
    assert stage.calls == [("result", 5), ("abandoned", 5)]
