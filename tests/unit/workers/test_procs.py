"""The process group's restart policy (process objects are the injected seam)."""

from __future__ import annotations

import multiprocessing as mp
import os
import threading
from typing import Any

from visionflow.workers.procs import ProcessGroup, child_environment, restart_delay


class Proc:
    def __init__(self) -> None:
        self.alive, self.exitcode, self.killed = True, None, False

    def is_alive(self) -> bool:
        return self.alive

    def kill(self) -> None:
        self.killed, self.alive, self.exitcode = True, False, -9

    def join(self, timeout: float | None = None) -> None:
        pass


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def test_a_dead_child_is_reported_then_restarted_after_its_delay():
    clock, spawned, exits = Clock(), [], []
    group = ProcessGroup(clock)

    def spawn(restarts: int) -> Proc:
        spawned.append(restarts)
        return Proc()

    child = group.add("w", spawn, lambda c, why: exits.append(why))
    clock.t = 60.0
    child.process.alive, child.process.exitcode = False, 1
    assert group.check() == ["w"] and exits == ["exited (1)"]
    assert spawned == [0]
    clock.t += 0.4
    group.check()
    assert spawned == [0]
    clock.t += 0.2
    group.check()
    assert spawned == [0, 1] and child.alive


def test_a_silent_child_is_killed_and_a_crash_loop_backs_off():
    clock = Clock()
    group = ProcessGroup(clock, start_grace_s=1.0)
    child = group.add("ingest-0", lambda r: Proc(), heartbeat_timeout=5.0)
    clock.t = 3.0
    group.beat("ingest-0")
    clock.t = 7.9
    assert group.check() == []
    clock.t = 8.1
    proc = child.process
    assert group.check() == ["ingest-0"] and proc.killed
    assert restart_delay(1.0, 0) == 0.5 and restart_delay(1.0, 4) == 8.0
    assert restart_delay(1.0, 1000) == 30.0 and restart_delay(100.0, 1000) == 0.5


def test_a_child_watched_after_its_first_beat_may_take_its_time_to_start():
    """An output process reading back a large spool before its first stats is not silent;
    once it has beaten, silence counts (each incarnation afresh)."""
    clock = Clock()
    group = ProcessGroup(clock, start_grace_s=1.0)
    child = group.add("output", lambda r: Proc(), heartbeat_timeout=5.0, after_first_beat=True)
    clock.t = 120.0
    assert group.check() == [], "killed while starting up"
    group.beat("output")
    clock.t = 125.5
    assert group.check() == ["output"], "silent after its first beat"
    clock.t += 1.0
    group.check()  # restarted (past its delay): a new incarnation, not yet beaten
    assert child.alive and not child.beaten
    clock.t += 60.0
    assert group.check() == []


def test_a_child_told_not_to_restart_stays_down_and_stopping_restarts_nothing():
    clock = Clock()
    group = ProcessGroup(clock)

    def no_restart(child, why):
        child.restart = False

    child = group.add("w", lambda r: Proc(), no_restart)
    child.process.alive = False
    group.check()
    clock.t = 100
    assert group.check() == [] and child.process is None
    other = group.add("x", lambda r: Proc())
    group.stopping = True
    other.process.alive = False
    assert group.check() == []


_ORPHAN_SCRIPT = """
import multiprocessing as mp, sys, time
from visionflow.workers.procs import exit_with_parent

def child():
    exit_with_parent(0.1)
    time.sleep(60)

if __name__ == "__main__":
    p = mp.get_context("spawn").Process(target=child, daemon=True)
    p.start()
    print(p.pid, flush=True)
    time.sleep(60)
"""


def test_a_child_exits_when_its_parent_is_sigkilled(tmp_path):
    """A SIGKILLed pipeline cannot stop its children; they must notice and go."""
    import os
    import signal
    import subprocess
    import sys

    from tests.conftest import wait_until

    script = tmp_path / "orphan.py"
    script.write_text(_ORPHAN_SCRIPT)
    parent = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    assert parent.stdout is not None
    child = int(parent.stdout.readline())
    parent.send_signal(signal.SIGKILL)
    parent.wait()

    def gone() -> bool:
        try:
            os.kill(child, 0)
        except ProcessLookupError:
            return True
        with open(f"/proc/{child}/stat") as f:  # reaped by init, or a zombie of it
            return f.read().split()[2] == "Z"

    wait_until(gone, 10, f"orphaned child {child} still running")


def _report_blas_threads(queue: Any) -> None:
    queue.put(os.environ.get("OPENBLAS_NUM_THREADS"))


def test_children_start_with_one_blas_thread_and_the_parent_environment_is_left_alone(
    monkeypatch: Any,
) -> None:
    monkeypatch.delenv("OPENBLAS_NUM_THREADS", raising=False)
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    child = ProcessGroup().add(
        "blas", lambda _: _start(ctx.Process(target=_report_blas_threads, args=(queue,)))
    )
    try:
        assert queue.get(timeout=60) == "1"
    finally:
        child.process.join(timeout=30)
    assert "OPENBLAS_NUM_THREADS" not in os.environ  # only the child saw it
    monkeypatch.setenv("OPENBLAS_NUM_THREADS", "3")
    with child_environment():
        assert os.environ["OPENBLAS_NUM_THREADS"] == "3"  # the user's choice wins
    assert os.environ["OPENBLAS_NUM_THREADS"] == "3"


def _start(process: Any) -> Any:
    process.start()
    return process


def test_spawns_on_two_threads_do_not_wait_for_each_other(monkeypatch: Any) -> None:
    # a spawn takes the pipeline's locks; another thread holding one of them may be starting a
    # child too: the environment must never make one spawn wait for another
    monkeypatch.delenv("OPENBLAS_NUM_THREADS", raising=False)
    inside = threading.Event()
    pipeline_lock = threading.Lock()

    def slow_spawn(_: int) -> Any:
        inside.set()
        with pipeline_lock:  # held by the main thread below
            pass
        return Proc()

    group = ProcessGroup()
    thread = threading.Thread(target=lambda: group.add("a", slow_spawn), daemon=True)
    with pipeline_lock:
        thread.start()
        assert inside.wait(10), "the first spawn never started"
        second = threading.Thread(target=lambda: group.add("b", lambda _: Proc()), daemon=True)
        second.start()
        second.join(10)
        assert not second.is_alive(), "a spawn waited for another thread's spawn"
        assert os.environ.get("OPENBLAS_NUM_THREADS") == "1"  # the first is still spawning
    thread.join(10)
    assert not thread.is_alive(), "the first spawn never finished"
    assert set(group.children) == {"a", "b"}
    assert "OPENBLAS_NUM_THREADS" not in os.environ  # the last one out removed it
