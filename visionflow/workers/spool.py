"""A bounded, append-only spool on local disk: what the Redis sink could not write.

Layout (one directory per spool, one writer process at a time)::

    <dir>/seg-00000000000000000001.log   segment files, appended to in order
    <dir>/seg-00000000000000000002.log
    <dir>/cursor                          "<segment> <offset>": everything before is acknowledged

A segment is a sequence of records, each ``<u32 body length><u32 CRC32 of body><body>``
(little endian); a body is ``<u16 key length><key, UTF-8><data>``.  The key is what overflow
is counted by (the sink uses the stream id).  A record is never rewritten: :meth:`Spool.ack`
only moves the cursor, and segments wholly before the cursor are deleted.

Crash safety.  Appends go straight to the file descriptor (``os.write``, no user-space
buffer), so what :meth:`Spool.append` returned from survives a SIGKILL of the process; it
survives a power loss or kernel crash only once fsynced (``fsync`` policy: ``always`` after
every append call, ``interval`` at most every ``fsync_interval_ms`` (checked on append and on
:meth:`Spool.tick`), ``never`` leaves it to the OS).  A record torn by a crash (short, or its
CRC does not match) is detected when the spool is opened: the newest segment is cut back to
its last whole record (counted in :attr:`Spool.corrupt`), and a bad record inside an older
segment ends that segment (the rest of it is skipped and counted).  Nothing raises on a torn
file.  The cursor is replaced atomically (write + rename); a cursor lost to a crash only
means acknowledged records are handed out again (the Redis sink's writes are idempotent).

Bound.  Segments together stay within ``max_bytes``: before an append would exceed it, the
oldest segment is deleted and its unacknowledged records are counted per key in
:attr:`Spool.overflow` (and returned to the caller).  Segments are ``segment_bytes`` long
(default ``max_bytes / 8``, between 64 KiB and 8 MiB), so an overflow drops about an eighth.

Not thread-safe: one thread appends, reads and acknowledges (the Redis sink's writer thread).
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import struct
import time
import zlib
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from visionflow.errors import PublishError

log = logging.getLogger("visionflow.spool")

FsyncPolicy = Literal["always", "interval", "never"]
_HEADER = struct.Struct("<II")  # body length, CRC32(body)
_KEYLEN = struct.Struct("<H")
_MAX_BODY = 64 * 1024 * 1024  # a length beyond this is garbage, not a record
_CHUNK = 256 * 1024  # replay reads
_PREFIX, _SUFFIX = "seg-", ".log"


@dataclass(frozen=True)
class Position:
    """Where a record ends: acknowledging it moves the cursor here."""

    segment: int
    offset: int


@dataclass(frozen=True)
class SpoolRecord:
    key: str
    data: bytes
    end: Position


def _segment_name(number: int) -> str:
    return f"{_PREFIX}{number:020d}{_SUFFIX}"


def _encode(key: str, data: bytes) -> bytes:
    raw_key = key.encode()
    body = _KEYLEN.pack(len(raw_key)) + raw_key + data
    return _HEADER.pack(len(body), zlib.crc32(body)) + body


def _scan(blob: bytes, start: int) -> tuple[list[tuple[str, bytes, int]], int, bool]:
    """Whole records of ``blob`` from ``start``: ([(key, data, end offset)], end of the last
    whole record, whether a torn or corrupt record stopped the scan)."""
    out: list[tuple[str, bytes, int]] = []
    pos = start
    while pos < len(blob):
        if pos + _HEADER.size > len(blob):
            return out, pos, True
        length, crc = _HEADER.unpack_from(blob, pos)
        body_at = pos + _HEADER.size
        body = blob[body_at : body_at + length]
        if (
            length < _KEYLEN.size
            or length > _MAX_BODY
            or len(body) < length
            or zlib.crc32(body) != crc
        ):
            return out, pos, True
        (key_len,) = _KEYLEN.unpack_from(body, 0)
        if _KEYLEN.size + key_len > length:
            return out, pos, True
        key = body[_KEYLEN.size : _KEYLEN.size + key_len].decode(errors="replace")
        pos = body_at + length
        out.append((key, body[_KEYLEN.size + key_len :], pos))
    return out, pos, False


class Spool:
    """Segment files + a cursor in ``directory`` (created if missing)."""

    def __init__(
        self,
        directory: str | os.PathLike[str],
        max_bytes: int,
        fsync: FsyncPolicy = "interval",
        fsync_interval_ms: int = 1000,
        segment_bytes: int | None = None,
    ) -> None:
        if max_bytes <= 0:
            raise ValueError(f"spool max_bytes must be positive, not {max_bytes}")
        self.directory = Path(directory).expanduser()
        self.max_bytes = max_bytes
        self.segment_bytes = segment_bytes or min(8 << 20, max(64 << 10, max_bytes // 8))
        self.fsync_policy: FsyncPolicy = fsync
        self.fsync_interval_s = fsync_interval_ms / 1000
        self.overflow: Counter[str] = Counter()  # records dropped unacknowledged, by key
        self.corrupt = 0  # torn / CRC-failed records found (and skipped)
        self.fsyncs = 0
        self._reported: set[tuple[int, int]] = set()
        self._lock_fd: int | None = None
        self._fd: int | None = None
        self._dirty = False
        self._last_sync = time.monotonic()
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            self._lock()
            self._open()
        except PublishError:
            self._unlock()
            raise
        except OSError as exc:
            self._unlock()
            raise PublishError(f"spool {self.directory}: cannot open ({exc})") from exc

    def _lock(self) -> None:
        """One writer per spool: a second sink on the same directory (two pipelines with the
        same key prefix) would interleave records."""
        self._lock_fd = os.open(self.directory / "lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            raise PublishError(
                f"spool {self.directory}: in use by another process (one sink per spool "
                "directory: give each pipeline its own redis.key_prefix or spool_dir)"
            ) from exc

    def _unlock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    # ---- opening ----------------------------------------------------------------------
    def _open(self) -> None:
        self._sizes: dict[int, int] = {}
        for path in self.directory.glob(f"{_PREFIX}*{_SUFFIX}"):
            digits = path.name[len(_PREFIX) : -len(_SUFFIX)]
            if digits.isdigit():
                self._sizes[int(digits)] = path.stat().st_size
        self._cursor = self._read_cursor()
        for done in [n for n in self._sizes if n < self._cursor.segment]:
            self._delete(done)  # acknowledged, deletion interrupted by a crash
        if self._sizes:
            last = max(self._sizes)
            blob = self._path(last).read_bytes()
            start = self._cursor.offset if last == self._cursor.segment else 0
            start = min(start, len(blob))
            _, end, torn = _scan(blob, start)
            if torn:
                self.corrupt += 1
                log.warning(
                    "spool %s: %s has a torn/corrupt record at byte %d; cut back to it",
                    self.directory,
                    _segment_name(last),
                    end,
                )
                os.truncate(self._path(last), end)
                self._sizes[last] = end
        else:
            last = max(self._cursor.segment, 1)
            self._sizes[last] = 0
        self._active = last
        self._fd = os.open(self._path(last), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        if self._cursor.segment not in self._sizes:
            later = [n for n in self._sizes if n > self._cursor.segment]
            self._cursor = Position(min(later), 0) if later else Position(last, self._sizes[last])
        elif self._cursor.offset > self._sizes[self._cursor.segment]:  # lost to a power cut
            self._cursor = Position(self._cursor.segment, self._sizes[self._cursor.segment])
        self.pending = sum(1 for _ in self._iter_from(self._cursor))

    def _read_cursor(self) -> Position:
        try:
            segment, offset = (self.directory / "cursor").read_text().split()
            return Position(int(segment), int(offset))
        except (OSError, ValueError):
            return Position(0, 0)

    def _path(self, number: int) -> Path:
        return self.directory / _segment_name(number)

    def _iter_from(self, start: Position) -> list[SpoolRecord]:
        out: list[SpoolRecord] = []
        for number in sorted(n for n in self._sizes if n >= start.segment):
            out.extend(self._read_segment(number, start.offset if number == start.segment else 0))
        return out

    def _read_segment(
        self, number: int, offset: int, limit: int | None = None
    ) -> list[SpoolRecord]:
        """Whole records of one segment from ``offset`` (at most ``limit``), read in chunks so
        that a replay reads each byte about once."""
        out: list[SpoolRecord] = []
        end_of_data = self._sizes.get(number, 0)
        chunk = _CHUNK
        try:
            with open(self._path(number), "rb") as f:
                pos = offset
                while pos < end_of_data and (limit is None or len(out) < limit):
                    f.seek(pos)
                    blob = f.read(min(chunk, end_of_data - pos))
                    records, used, torn = _scan(blob, 0)
                    out += [SpoolRecord(k, d, Position(number, pos + e)) for k, d, e in records]
                    if torn and pos + len(blob) >= end_of_data:
                        self._report_corrupt(number, pos + used)
                        break
                    if not records:  # one record longer than the chunk
                        chunk *= 2
                    pos += used
        except OSError as exc:
            log.error("spool %s: cannot read segment %d (%s)", self.directory, number, exc)
        return out if limit is None else out[:limit]

    def _report_corrupt(self, number: int, offset: int) -> None:
        if number == self._active or (number, offset) in self._reported:
            return
        self._reported.add((number, offset))
        self.corrupt += 1
        log.warning(
            "spool %s: corrupt record in %s at byte %d; the rest of it is skipped",
            self.directory,
            _segment_name(number),
            offset,
        )

    # ---- writing ----------------------------------------------------------------------
    @property
    def size_bytes(self) -> int:
        return sum(self._sizes.values())

    @property
    def pending_bytes(self) -> int:
        """Bytes of the unacknowledged records (acknowledged ones may still sit in the
        segment being appended to: they count in :attr:`size_bytes`, not here)."""
        cursor = self._cursor
        after = sum(size for number, size in self._sizes.items() if number >= cursor.segment)
        return max(0, after - cursor.offset) if self.pending else 0

    def append(self, records: Sequence[tuple[str, bytes]]) -> list[SpoolRecord]:
        """Append ``(key, data)`` records in order; returns the unacknowledged records that
        were dropped (oldest segments) to make room, also counted in :attr:`overflow`."""
        dropped: list[SpoolRecord] = []
        for key, data in records:
            blob = _encode(key, data)
            if (
                self._sizes[self._active]
                and self._sizes[self._active] + len(blob) > self.segment_bytes
            ):
                self._rotate()
            while self.size_bytes + len(blob) > self.max_bytes and len(self._sizes) > 1:
                dropped.extend(self._drop_oldest())
            assert self._fd is not None
            os.write(self._fd, blob)
            self._sizes[self._active] += len(blob)
            self.pending += 1
            self._dirty = True
        self._after_write()
        return dropped

    def _rotate(self) -> None:
        self._sync()
        assert self._fd is not None
        os.close(self._fd)
        self._active += 1
        self._sizes[self._active] = 0
        self._fd = os.open(self._path(self._active), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        if self.fsync_policy == "always":
            self._sync_dir()

    def _drop_oldest(self) -> list[SpoolRecord]:
        oldest = min(self._sizes)
        start = self._cursor.offset if oldest == self._cursor.segment else 0
        lost = self._read_segment(oldest, start) if oldest >= self._cursor.segment else []
        for record in lost:
            self.overflow[record.key] += 1
        self.pending -= len(lost)
        self._delete(oldest)
        if self._cursor.segment <= oldest:
            self._cursor = Position(min(self._sizes), 0)
            self._write_cursor()
        log.warning(
            "spool %s full (%d bytes): dropped %d unacknowledged record(s) of the oldest segment",
            self.directory,
            self.max_bytes,
            len(lost),
        )
        return lost

    def _delete(self, number: int) -> None:
        self._sizes.pop(number, None)
        with contextlib.suppress(FileNotFoundError):
            self._path(number).unlink()

    def _after_write(self) -> None:
        if self.fsync_policy == "always":
            self._sync()
        elif self.fsync_policy == "interval":
            self.tick()

    def tick(self) -> None:
        """Fsync if the ``interval`` policy is due (call it now and then)."""
        if (
            self.fsync_policy == "interval"
            and self._dirty
            and time.monotonic() - self._last_sync >= self.fsync_interval_s
        ):
            self._sync()

    def _sync(self) -> None:
        if self._dirty and self._fd is not None and self.fsync_policy != "never":
            os.fsync(self._fd)
            self.fsyncs += 1
        self._dirty = False
        self._last_sync = time.monotonic()

    def _sync_dir(self) -> None:
        fd = os.open(self.directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    # ---- reading ----------------------------------------------------------------------
    def peek(self, limit: int) -> list[SpoolRecord]:
        """Up to ``limit`` unacknowledged records, oldest first (the cursor does not move)."""
        out: list[SpoolRecord] = []
        cursor = self._cursor
        for number in sorted(n for n in self._sizes if n >= cursor.segment):
            if len(out) >= limit:
                break
            offset = cursor.offset if number == cursor.segment else 0
            out.extend(self._read_segment(number, offset, limit - len(out)))
        return out

    def ack(self, upto: Position, count: int) -> None:
        """Everything up to ``upto`` (``count`` records from the cursor) was delivered."""
        if (upto.segment, upto.offset) <= (self._cursor.segment, self._cursor.offset):
            return
        self._cursor = upto
        self.pending = max(0, self.pending - count)
        for number in [n for n in self._sizes if n < upto.segment]:
            self._delete(number)
        if upto.segment != self._active and self._sizes.get(upto.segment) == upto.offset:
            # the whole of a finished segment was acknowledged: it can go
            self._delete(upto.segment)
            self._cursor = Position(min(self._sizes), 0)
        self._write_cursor()

    def _write_cursor(self) -> None:
        tmp = self.directory / "cursor.tmp"
        with open(tmp, "w") as f:
            f.write(f"{self._cursor.segment} {self._cursor.offset}\n")
            if self.fsync_policy == "always":
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, self.directory / "cursor")

    def close(self, remove_if_empty: bool = False) -> None:
        """Fsync (unless ``never``) and close; with ``remove_if_empty`` a spool holding
        nothing unacknowledged is deleted, directory included."""
        if self._fd is None:
            return
        self._sync()
        os.close(self._fd)
        self._fd = None
        if remove_if_empty and self.pending == 0:
            for number in list(self._sizes):
                self._delete(number)
            for name in ("cursor", "cursor.tmp", "lock"):
                (self.directory / name).unlink(missing_ok=True)
            with contextlib.suppress(OSError):
                self.directory.rmdir()
        self._unlock()
