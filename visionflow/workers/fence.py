"""Write fencing of a fleet node: which lease value each detections entry is written under.

A fleet node writes a stream's detections only while ``<prefix>:fleet:lease:<stream_id>``
still holds the lease value it took (``<node_id>/<fence>``, :mod:`visionflow.fleet.leases`):
the Redis sink sends each entry through :data:`FENCED_XADD_LUA`, which compares the lease key
with the entry's lease value and only then ``XADD`` s, in one atomic step.  An entry refused
there is dropped and counted (reason ``fenced``), never written elsewhere or re-ided.

The output process learns the lease values from the node (the main process): every lease
taken reaches it as a :class:`SetFence` with the first ``seq`` read under it, so an entry's
lease value follows from its stream and ``seq`` (:meth:`FenceBook.token`): results of an
earlier lease of the stream (in flight, buffered, spooled) keep that lease's value even
after the stream was taken again, and are refused once it is gone.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

#: epochs kept per stream (a stream taken again and again keeps only its recent leases; an
#: entry older than all of them has no lease value and is refused)
MAX_EPOCHS = 8

# KEYS[1]: the stream's lease, KEYS[2]: its detections stream.  ARGV: the lease value the
# entry is written under, the entry id, MAXLEN, '~' or '=', then field, value, ...
# Returns the entry id, or nil (false) when the lease holds another value or none.
FENCED_XADD_LUA = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return false end
return redis.call('XADD', KEYS[2], 'MAXLEN', ARGV[4], ARGV[3], ARGV[2], unpack(ARGV, 5))
"""

Epochs = tuple[tuple[int, str], ...]  # (first seq, lease value), oldest first


@dataclass(frozen=True)
class SetFence:
    """Output inbox message: the node took ``stream_id``'s lease as ``token``; frames from
    ``first_seq`` on are written under it."""

    stream_id: str
    token: str
    first_seq: int


class FenceBook:
    """Per stream, the lease values this node took and the first seq of each (thread-safe:
    the output process's main thread sets, the sink threads read)."""

    def __init__(self, epochs: tuple[tuple[str, Epochs], ...] = ()) -> None:
        self._lock = threading.Lock()
        self._epochs: dict[str, Epochs] = dict(epochs)

    def set(self, stream_id: str, token: str, first_seq: int) -> None:
        """Frames of ``stream_id`` from ``first_seq`` on are written under ``token``."""
        with self._lock:
            kept = [e for e in self._epochs.get(stream_id, ()) if e[0] < first_seq]
            self._epochs[stream_id] = (*kept, (first_seq, token))[-MAX_EPOCHS:]

    def token(self, stream_id: str, seq: int) -> str | None:
        """The lease value frame ``seq`` of the stream was read under (None: none known)."""
        with self._lock:
            epochs = self._epochs.get(stream_id, ())
        for first, token in reversed(epochs):
            if first <= seq:
                return token
        return None

    def latest(self, stream_id: str) -> str | None:
        """The stream's newest lease value (None: never set)."""
        with self._lock:
            epochs = self._epochs.get(stream_id, ())
        return epochs[-1][1] if epochs else None

    def snapshot(self) -> tuple[tuple[str, Epochs], ...]:
        """Everything, picklable (a restarted output process starts from it)."""
        with self._lock:
            return tuple(self._epochs.items())
