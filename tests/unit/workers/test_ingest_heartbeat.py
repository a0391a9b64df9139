"""The ingest process beats from a thread of its own: a slow command (opening a stream on a
busy GPU) does not make it look silent; a command stuck past the deadline does."""

from __future__ import annotations

import queue
import threading
import time

from visionflow.config import SourceConfig
from visionflow.workers import ingest
from visionflow.workers.ingest import COMMAND_DEADLINE_S, IngestProcess, IngestQueues
from visionflow.workers.messages import IngestHeartbeat, SetAnalysisRates


def _process() -> tuple[IngestProcess, queue.Queue[object]]:
    control: queue.Queue[object] = queue.Queue()
    queues = IngestQueues(frames=queue.Queue(), control=control, commands=queue.Queue())
    return IngestProcess(0, "t", SourceConfig(), (64, 64), 2, queues), control


def _beats(control: queue.Queue[object], n: int, timeout: float) -> int:
    """Heartbeats seen on ``control`` until ``n`` arrived or ``timeout`` passed."""
    seen, until = 0, time.monotonic() + timeout
    while seen < n and time.monotonic() < until:
        try:
            msg = control.get(timeout=max(0.01, until - time.monotonic()))
        except queue.Empty:
            break
        seen += isinstance(msg, IngestHeartbeat)
    return seen


def test_heartbeats_keep_coming_while_a_command_blocks() -> None:
    process, control = _process()
    entered, release = threading.Event(), threading.Event()

    def slow(command: object) -> None:
        entered.set()
        release.wait(10)

    process._dispatch = slow  # type: ignore[method-assign]
    process.start_heartbeat()
    worker = threading.Thread(target=process.run_command, args=(SetAnalysisRates(()),))
    worker.start()
    try:
        assert entered.wait(5), "the command never started"
        while not control.empty():  # beats from before the command
            control.get_nowait()
        got = _beats(control, 3, timeout=3 * ingest.HEARTBEAT_S + 3)
        assert got == 3, f"{got} heartbeats while a command blocked (expected 3)"
    finally:
        release.set()
        worker.join(5)
        process.stop_heartbeat()


def test_a_command_stuck_past_the_deadline_stops_the_heartbeat() -> None:
    process, _ = _process()
    assert not process.command_stuck(time.monotonic())  # idle
    process._busy_since = 100.0
    assert not process.command_stuck(100.0 + COMMAND_DEADLINE_S - 1)
    assert process.command_stuck(100.0 + COMMAND_DEADLINE_S + 1)


def test_no_heartbeat_follows_the_final_one():
    """The final heartbeat carries the last counts: the beating thread is stopped first, so
    nothing older can overwrite them on the board."""
    process, control = _process()
    process.queues.commands.put(None)  # serve returns at once
    process.serve()
    assert not process._beat_thread.is_alive(), "the heartbeat thread outlived serve()"
    while not control.empty():
        control.get_nowait()
    assert _beats(control, 1, timeout=3 * ingest.HEARTBEAT_S) == 0, "a beat after the final one"


def test_a_decoder_cut_reaches_the_readers_with_their_shares() -> None:
    process, _ = _process()
    told: dict[str, tuple[float | None, bool]] = {}

    class Reader:  # the part of a StreamReader the command calls
        def __init__(self, sid: str) -> None:
            self.sid = sid

        def set_share(self, fps: float | None, decoder_bound: bool = False) -> None:
            told[self.sid] = (fps, decoder_bound)

    process.readers = {"a": Reader("a"), "b": Reader("b")}  # type: ignore[dict-item]
    process.run_command(SetAnalysisRates((("a", 12.0), ("b", None)), decoder_bound=True))
    assert told == {"a": (12.0, True), "b": (None, True)}
    process.run_command(SetAnalysisRates((("a", 12.0),)))
    assert told["a"] == (12.0, False), "an inference cut is not a decoder cut"
