"""Output shards: which output process writes a stream's results.

One output process (reorder → processors → sinks) writes a few thousand entries a second with
the boxes a busy frame carries (bench/output_stage.py); two GPUs infer more than that.  So the
output stage can run as several processes (``output.processes``), each owning a fixed part of
the streams: a stream's results always go to the same process, so its entries stay in seq
order and its tracker sees every frame.

The pipeline assigns each stream a shard when it is registered (:class:`ShardMap`: the shard
with the fewest streams, so 160 cameras on two processes are 80 + 80, where a hash of the id
gave 92 + 68) and keeps it for the run (a stream removed and added again goes back to its
shard).  The inference workers learn the assignments before any frame of the stream reaches
them (:class:`~visionflow.workers.messages.OutputShards`, on their task queue ahead of the
stream's batches; a restarted worker gets them all in its spec).  Every worker splits each
batch's results by shard and sends each shard its part (:func:`split_result`), an empty part
included: each output process's reorder buffer sees every batch id, so it never waits for a
batch that held none of its streams.
"""

from __future__ import annotations

import functools
import hashlib
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import replace
from pathlib import Path
from typing import TypeVar

from visionflow.pipeline.frames import BatchResult

T = TypeVar("T")


@functools.lru_cache(maxsize=65536)
def hashed_shard(stream_id: str, shards: int) -> int:
    """A fallback for a stream without an assignment: a hash of its id (BLAKE2: CRC32 is
    linear, and ids that differ in one digit, ``cam0`` … ``cam3``, fell in one shard)."""
    if shards <= 1:
        return 0
    digest = hashlib.blake2b(stream_id.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big") % shards


class ShardMap:
    """Stream id → output shard, assigned at registration to the shard with fewest streams."""

    def __init__(self, shards: int, assigned: Iterable[tuple[str, int]] = ()) -> None:
        if shards < 1:
            raise ValueError(f"shards must be at least 1, not {shards}")
        self.shards = shards
        self._of: dict[str, int] = dict(assigned)
        self._active: Counter[int] = Counter()  # registered streams per shard

    def assign(self, stream_id: str) -> int:
        """The stream's shard (its earlier one if it had one), counted as registered."""
        shard = self._of.get(stream_id)
        if shard is None:
            shard = min(range(self.shards), key=lambda k: (self._active[k], k))
            self._of[stream_id] = shard
        self._active[shard] += 1
        return shard

    def release(self, stream_id: str) -> None:
        """The stream left (its shard is kept for a later return)."""
        shard = self._of.get(stream_id)
        if shard is not None and self._active[shard] > 0:
            self._active[shard] -= 1

    def __call__(self, stream_id: str) -> int:
        """The stream's shard (hashed when it has none: only a stream never registered)."""
        shard = self._of.get(stream_id)
        return shard if shard is not None else hashed_shard(stream_id, self.shards)

    def items(self) -> tuple[tuple[str, int], ...]:
        return tuple(self._of.items())

    def update(self, assigned: Iterable[tuple[str, int]]) -> None:
        """Assignments made elsewhere (a worker told by the pipeline)."""
        self._of.update(assigned)


def split(items: Iterable[T], shard: Callable[[T], int], shards: int) -> list[list[T]]:
    """``items`` in ``shards`` parts by ``shard(item)`` (order kept within a part)."""
    parts: list[list[T]] = [[] for _ in range(max(1, shards))]
    for item in items:
        parts[shard(item)].append(item)
    return parts


def split_result(result: BatchResult, shard_of: ShardMap) -> list[BatchResult]:
    """One part of a worker's batch per output process (empty parts included: see above)."""
    n = shard_of.shards
    if n <= 1:
        return [result]
    results = split(result.results, lambda r: shard_of(r.frame.stream_id), n)
    images = split(result.images, lambda image: shard_of(image.stream_id), n)
    return [
        replace(result, results=tuple(part), images=tuple(pixels))
        for part, pixels in zip(results, images, strict=True)
    ]


def stranded_spools(base: Path | None, shards: int) -> list[Path]:
    """Spool folders of shards this run does not have (``shard-k`` with k ≥ ``shards``) that
    still hold segments: entries an earlier run with more output processes could not write.
    Nothing reads them until a run has that many processes again."""
    if base is None or not base.is_dir():
        return []
    found = []
    for folder in sorted(base.glob("shard-*")):
        digits = folder.name.removeprefix("shard-")
        if digits.isdigit() and int(digits) >= shards and any(folder.glob("seg-*.log")):
            found.append(folder)
    return found
