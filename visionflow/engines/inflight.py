"""Several batches in flight: slots taken round-robin, results collected in submit order.

A GPU backend has ``max_inflight`` slots (a CUDA stream with its own staging, input and output
buffers; for TensorRT also an execution context).  :meth:`InflightRing.acquire` hands out the
next slot at submit; the slot stays busy until :class:`SlotBatch.result` collected it, so a
slot's buffers are never overwritten while the GPU may still read or write them.  With
round-robin order and in-order collection, the next slot is always the oldest one pending.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Sequence
from typing import Generic, TypeVar

from visionflow.engines.base import Detections
from visionflow.errors import EngineError

S = TypeVar("S")


class InflightRing(Generic[S]):
    """Round-robin over per-slot state, each slot busy from submit until collected."""

    def __init__(self, slots: Sequence[S]) -> None:
        if not slots:
            raise ValueError("an in-flight ring needs at least one slot")
        self.slots = list(slots)
        self._next = 0
        self._pending: deque[int] = deque()

    @property
    def pending(self) -> int:
        """How many batches were submitted and not collected yet."""
        return len(self._pending)

    def acquire(self) -> tuple[int, S]:
        """The next slot for a new batch; :class:`EngineError` when every slot is pending."""
        if len(self._pending) == len(self.slots):
            raise EngineError(
                f"{len(self.slots)} batch(es) already in flight (max_inflight): collect the "
                "oldest result() before submitting another"
            )
        index = self._next
        self._next = (self._next + 1) % len(self.slots)
        self._pending.append(index)
        return index, self.slots[index]

    def abandon(self, index: int) -> None:
        """Give back the slot :meth:`acquire` just returned (its batch could not start)."""
        if not self._pending or self._pending[-1] != index:
            raise EngineError(f"slot {index} is not the newest pending slot")
        self._pending.pop()
        self._next = index

    def check_oldest(self, index: int) -> None:
        """:class:`EngineError` unless ``index`` is the oldest pending slot."""
        if not self._pending or self._pending[0] != index:
            raise EngineError(
                "results must be collected in submit order: this batch is not the oldest pending"
            )

    def release(self, index: int) -> None:
        """The oldest pending slot's batch was collected; the slot may be reused."""
        self.check_oldest(index)
        self._pending.popleft()


class SlotBatch:
    """A :class:`~visionflow.engines.base.PendingBatch` running in one slot of a ring.

    ``wait`` blocks until the slot's work is done and builds the detections; ``poll`` says
    whether it is done without blocking.  ``keep`` holds whatever the GPU may still read
    (the caller's device frames, output tensors) until the result is collected.
    """

    def __init__(
        self,
        ring: InflightRing[S],
        index: int,
        wait: Callable[[], list[Detections]],
        poll: Callable[[], bool],
        keep: object = None,
    ) -> None:
        self._ring: InflightRing[S] = ring
        self._index = index
        self._wait: Callable[[], list[Detections]] | None = wait
        self._poll = poll
        self._keep = keep
        self._result: list[Detections] | None = None
        self._error: BaseException | None = None

    def done(self) -> bool:
        if self._wait is None:
            return True
        return self._poll()

    def result(self) -> list[Detections]:
        if self._wait is None:
            if self._error is not None:
                raise self._error
            assert self._result is not None
            return self._result
        self._ring.check_oldest(self._index)
        wait, self._wait = self._wait, None
        try:
            self._result = wait()
        except BaseException as exc:
            self._error = exc
            raise
        finally:
            self._ring.release(self._index)
            self._keep = None
        return self._result
