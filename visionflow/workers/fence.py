"""Write fencing of a fleet node: which lease value each detections entry is written under.

A fleet node writes a stream's detections only while ``<prefix>:fleet:lease:<stream_id>``
still holds the lease value it took (``<node_id>/<fence>.<nonce>``, :mod:`visionflow.fleet.leases`):
the Redis sink sends each entry through :data:`FENCED_XADD_LUA`, which compares the lease key
with the entry's lease value and only then ``XADD`` s, in one atomic step.  An entry refused
there is dropped and counted (reason ``fenced``), never written elsewhere or re-ided.

The output process learns the lease values from the node (the main process): every lease
taken reaches it as a :class:`SetFence` with the first ``seq`` read under it, so a result's
lease value follows from its stream and ``seq`` (:meth:`FenceBook.lookup`).  It is bound once,
when the result enters the sink, and travels with the entry (buffer, retries, spool): results
of an earlier lease of the stream keep that lease's value even after the stream was taken
again, and are refused once it is gone.  Each value also names the stream's registration in
the pipeline (its generation): a refusal is a drop of that registration, so the status board
charges it to the registration whose frames it counted, never to a later one.  An entry the
script finds already in Redis (an earlier attempt got there, the reply was lost) counts as
written, not refused.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass

log = logging.getLogger("visionflow.fence")

#: epochs kept per stream (a stream taken again and again keeps only its recent leases; an
#: entry older than all of them has no lease value and is refused)
MAX_EPOCHS = 8

#: what the script answers for an entry already in Redis under its id (an earlier attempt
#: got there, its reply was lost) whose lease has moved on since: written, not refused
DUPLICATE = "dup"

# KEYS[1]: the stream's lease, KEYS[2]: its detections stream.  ARGV: the lease value the
# entry is written under, the entry id, MAXLEN, '~' or '=', then field, value, ...
# Returns the entry id; "dup" when the lease holds another value (or none) but the entry
# (same id, seq and capture_ts) is already there; nil (false) when refused.
FENCED_XADD_LUA = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('XADD', KEYS[2], 'MAXLEN', ARGV[4], ARGV[3], ARGV[2], unpack(ARGV, 5))
end
local found = redis.call('XRANGE', KEYS[2], ARGV[2], ARGV[2])
if #found == 0 then return false end
local have, fields = {}, found[1][2]
for i = 1, #fields, 2 do have[fields[i]] = fields[i + 1] end
for i = 5, #ARGV, 2 do
  if (ARGV[i] == 'seq' or ARGV[i] == 'capture_ts') and have[ARGV[i]] ~= ARGV[i + 1] then
    return false
  end
end
return 'dup'
"""

# (first seq, lease value, registration generation), in the order they were set
Epochs = tuple[tuple[int, str, int], ...]


@dataclass(frozen=True)
class Fence:
    """What an entry is written under: the lease value, and the registration of the stream
    (:meth:`visionflow.workers.supervisor.Pipeline.add_stream`) its refusal is a drop of."""

    token: str
    generation: int


@dataclass(frozen=True)
class SetFence:
    """Output inbox message: the node took ``stream_id``'s lease as ``token``; frames from
    ``first_seq`` on are written under it, and belong to registration ``generation``."""

    stream_id: str
    token: str
    first_seq: int
    generation: int = 0


@dataclass(frozen=True)
class ForgetFence:
    """Output inbox message: the stream left the pipeline; its lease values are forgotten
    (entries already in the sink carry theirs; a late frame of it is refused)."""

    stream_id: str


class FenceBook:
    """Per stream, the lease values this node took and the first seq of each (thread-safe:
    the output process's main thread sets, the sink reads when a result enters it)."""

    def __init__(self, epochs: tuple[tuple[str, Epochs], ...] = ()) -> None:
        self._lock = threading.Lock()
        self._epochs: dict[str, Epochs] = dict(epochs)

    def set(self, stream_id: str, token: str, first_seq: int, generation: int = 0) -> None:
        """Frames of ``stream_id`` from ``first_seq`` on are written under ``token``; seq
        already bound to a value keep it (an earlier lease's frames are never re-bound to a
        later one, even one that starts at a lower seq, e.g. after Redis lost its data)."""
        with self._lock:
            epochs = self._epochs.get(stream_id, ())
            if any(e[:2] == (first_seq, token) for e in epochs):
                return
            if epochs and first_seq <= max(e[0] for e in epochs):
                log.warning("fence: %s lease %s starts at seq %d, not above an earlier lease's "
                            "first seq: seq bound before keep their value", stream_id, token,
                            first_seq)  # fmt: skip
            self._epochs[stream_id] = (*epochs, (first_seq, token, generation))[-MAX_EPOCHS:]

    def lookup(self, stream_id: str, seq: int) -> Fence | None:
        """The lease value (and registration) frame ``seq`` of the stream was read under
        (None: none known): the epoch with the highest first seq at or below ``seq``, the
        one set first among equals."""
        with self._lock:
            epochs = self._epochs.get(stream_id, ())
        best: tuple[int, str, int] | None = None
        for epoch in epochs:
            if epoch[0] <= seq and (best is None or epoch[0] > best[0]):
                best = epoch
        return Fence(best[1], best[2]) if best is not None else None

    def token(self, stream_id: str, seq: int) -> str | None:
        """The lease value frame ``seq`` of the stream was read under (None: none known)."""
        found = self.lookup(stream_id, seq)
        return found.token if found is not None else None

    def latest(self, stream_id: str) -> str | None:
        """The stream's lease value set last (None: never set, or forgotten)."""
        with self._lock:
            epochs = self._epochs.get(stream_id, ())
        return epochs[-1][1] if epochs else None

    def forget(self, stream_id: str) -> None:
        """The stream left the pipeline: its values go (the book does not grow with every
        stream ever held, nor does the output process's spec)."""
        with self._lock:
            self._epochs.pop(stream_id, None)

    def snapshot(self) -> tuple[tuple[str, Epochs], ...]:
        """Everything, picklable (a restarted output process starts from it)."""
        with self._lock:
            return tuple(self._epochs.items())
