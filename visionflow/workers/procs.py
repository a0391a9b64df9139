"""The process group: spawn, watch and restart child processes with backoff.

Ingest processes, inference workers and the output process are all children of one group.
A child that exits, or (when it has a heartbeat timeout) stops sending heartbeats, is
killed, its ``on_exit`` hook runs (so its work can be re-sent or counted), and it is started
again after :func:`restart_delay`: at once if it had run a while, backing off up to 30 s if
it keeps dying young (a bad model, a broken library), so a crash loop does not eat the CPU
the healthy processes need.  Nothing here knows what the children do.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from visionflow.streams.backoff import Backoff

log = logging.getLogger("visionflow.procs")
Clock = Callable[[], float]
Spawn = Callable[[int], Any]  # restarts so far -> a started process (is_alive/kill/join)


# The project's one retry policy (:class:`~visionflow.streams.backoff.Backoff`), without
# jitter: children die one at a time and their restarts need no spreading, and an exact
# schedule is easier to read in the logs.
RESTART_BACKOFF = Backoff(initial=0.5, cap=30.0, multiplier=2.0, jitter=0.0)
HEALTHY_LIFE_S = 30.0  # a child that lived longer starts the schedule again

# Each child has one job and the group runs many: a BLAS library spreading a small product
# over every core spins its threads against the others' work (a 100 x 64 cosine-distance
# product in the tracker: 60 us on one thread, 3.7 ms with OpenBLAS's threads on a busy
# 2-core machine).  Children start with one BLAS thread unless the user's environment says
# otherwise; spawned children read it when they import numpy.
CHILD_ENV: Mapping[str, str] = {"OPENBLAS_NUM_THREADS": "1"}


class _ChildEnvironment:
    """Counts the spawns in progress; the first sets the values (where not set already), the
    last removes them.  The lock is held only to count, never across a spawn: a spawn takes
    the pipeline's own locks, which another thread may hold while it starts a child."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.users = 0
        self.added: list[str] = []

    def enter(self, values: Mapping[str, str]) -> None:
        with self.lock:
            if self.users == 0:
                self.added = [k for k in values if k not in os.environ]
                for key in self.added:
                    os.environ[key] = values[key]
            self.users += 1

    def leave(self) -> None:
        with self.lock:
            self.users -= 1
            if self.users == 0:
                for key in self.added:
                    os.environ.pop(key, None)
                self.added = []


_CHILD_ENVIRONMENT = _ChildEnvironment()


@contextlib.contextmanager
def child_environment(values: Mapping[str, str] = CHILD_ENV) -> Iterator[None]:
    """``values`` in ``os.environ`` (where not set already) while a child is spawned; safe
    to nest and to enter from several threads at once."""
    _CHILD_ENVIRONMENT.enter(values)
    try:
        yield
    finally:
        _CHILD_ENVIRONMENT.leave()


def restart_delay(lived_s: float, restarts: int) -> float:
    """Seconds to wait before restarting a child that lived ``lived_s`` seconds and has been
    restarted ``restarts`` times: 0.5 s after a healthy life, else 0.5 s doubling per
    restart up to 30 s (a crash loop).  Any ``restarts`` is safe (no overflow)."""
    if lived_s > HEALTHY_LIFE_S:
        return RESTART_BACKOFF.base_delay(0)
    return RESTART_BACKOFF.base_delay(restarts)


@dataclass
class Child:
    """One supervised process."""

    key: str
    spawn: Spawn
    on_exit: Callable[[Child, str], None] | None
    heartbeat_timeout: float | None
    process: Any = None
    restarts: int = 0
    started: float = 0.0
    last_beat: float = 0.0
    restart_at: float | None = None
    restart: bool = True  # False: leave it down (e.g. a worker whose engine cannot load)
    info: dict[str, Any] = field(default_factory=dict)
    # the heartbeat timeout runs only once this incarnation has beaten (its start-up, e.g.
    # reading a spool, may take as long as it needs)
    after_first_beat: bool = False
    beaten: bool = False

    @property
    def alive(self) -> bool:
        return self.process is not None and bool(self.process.is_alive())


class ProcessGroup:
    """Children by key; :meth:`check` is called periodically by the pipeline."""

    def __init__(self, clock: Clock = time.monotonic, start_grace_s: float = 10.0) -> None:
        self.clock = clock
        self.start_grace_s = start_grace_s
        self.children: dict[str, Child] = {}
        self.stopping = False

    def add(
        self,
        key: str,
        spawn: Spawn,
        on_exit: Callable[[Child, str], None] | None = None,
        heartbeat_timeout: float | None = None,
        after_first_beat: bool = False,
    ) -> Child:
        child = Child(key, spawn, on_exit, heartbeat_timeout, after_first_beat=after_first_beat)
        self.children[key] = child
        self._start(child)
        return child

    def _start(self, child: Child) -> None:
        # the grace first: a check() on another thread (children are added at run time too)
        # must not find the new process with the last beat of nobody and call it silent
        child.last_beat = self.clock() + self.start_grace_s
        child.restart_at = None
        child.beaten = False
        with child_environment():
            child.process = child.spawn(child.restarts)
        child.started = self.clock()
        child.last_beat = child.started + self.start_grace_s

    def beat(self, key: str) -> None:
        child = self.children.get(key)
        if child is not None:
            child.last_beat = max(child.last_beat, self.clock())
            child.beaten = True

    def check(self) -> list[str]:
        """Restart children that are due; handle ones that died or went silent.  Returns
        the keys found dead this time."""
        if self.stopping:
            return []
        now = self.clock()
        found = []
        for child in list(self.children.values()):
            if child.restart_at is not None:
                if now >= child.restart_at:
                    child.restarts += 1
                    self._start(child)
                continue
            reason = self._trouble(child, now)
            if reason is None:
                continue
            found.append(child.key)
            self._down(child, reason, now)
        return found

    def _trouble(self, child: Child, now: float) -> str | None:
        if child.process is None:
            return None
        if not child.process.is_alive():
            return f"exited ({child.process.exitcode})"
        timeout = child.heartbeat_timeout
        if child.after_first_beat and not child.beaten:
            return None
        if timeout is not None and now - child.last_beat > timeout:
            return f"silent for {now - child.last_beat:.0f}s"
        return None

    def _down(self, child: Child, reason: str, now: float) -> None:
        log.error("%s %s", child.key, reason)
        if child.process.is_alive():
            child.process.kill()
        child.process.join(timeout=2)
        if child.on_exit is not None:
            child.on_exit(child, reason)
        if child.restart:
            delay = restart_delay(now - child.started, child.restarts)
            child.restart_at = now + delay
            log.info("%s restarts in %.1fs", child.key, delay)
        else:
            child.process = None

    def remove(self, key: str) -> Child | None:
        return self.children.pop(key, None)

    def processes(self, prefix: str = "") -> list[Any]:
        return [c.process for k, c in self.children.items() if k.startswith(prefix) and c.process]


def exit_with_parent(interval_s: float = 0.5) -> threading.Thread:
    """In a child process: end it (exit code 1, no cleanup) once its parent is gone.

    A pipeline killed with SIGKILL cannot stop its children; without this its ingest
    processes would go on reading cameras that, in a fleet, another node takes over.  The
    parent's death is seen as ``os.getppid()`` no longer being the pid multiprocessing
    started us from (the orphan is re-parented; also when that happened before this call);
    polled, not ``PR_SET_PDEATHSIG``, which fires when the *thread* that spawned the child
    ends."""
    import multiprocessing

    spawner = multiprocessing.parent_process()
    parent = spawner.pid if spawner is not None and spawner.pid else os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(interval_s)
        log.error("parent process %d is gone; exiting", parent)
        os._exit(1)

    thread = threading.Thread(target=watch, name="parent-watch", daemon=True)
    thread.start()
    return thread
