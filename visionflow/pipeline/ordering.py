"""Releasing results in order when several workers finish out of order.

The batcher takes each stream's frames oldest first and numbers batches 1, 2, 3, ...; so
releasing whole batches in batch-id order releases every stream's frames in ``seq`` order.
The output stage holds a batch's results until every earlier batch has arrived or was
abandoned (no worker could take it).  A batch that arrives twice (a worker died after its
results were sent, and the batch was re-sent) is released once.  A gap that never closes (the
batch went down with a restarted output process) is skipped after a timeout
(:meth:`BatchReorder.skip_stale`), so one lost batch never stops every stream's output.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class BatchReorder(Generic[T]):
    """Holds per-batch payloads until all earlier batch ids are resolved."""

    def __init__(
        self, first_batch_id: int = 1, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._next = first_batch_id
        self._held: dict[int, T | None] = {}
        self._since: float | None = None  # when the current gap started holding batches
        self.clock = clock
        self.duplicates = 0
        self.skipped: list[int] = []  # batch ids given up on

    def add(self, batch_id: int, payload: T) -> list[T]:
        """Record a batch's payload; return payloads now releasable, oldest first."""
        return self._put(batch_id, payload)

    def abandon(self, batch_id: int) -> list[T]:
        """Record that ``batch_id`` will never arrive."""
        return self._put(batch_id, None)

    @property
    def waiting_for(self) -> int:
        """The batch id everything held waits on."""
        return self._next

    @property
    def held(self) -> int:
        return len(self._held)

    def _put(self, batch_id: int, payload: T | None) -> list[T]:
        if batch_id < self._next or batch_id in self._held:
            self.duplicates += 1
            return []
        self._held[batch_id] = payload
        return self._release()

    def skip_stale(self, timeout_s: float) -> list[T]:
        """Give up on the missing batch if later ones have waited ``timeout_s``."""
        if not self._held or self._since is None:
            return []
        if self.clock() - self._since < timeout_s:
            return []
        first = min(self._held)
        self.skipped.extend(range(self._next, first))
        self._next = first
        return self._release()

    def _release(self) -> list[T]:
        ready: list[T] = []
        start = self._next
        while self._next in self._held:
            item = self._held.pop(self._next)
            if item is not None:
                ready.append(item)
            self._next += 1
        if not self._held:
            self._since = None
        elif self._since is None or self._next != start:  # a new gap: its wait starts now
            self._since = self.clock()
        return ready
