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
