"""The video codec of an mp4 file, read from its box tree (no GStreamer, no PyAV): used by
``tests/rtsp_server.py`` (run with the system Python) to pick the parser for a served clip."""

from __future__ import annotations

from collections.abc import Iterator


def is_hevc(path: str) -> bool:
    """Whether the mp4's video sample entry is HEVC, read from the box tree (moov > trak >
    mdia > minf > stbl > stsd), not by searching the file's bytes, where the coded frames
    may hold 'hvc1' by chance (an H.264 clip of the tracking truth test, seed 801, did);
    :class:`ValueError` when there is no sample entry (not an mp4, or cut inside moov)."""
    with open(path, "rb") as fh:
        data = fh.read()
    entries = list(sample_entries(data))
    if not entries:
        raise ValueError(f"{path}: no sample entry found (not an mp4, or cut short)")
    return any(entry in (b"hvc1", b"hev1") for entry in entries)


def _boxes(data: bytes, start: int, end: int) -> Iterator[tuple[bytes, int, int]]:
    """(type, payload start, box end) of the mp4 boxes between ``start`` and ``end``."""
    at = start
    while at + 8 <= end:
        size, kind = int.from_bytes(data[at : at + 4], "big"), data[at + 4 : at + 8]
        head = 8
        if size == 1:  # a 64-bit size follows
            size, head = int.from_bytes(data[at + 8 : at + 16], "big"), 16
        elif size == 0:  # to the end
            size = end - at
        if size < head or at + size > end:
            return
        yield kind, at + head, at + size
        at += size


def sample_entries(data: bytes) -> Iterator[bytes]:
    """The four-character codes of every track's sample entries (stsd)."""
    path = (b"moov", b"trak", b"mdia", b"minf", b"stbl", b"stsd")

    def walk(start: int, end: int, depth: int) -> Iterator[bytes]:
        for kind, body, stop in _boxes(data, start, end):
            if kind != path[depth]:
                continue
            if depth == len(path) - 1:  # stsd: version/flags, entry count, then entries
                for entry, _, _ in _boxes(data, body + 8, stop):
                    yield entry
            else:
                yield from walk(body, stop, depth + 1)

    yield from walk(0, len(data), 0)
