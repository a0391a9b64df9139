"""Frame slots: how pixels cross from ingest to inference processes.

One pool per stream: ``slots`` images of the network's input size (``[H, W, 3]`` uint8,
already letterboxed by the ingest process).  A small shared-memory header holds one state
byte per slot (0 free, 1 holding a frame) and says where the pixels are:

- ``host`` pools keep them in the same shared-memory block, after the header;
- ``device`` pools keep them in GPU memory the ingest process allocated, and the header
  carries its CUDA IPC handle (:mod:`visionflow.gpu.ipc`): a GPU-decoded frame then reaches
  the inference worker device-to-device, never through host memory.

Only the ingest process turns a slot from free to full; only a consumer (scheduler dropping a
frame, inference worker after copying it) turns it back.  Messages between processes carry
``(pool name, slot)``, never pixels.
"""

from __future__ import annotations

import contextlib
from multiprocessing import shared_memory
from typing import Any

import numpy as np
import numpy.typing as npt

MAX_SLOTS = 64
_KIND = 64  # header byte: 0 host pixels, 1 device pixels
_HANDLE = 128  # header bytes 128..191: the CUDA IPC handle of a device pool
_HEADER = 256  # header size, so host images start aligned
FREE, FULL = 0, 1
_FREE_BYTE = bytes((FREE,))
HOST, DEVICE = 0, 1


class FramePool:
    """A fixed number of equally sized image slots, in shared or in GPU memory.

    ``device`` (creator only): allocate the pixels on that CUDA device (an ordinal of the
    creating process) and export them by CUDA IPC; None keeps them in shared memory.
    """

    def __init__(
        self,
        name: str,
        slots: int,
        height: int,
        width: int,
        *,
        create: bool = False,
        device: int | None = None,
    ) -> None:
        if slots > MAX_SLOTS:
            raise ValueError(f"at most {MAX_SLOTS} slots per pool, asked for {slots}")
        self.name, self.slots, self.height, self.width = name, slots, height, width
        self._slot_bytes = height * width * 3
        on_device = create and device is not None
        size = _HEADER + (0 if on_device else slots * self._slot_bytes)
        self._shm = shared_memory.SharedMemory(name=name, create=create, size=size if create else 0)
        # Spawned children share the parent's resource tracker, so a consumer must not
        # unregister: the creator's unlink does, and the tracker cleans up after a crash.
        self._owner = create
        buf = self._shm.buf
        assert buf is not None
        # one state byte per slot at the start of the header, read and written through the
        # shared memory's own buffer (not numpy: scalar access costs several times more; no
        # slice kept: a live export would stop the block from closing)
        self._flags: memoryview = buf
        self._memory: Any = None  # ExportedMemory (creator) / ImportedMemory (consumer)
        if create:
            buf[:slots] = _FREE_BYTE * slots
            buf[_KIND] = DEVICE if on_device else HOST
            if on_device:
                self._export(buf, device or 0)
        self.on_device = buf[_KIND] == DEVICE
        self._images: npt.NDArray[np.uint8] | None = None
        if not self.on_device:
            self._images = np.ndarray((slots, height, width, 3), np.uint8, buf, _HEADER)
        self._next = 0

    def _export(self, buf: memoryview, device: int) -> None:
        from visionflow.gpu.ipc import HANDLE_BYTES, ExportedMemory

        self._memory = ExportedMemory(self.slots * self._slot_bytes, device)
        buf[_HANDLE : _HANDLE + HANDLE_BYTES] = self._memory.handle

    def _device_pointer(self) -> int:
        if self._memory is None:  # consumer: map the creator's memory once
            from visionflow.gpu.ipc import HANDLE_BYTES, ImportedMemory

            buf = self._shm.buf
            assert buf is not None
            self._memory = ImportedMemory(bytes(buf[_HANDLE : _HANDLE + HANDLE_BYTES]))
        return int(self._memory.pointer)

    def acquire(self) -> int | None:
        """Producer: index of a free slot (left free until :meth:`publish`), or None; slots
        are taken round-robin from the one after the last taken."""
        slot = self._next
        if self._flags[slot] != FREE:
            flags = self._flags[: self.slots].tobytes()  # a few bytes, then a C-speed search
            slot = flags.find(_FREE_BYTE, slot)
            if slot < 0:
                slot = flags.find(_FREE_BYTE, 0, self._next)
                if slot < 0:
                    return None
        self._next = slot + 1 if slot + 1 < self.slots else 0
        return slot

    def image(self, slot: int) -> Any:
        """The ``[H, W, 3]`` view of one slot: a numpy array, or a
        :class:`~visionflow.gpu.ipc.DeviceArray` for a device pool."""
        if self._images is not None:
            return self._images[slot]
        from visionflow.gpu.ipc import DeviceArray

        pointer = self._device_pointer() + slot * self._slot_bytes
        return DeviceArray(pointer, (self.height, self.width, 3))

    def publish(self, slot: int) -> None:
        """Producer: the slot now holds a frame that consumers own."""
        self._flags[slot] = FULL

    def release(self, slot: int) -> None:
        """Consumer: done with the slot's frame; the producer may reuse it."""
        self._flags[slot] = FREE

    def free_slots(self) -> int:
        """How many slots are free now."""
        return self._flags[: self.slots].tobytes().count(_FREE_BYTE)

    def close(self) -> None:
        """Detach; the creating process also removes the block."""
        del self._flags, self._images
        if self._memory is not None:
            self._memory.close()
            self._memory = None
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
        self._forgotten: set[str] = set()

    def get(self, name: str) -> FramePool:
        pool = self._pools.get(name)
        if pool is None:
            pool = FramePool(name, self._slots, *self._shape)
            self._pools[name] = pool
        return pool

    def release(self, name: str, slot: int) -> None:
        """Free a slot, tolerating a pool whose producer is already gone (a pool forgotten
        after ``PoolClosed`` is not attached again)."""
        if name in self._forgotten:
            return
        with contextlib.suppress(FileNotFoundError):
            self.get(name).release(slot)

    def forget(self, name: str) -> None:
        self._forgotten.add(name)
        pool = self._pools.pop(name, None)
        if pool is not None:
            pool.close()

    def close(self) -> None:
        for name in list(self._pools):
            self.forget(name)
