"""Output shards: which output process writes a stream's results.

One output process (reorder → processors → sinks) writes a few thousand entries a second with
the boxes a busy frame carries (bench/output_stage.py); two GPUs infer more than that.  So the
output stage can run as several processes (``output.processes``), each owning a fixed part of
the streams: a stream's results always go to the same process, so its entries stay in seq
order and its tracker sees every frame.

The pipeline assigns each stream a shard when it is registered (:class:`ShardMap`: the shard
with the fewest streams, so 160 cameras on two processes are 80 + 80, where a hash of the id
gave 92 + 68) and keeps it for the run (a stream removed and added again goes back to its
shard).  The assignments are saved beside the spools and a run with the same number of output
processes starts from them: a stream's spooled entries are replayed by the process that writes
it, before anything newer (a run with another number, or a stream that moved, may see its old
entries written after newer ones, under new ids; the pipeline warns when a spool holds
entries then).  The inference workers learn the assignments before any frame of the stream reaches
them (:class:`~visionflow.workers.messages.OutputShards`, on their task queue ahead of the
stream's batches; a restarted worker gets them all in its spec).  Every worker splits each
batch's results by shard and sends each shard its part (:func:`split_result`), an empty part
included: each output process's reorder buffer sees every batch id, so it never waits for a
batch that held none of its streams.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
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
        self._of: dict[str, int] = {sid: k for sid, k in assigned if 0 <= k < shards}
        self._registered: list[set[str]] = [set() for _ in range(shards)]

    def place(self, stream_id: str) -> int:
        """The stream's shard (its earlier one if it had one, else the one with the fewest
        registered streams), not yet counted as registered (a fleet fence set just before the
        stream is added)."""
        shard = self._of.get(stream_id)
        if shard is None:
            shard = min(range(self.shards), key=lambda k: (len(self._registered[k]), k))
            self._of[stream_id] = shard
        return shard

    def assign(self, stream_id: str) -> int:
        """:meth:`place`, counted as registered until :meth:`release` (idempotent)."""
        shard = self.place(stream_id)
        self._registered[shard].add(stream_id)
        return shard

    def release(self, stream_id: str) -> None:
        """The stream left (its shard is kept for a later return)."""
        shard = self._of.get(stream_id)
        if shard is not None:
            self._registered[shard].discard(stream_id)

    def __call__(self, stream_id: str) -> int:
        """The stream's shard (hashed when it has none: only a stream never registered)."""
        shard = self._of.get(stream_id)
        return shard if shard is not None else hashed_shard(stream_id, self.shards)

    def items(self) -> tuple[tuple[str, int], ...]:
        """Every assignment of the run (a worker needs them all)."""
        return tuple(self._of.items())

    def registered(self) -> dict[str, int]:
        """The assignments of the streams registered now (what the next run starts from)."""
        return {sid: k for k, sids in enumerate(self._registered) for sid in sids}

    def update(self, assigned: Iterable[tuple[str, int]]) -> None:
        """Assignments made elsewhere (a worker told by the pipeline)."""
        self._of.update(assigned)


ASSIGNMENTS_FILE = "shards.json"


def load_assignments(base: Path | None, shards: int) -> list[tuple[str, int]]:
    """The assignments the last run with the same number of output processes saved in the
    spool folder (so a stream's spooled entries are replayed by the process that writes it
    now, before anything newer); none when the count differs, the file is missing or bad."""
    if base is None:
        return []
    try:
        saved = json.loads((base / ASSIGNMENTS_FILE).read_text())
        if saved.get("shards") != shards:
            return []
        return [(str(sid), int(k)) for sid, k in saved["streams"].items()]
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return []


def save_assignments(base: Path | None, shard_map: ShardMap) -> None:
    """Keep the registered streams' assignments beside the spools for the next run (atomic
    replace; a failure is logged by the caller, never fatal).  With one output process there
    is nothing to keep: an older file is removed, so a later run with several does not trust
    assignments older than what this run spooled."""
    if base is None:
        return
    if shard_map.shards == 1:
        (base / ASSIGNMENTS_FILE).unlink(missing_ok=True)
        return
    base.mkdir(parents=True, exist_ok=True)
    tmp = base / f".{ASSIGNMENTS_FILE}.tmp"
    body = {"shards": shard_map.shards, "streams": shard_map.registered()}
    tmp.write_text(json.dumps(body, sort_keys=True))
    os.replace(tmp, base / ASSIGNMENTS_FILE)


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


def spool_shard(folder: Path, base: Path) -> int:
    """The shard whose spool ``folder`` is (``base`` itself: 0; ``base/shard-k``: k)."""
    return 0 if folder == base else int(folder.name.removeprefix("shard-"))


def pending_spools(base: Path | None) -> list[Path]:
    """Spool folders (``base`` and its ``shard-k`` folders) that hold segments: entries an
    earlier run could not write yet."""
    if base is None or not base.is_dir():
        return []
    shards = sorted(f for f in base.glob("shard-*") if f.name.removeprefix("shard-").isdigit())
    folders = [base, *shards]
    return [f for f in folders if any(f.glob("seg-*.log"))]
