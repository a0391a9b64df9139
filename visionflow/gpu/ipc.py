"""CUDA IPC through cuda-python: device memory one process allocates and others map.

The ingest process that decodes on the GPU allocates its frame slots with ``cudaMalloc`` and
exports one 64-byte ``cudaIpcMemHandle_t``; an inference worker on the same GPU (or a peer
GPU) opens that handle once and reads frames device-to-device.  Views are handed around as
:class:`DeviceArray` (``__cuda_array_interface__`` v3), which PyTorch, CuPy, Numba and DALI
all accept without a copy.  MIG instances cannot map each other's memory, so pools that cross
a MIG boundary stay in host shared memory (``visionflow.workers.transport``).
"""

from __future__ import annotations

from typing import Any

from visionflow.gpu.cuda import check, runtime

HANDLE_BYTES = 64
_LAZY_PEER_ACCESS = 1  # cudaIpcMemLazyEnablePeerAccess


class DeviceArray:
    """A uint8 array in device memory, seen through ``__cuda_array_interface__``."""

    def __init__(self, pointer: int, shape: tuple[int, ...]) -> None:
        self.pointer, self.shape = pointer, shape

    @property
    def __cuda_array_interface__(self) -> dict[str, Any]:
        # "stream": None -- the producer synchronised before announcing the frame
        return {
            "shape": self.shape,
            "typestr": "|u1",
            "data": (self.pointer, False),
            "version": 3,
            "strides": None,
            "stream": None,
        }


class ExportedMemory:
    """``nbytes`` of device memory on ``device`` with an IPC handle other processes can open."""

    def __init__(self, nbytes: int, device: int = 0) -> None:
        rt = runtime()
        check(rt.cudaSetDevice(device), f"cudaSetDevice({device})")
        self.pointer = int(check(rt.cudaMalloc(nbytes), f"cudaMalloc({nbytes})"))
        handle = check(rt.cudaIpcGetMemHandle(self.pointer), "cudaIpcGetMemHandle")
        self.handle = bytes(handle.reserved)[:HANDLE_BYTES]
        self.nbytes = nbytes

    def close(self) -> None:
        if self.pointer:
            runtime().cudaFree(self.pointer)
            self.pointer = 0


class ImportedMemory:
    """Another process's :class:`ExportedMemory`, mapped into this process."""

    def __init__(self, handle: bytes) -> None:
        if len(handle) != HANDLE_BYTES:
            raise ValueError(f"a CUDA IPC handle has {HANDLE_BYTES} bytes, got {len(handle)}")
        rt = runtime()
        ipc = rt.cudaIpcMemHandle_t()
        ipc.reserved = handle
        self.pointer = int(
            check(rt.cudaIpcOpenMemHandle(ipc, _LAZY_PEER_ACCESS), "cudaIpcOpenMemHandle")
        )

    def close(self) -> None:
        if self.pointer:
            runtime().cudaIpcCloseMemHandle(self.pointer)
            self.pointer = 0
