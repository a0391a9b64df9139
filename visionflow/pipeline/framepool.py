"""Frame slots in shared memory: how pixels cross from ingest to inference processes.

One pool per stream: ``slots`` images of the network's input size (``[H, W, 3]`` uint8,
already letterboxed by the ingest process), preceded by one state byte per slot
(0 free, 1 holding a frame).  Only the ingest process turns a slot from free to full; only a
consumer (scheduler dropping a frame, inference worker after copying it) turns it back.
Messages between processes then carry ``(pool name, slot)``, never pixels.
"""

from __future__ import annotations

import contextlib
from multiprocessing import shared_memory

import numpy as np
import numpy.typing as npt

_HEADER = 64  # state bytes, padded so images start aligned
FREE, FULL = 0, 1


class FramePool:
    """A fixed number of equally sized image slots in one shared-memory block."""

    def __init__(
        self, name: str, slots: int, height: int, width: int, *, create: bool = False
    ) -> None:
        if slots > _HEADER:
            raise ValueError(f"at most {_HEADER} slots per pool, asked for {slots}")
        self.name, self.slots, self.height, self.width = name, slots, height, width
        self._slot_bytes = height * width * 3
        size = _HEADER + slots * self._slot_bytes
        self._shm = shared_memory.SharedMemory(name=name, create=create, size=size if create else 0)
        # Spawned children share the parent's resource tracker, so a consumer must not
        # unregister: the creator's unlink does, and the tracker cleans up after a crash.
        self._owner = create
        buf = self._shm.buf
        assert buf is not None
        self._state: npt.NDArray[np.uint8] = np.ndarray((slots,), np.uint8, buf, 0)
        self._images: npt.NDArray[np.uint8] = np.ndarray(
            (slots, height, width, 3), np.uint8, buf, _HEADER
        )
        if create:
            self._state[:] = FREE
        self._next = 0

    def acquire(self) -> int | None:
        """Producer: index of a free slot (left free until :meth:`publish`), or None."""
        for step in range(self.slots):
            slot = (self._next + step) % self.slots
            if self._state[slot] == FREE:
                self._next = (slot + 1) % self.slots
                return slot
        return None

    def image(self, slot: int) -> npt.NDArray[np.uint8]:
        """The ``[H, W, 3]`` view of one slot."""
        image: npt.NDArray[np.uint8] = self._images[slot]
        return image

    def publish(self, slot: int) -> None:
        """Producer: the slot now holds a frame that consumers own."""
        self._state[slot] = FULL

    def release(self, slot: int) -> None:
        """Consumer: done with the slot's frame; the producer may reuse it."""
        self._state[slot] = FREE

    def free_slots(self) -> int:
        """How many slots are free now."""
        return int(np.count_nonzero(self._state == FREE))

    def close(self) -> None:
        """Detach; the creating process also removes the block."""
        del self._state, self._images
        self._shm.close()
        if self._owner:
            with contextlib.suppress(FileNotFoundError):
                self._shm.unlink()


class PoolCache:
    """Consumer side: pools attached on first use, by name."""

    def __init__(self, height: int, width: int, slots: int) -> None:
        self._shape = (height, width)
        self._slots = slots
        self._pools: dict[str, FramePool] = {}

    def get(self, name: str) -> FramePool:
        pool = self._pools.get(name)
        if pool is None:
            pool = FramePool(name, self._slots, *self._shape)
            self._pools[name] = pool
        return pool

    def release(self, name: str, slot: int) -> None:
        """Free a slot, tolerating a pool whose producer is already gone."""
        with contextlib.suppress(FileNotFoundError):
            self.get(name).release(slot)

    def forget(self, name: str) -> None:
        pool = self._pools.pop(name, None)
        if pool is not None:
            pool.close()

    def close(self) -> None:
        for name in list(self._pools):
            self.forget(name)
