"""Result channels: one pipe per inference worker into the output process.

A ``multiprocessing.Queue`` shared by several writer processes is wedged for good when one of
them is SIGKILLed while writing: the queue's write lock stays taken (every other writer blocks
on it) and half a message is left in the pipe.  A batch's results are large (up to hundreds of
KB with many streams), so a worker killed mid-batch was likely to be caught writing: on a
2-GPU machine nothing reached Redis for 8 s after one worker was killed (bench/README.md), and
a test of a shared queue with a writer killed mid-write wedged 11 times in 12
(``tests/unit/workers/test_channels.py`` keeps the comparison).

So each worker writes its results into a pipe of its own (:class:`ChannelWriter`: a sender
thread, so ``put`` never blocks the worker, as a queue's feeder thread did).  The pipeline
keeps the read end and hands it to the output process (:class:`~visionflow.workers.messages.
ResultsChannel`, sent through the output's inbox, again after an output restart).  The
output process reads its inbox and every channel at once (:class:`ChannelReaders`); when a
worker dies its pipe ends (EOF, possibly after a partial message) and only that channel is
dropped: the others and the inbox go on.  The dead worker's batches are re-sent or abandoned
by the scheduler as before.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from typing import Any

log = logging.getLogger("visionflow.channels")
_CLOSE = object()


@dataclass(frozen=True)
class ResultsChannel:
    """Message to the output process: read results from ``conn`` too (a worker's pipe; the
    connection travels by file-descriptor passing)."""

    channel_id: int
    worker_id: int
    conn: Connection


class ChannelWriter:
    """The worker's end: ``put`` hands the message to a sender thread that writes it to the
    pipe (the queue-like surface the worker loop uses: ``put``, ``close``, ``join_thread``)."""

    def __init__(self, conn: Connection) -> None:
        self._conn = conn
        self._pending: queue.SimpleQueue[object] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._send_all, name="results-sender", daemon=True)
        self._thread.start()

    def put(self, message: object) -> None:
        self._pending.put(message)

    def close(self) -> None:
        """No more messages: what was put is still sent, then the pipe is closed."""
        self._pending.put(_CLOSE)

    def join_thread(self) -> None:
        self._thread.join()

    def _send_all(self) -> None:
        while (message := self._pending.get()) is not _CLOSE:
            try:
                self._conn.send(message)
            except OSError as exc:  # the output process is gone: it is restarted, we are not
                log.error("results channel closed (%s); results dropped until restart", exc)
                return
        self._conn.close()


class ChannelReaders:
    """The output process's side: its inbox (a ``multiprocessing.Queue``) and one pipe per
    worker, read as one stream of messages."""

    def __init__(self, inbox: Any) -> None:
        self.inbox = inbox
        self.channels: dict[int, Connection] = {}  # channel id -> read end
        self.dropped = 0  # channels that ended (a worker stopped or died)

    def add(self, channel_id: int, conn: Connection) -> None:
        """Read ``conn`` from now on (a restarted worker gets a new channel; its old one is
        read until it ends)."""
        self.channels[channel_id] = conn

    def get(self, timeout: float) -> object:
        """The next message from the inbox or any channel; raises ``queue.Empty`` after
        ``timeout`` seconds without one."""
        for message in self._ready(timeout):
            return message
        raise queue.Empty

    def drain(self) -> Iterator[object]:
        """Everything the channels still hold, until each has ended or is empty (stopping:
        the workers have exited, their pipes are complete)."""
        for channel_id in list(self.channels):
            conn = self.channels[channel_id]
            while True:
                message = self._recv(channel_id, conn, block=False)
                if message is None:
                    break
                yield message

    def _ready(self, timeout: float) -> Iterator[object]:
        # the inbox's pipe end: multiprocessing offers no public way to wait on a queue
        # together with connections
        inbox_reader = self.inbox._reader
        ready = wait([inbox_reader, *self.channels.values()], timeout)
        for conn in ready:
            if conn is inbox_reader:
                try:
                    yield self.inbox.get_nowait()
                except queue.Empty:  # another reader took it (there is none) or a spurious wake
                    continue
                continue
            channel_id = next((w for w, c in self.channels.items() if c is conn), None)
            if channel_id is None:
                continue
            message = self._recv(channel_id, conn, block=True)
            if message is not None:
                yield message

    def _recv(self, channel_id: int, conn: Any, block: bool) -> object | None:
        """One message from ``conn``; None when it has none ready (``block=False``) or ended
        (then it is dropped: EOF after its worker exited, or a message cut by a kill)."""
        try:
            if not block and not conn.poll(0):
                return None
            message: object = conn.recv()
            return message
        except (EOFError, OSError) as exc:
            self._drop(channel_id, conn, exc)
        except Exception as exc:  # a message cut short and followed by nothing parseable
            self._drop(channel_id, conn, exc)
        return None

    def _drop(self, channel_id: int, conn: Any, exc: BaseException) -> None:
        if self.channels.get(channel_id) is conn:
            del self.channels[channel_id]
        self.dropped += 1
        conn.close()
        level = logging.DEBUG if isinstance(exc, EOFError) else logging.WARNING
        log.log(level, "results channel %d ended (%s)", channel_id, type(exc).__name__)
