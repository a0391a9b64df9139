"""Result channels: one pipe per inference worker into each output process.

A ``multiprocessing.Queue`` shared by several writer processes is wedged for good when one of
them is SIGKILLed while writing: the queue's write lock stays taken (every other writer blocks
on it) and half a message is left in the pipe.  A batch's results are large (up to hundreds of
KB with many streams), so a worker killed mid-batch was likely to be caught writing: on a
2-GPU machine nothing reached Redis for 8 s after one worker was killed (bench/README.md); in a
CPU experiment a shared queue whose writer was killed mid-message (5 MB messages) wedged in 11
trials of 12.

So each worker writes its results into a pipe of its own (:class:`ChannelWriter`: a sender
thread, so ``put`` never blocks the worker, as a queue's feeder thread did; flushed before the
worker exits).  The pipeline keeps the read end and hands it to the output process
(:class:`ResultsChannel`, through the output's inbox).  The output process reads its inbox and
every channel at once (:class:`ChannelReaders`, one message from each ready source in turn);
when a worker dies its pipe ends (EOF, possibly after a partial message) and only that channel
is dropped: the others and the inbox go on.  With several output processes a worker has a
pipe to each (:class:`ShardedWriter`) and sends each its streams' part of every batch.  The
dead worker's batches are re-sent or abandoned by the scheduler as before; the output stage
reads every channel dry before it applies an abandonment, so a result the worker sent before it
died is never overtaken by the abandonment of its batch.  An output process that dies may have
been cut in the middle of reading a message, which leaves that pipe's framing unreadable: the
pipeline then restarts the workers too (new pipes), rather than hand a torn pipe to the new
output process.
"""

from __future__ import annotations

import logging
import os
import pickle
import queue
import threading
import time
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from multiprocessing.connection import Connection, wait
from typing import Any

from visionflow.pipeline.frames import BatchResult
from visionflow.workers.shards import ShardMap, split_result

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

    def join_thread(self, timeout: float | None = None) -> None:
        self._thread.join(timeout)

    def _send_all(self) -> None:
        while (message := self._pending.get()) is not _CLOSE:
            self._send(message)
        self._conn.close()

    def _send(self, message: object) -> None:
        try:
            payload = pickle.dumps(message, pickle.HIGHEST_PROTOCOL)
        except Exception:  # one unpicklable result costs that message, not the channel
            log.exception("result not sent: it cannot be pickled")
            if not isinstance(message, BatchResult):
                return
            # its batch id still goes: the output's reorder buffer does not wait for it
            empty = replace(message, results=(), images=(), error="results not picklable")
            payload = pickle.dumps(empty, pickle.HIGHEST_PROTOCOL)
        try:
            self._conn.send_bytes(payload)
        except OSError as exc:  # no reader at all any more: exit, the pipeline restarts us
            log.error("results channel broken (%s); exiting to be restarted", exc)
            os._exit(1)


class ShardedWriter:
    """A worker's pipes, one per output process: a :class:`BatchResult` is split by its
    streams' shards (:func:`~visionflow.workers.shards.split_result`; the assignments arrive
    with the spec and as :class:`~visionflow.workers.messages.OutputShards`), any other
    message goes to every pipe.  The same surface as one :class:`ChannelWriter`."""

    def __init__(
        self, conns: Sequence[Connection], assigned: Iterable[tuple[str, int]] = ()
    ) -> None:
        if not conns:
            raise ValueError("a worker needs at least one results channel")
        self.writers = [ChannelWriter(conn) for conn in conns]
        self.shards = ShardMap(len(conns), assigned)

    def put(self, message: object) -> None:
        """Send ``message`` (split when it is a batch's results).  The worker reports the
        batch done right after handing its results here, not once they are written: with the
        report held back until then, one H100 at 256 streams fell from ~3,700 to 547 published
        fps with the GPU 29 % busy (one run, bench/results/h100-20261127b), most likely because
        the scheduler then waited on the output processes' reads (a pipe holds 64 KB, a
        batch's results often more)."""
        parts = (
            split_result(message, self.shards)
            if isinstance(message, BatchResult)
            else [message] * len(self.writers)
        )
        for writer, part in zip(self.writers, parts, strict=True):
            writer.put(part)

    def close(self) -> None:
        for writer in self.writers:
            writer.close()

    def join_thread(self, timeout: float | None = None) -> None:
        """Every sender done, or ``timeout`` for them all together."""
        until = None if timeout is None else time.monotonic() + timeout
        for writer in self.writers:
            writer.join_thread(None if until is None else max(0.0, until - time.monotonic()))


class ChannelReaders:
    """The output process's side: its inbox (a ``multiprocessing.Queue``) and one pipe per
    worker, read as one stream of messages, one message from each ready source in turn."""

    def __init__(self, inbox: Any) -> None:
        self.inbox = inbox
        self.channels: dict[int, Connection] = {}  # channel id -> read end
        self._ready: deque[tuple[bool, object]] = deque()  # (from a channel?, message)

    def add(self, channel_id: int, conn: Connection) -> None:
        """Read ``conn`` from now on (a restarted worker gets a new channel)."""
        self.channels[channel_id] = conn

    def get(self, timeout: float) -> object:
        """The next message from the inbox or any channel; raises ``queue.Empty`` after
        ``timeout`` seconds without one."""
        if not self._ready:
            self._fill(timeout)
        if not self._ready:
            raise queue.Empty
        return self._ready.popleft()[1]

    def drain(self) -> Iterator[object]:
        """Every complete result the channels hold now, including those already taken from
        them but not handed out (read before an abandonment is applied, and at stop once the
        workers have exited); inbox messages keep their place."""
        kept = deque(item for item in self._ready if not item[0])
        taken = [message for from_channel, message in self._ready if from_channel]
        self._ready = kept
        yield from taken
        for channel_id in list(self.channels):
            conn = self.channels[channel_id]
            while channel_id in self.channels and self._poll(channel_id, conn):
                message = self._recv(channel_id, conn)
                if message is not None:
                    yield message

    def _fill(self, timeout: float) -> None:
        """One message from each source that is ready within ``timeout``."""
        # the inbox's pipe end: multiprocessing offers no public way to wait on a queue
        # together with connections
        inbox_reader = self.inbox._reader
        for conn in wait([inbox_reader, *self.channels.values()], timeout):
            if conn is inbox_reader:
                try:
                    self._ready.append((False, self.inbox.get_nowait()))
                except queue.Empty:  # readable but its lock is held (a reader died in get):
                    time.sleep(0.05)  # never spin on it
                continue
            channel_id = next((c for c, r in self.channels.items() if r is conn), None)
            if channel_id is None:
                continue
            message = self._recv(channel_id, self.channels[channel_id])
            if message is not None:
                self._ready.append((True, message))

    def _poll(self, channel_id: int, conn: Connection) -> bool:
        try:
            return conn.poll(0)
        except (EOFError, OSError) as exc:
            self._drop(channel_id, conn, exc)
            return False

    def _recv(self, channel_id: int, conn: Connection) -> object | None:
        """One message from ``conn``; None when it ended (EOF after its worker exited, or a
        message cut by a kill: the channel is dropped) or held an unreadable payload (that
        message is skipped, the framing is intact)."""
        try:
            payload = conn.recv_bytes()
        except (EOFError, OSError) as exc:
            self._drop(channel_id, conn, exc)
            return None
        try:
            message: object = pickle.loads(payload)
        except Exception:
            log.exception("results channel %d: a message could not be read; skipped", channel_id)
            return None
        return message

    def _drop(self, channel_id: int, conn: Connection, exc: BaseException) -> None:
        if self.channels.get(channel_id) is conn:
            del self.channels[channel_id]
        conn.close()
        level = logging.DEBUG if isinstance(exc, EOFError) else logging.WARNING
        log.log(level, "results channel %d ended (%s)", channel_id, type(exc).__name__)
