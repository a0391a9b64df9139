"""The on-disk spool (real files in a temp dir) and the entry-id rule."""

from __future__ import annotations

import itertools
import os
from pathlib import Path

import pytest

from visionflow.config import RedisConfig
from visionflow.errors import PublishError
from visionflow.schema import next_entry_id, parse_stream_id
from visionflow.workers.spool import Spool


def recs(key: str, seqs: range) -> list[tuple[str, bytes]]:
    return [(key, f"{key}-{s}".encode()) for s in seqs]


def drain(spool: Spool, batch: int = 7) -> list[bytes]:
    out: list[bytes] = []
    while spool.pending:
        got = spool.peek(batch)
        assert got, "pending but nothing to read"
        out += [r.data for r in got]
        spool.ack(got[-1].end, len(got))
    return out


def killed(spool: Spool) -> None:
    """Let go of the files as a SIGKILLed process would: no fsync, no cursor, no cleanup."""
    os.close(spool._fd)  # type: ignore[arg-type]
    spool._fd = None
    spool._unlock()


def segments(path: Path) -> list[Path]:
    return sorted(path.glob("seg-*.log"))


def test_replay_is_in_append_order_across_segments(tmp_path):
    spool = Spool(tmp_path, max_bytes=1 << 20, segment_bytes=200)
    spool.append(recs("a", range(30)))
    spool.append(recs("b", range(5)))
    assert len(segments(tmp_path)) >= 3 and spool.pending == 35
    assert drain(spool) == [d for _, d in recs("a", range(30)) + recs("b", range(5))]
    assert spool.pending == 0 and spool.peek(10) == []
    assert len(segments(tmp_path)) == 1  # acknowledged segments deleted, the active one kept


def test_peek_does_not_move_the_cursor(tmp_path):
    spool = Spool(tmp_path, max_bytes=1 << 20)
    spool.append(recs("a", range(3)))
    assert [r.data for r in spool.peek(2)] == [b"a-0", b"a-1"]
    assert [r.data for r in spool.peek(2)] == [b"a-0", b"a-1"]
    assert spool.pending == 3


def test_cursor_survives_reopen(tmp_path):
    spool = Spool(tmp_path, max_bytes=1 << 20, segment_bytes=100)
    spool.append(recs("a", range(20)))
    got = spool.peek(12)
    spool.ack(got[-1].end, len(got))
    spool.close()
    again = Spool(tmp_path, max_bytes=1 << 20, segment_bytes=100)
    assert again.pending == 8
    assert drain(again) == [f"a-{s}".encode() for s in range(12, 20)]
    again.append(recs("a", range(20, 22)))
    again.close()
    third = Spool(tmp_path, max_bytes=1 << 20, segment_bytes=100)
    assert drain(third) == [b"a-20", b"a-21"]


def test_records_survive_without_close(tmp_path):
    """os.write, no user-space buffer: a killed process leaves every appended record."""
    spool = Spool(tmp_path, max_bytes=1 << 20, fsync="never")
    spool.append(recs("a", range(5)))
    killed(spool)
    assert drain(Spool(tmp_path, max_bytes=1 << 20)) == [f"a-{s}".encode() for s in range(5)]


@pytest.mark.parametrize("damage", ["truncate", "flip"])
def test_torn_or_corrupt_tail_is_cut_back_not_fatal(tmp_path, damage):
    spool = Spool(tmp_path, max_bytes=1 << 20)
    spool.append(recs("a", range(4)))
    spool.close()
    seg = segments(tmp_path)[-1]
    blob = bytearray(seg.read_bytes())
    if damage == "truncate":
        seg.write_bytes(bytes(blob[:-3]))  # the last record torn mid-body
    else:
        blob[-2] ^= 0xFF  # the last record's body no longer matches its CRC
        seg.write_bytes(bytes(blob))
    again = Spool(tmp_path, max_bytes=1 << 20)
    assert again.corrupt == 1 and again.pending == 3
    again.append(recs("a", range(10, 12)))  # appends continue after the last whole record
    assert drain(again) == [b"a-0", b"a-1", b"a-2", b"a-10", b"a-11"]


def test_corrupt_record_in_an_older_segment_skips_the_rest_of_it(tmp_path):
    spool = Spool(tmp_path, max_bytes=1 << 20, segment_bytes=60)
    spool.append(recs("a", range(12)))
    spool.close()
    first = segments(tmp_path)[0]
    probe = Spool(tmp_path, max_bytes=1 << 20, segment_bytes=60)
    in_first = len([r for r in probe.peek(100) if r.end.segment == 1])
    probe.close()
    blob = bytearray(first.read_bytes())
    blob[-1] ^= 0xFF  # the last record of the first segment
    first.write_bytes(bytes(blob))
    again = Spool(tmp_path, max_bytes=1 << 20, segment_bytes=60)
    data = drain(again)
    assert b"a-0" in data and b"a-11" in data and len(data) == 12 - 1
    assert in_first > 1 and again.corrupt == 1


def test_one_process_per_spool_directory(tmp_path):
    first = Spool(tmp_path, max_bytes=1 << 20)
    with pytest.raises(PublishError, match="in use by another process"):
        Spool(tmp_path, max_bytes=1 << 20)
    first.close()
    Spool(tmp_path, max_bytes=1 << 20).close()  # free again


def test_garbage_length_header_is_not_a_record(tmp_path):
    spool = Spool(tmp_path, max_bytes=1 << 20)
    spool.append(recs("a", range(2)))
    spool.close()
    seg = segments(tmp_path)[-1]
    seg.write_bytes(seg.read_bytes() + b"\xff\xff\xff\x7f\x00\x00\x00\x00xx")
    again = Spool(tmp_path, max_bytes=1 << 20)
    assert again.pending == 2 and again.corrupt == 1


def test_full_spool_drops_the_oldest_segment_and_counts_by_key(tmp_path):
    spool = Spool(tmp_path, max_bytes=400, segment_bytes=100)
    dropped = []
    for s in range(40):
        dropped += spool.append([("a" if s % 2 else "b", f"x-{s:03d}".encode())])
        assert spool.size_bytes <= 400
    lost = [r.data for r in dropped]
    assert lost and lost == [f"x-{s:03d}".encode() for s in range(len(lost))]  # oldest first
    assert sum(spool.overflow.values()) == len(lost)
    assert spool.overflow["a"] == sum(1 for d in lost if int(d[2:]) % 2)
    kept = drain(spool)
    assert kept == [f"x-{s:03d}".encode() for s in range(len(lost), 40)]  # the newest kept


def test_overflow_counts_only_unacknowledged_records(tmp_path):
    spool = Spool(tmp_path, max_bytes=400, segment_bytes=100)
    spool.append(recs("a", range(10)))
    got = spool.peek(10)
    spool.ack(got[-1].end, len(got))
    for s in range(30):
        spool.append([("b", f"b-{s:02d}".encode())])
    assert spool.overflow["a"] == 0


def test_fsync_always_fsyncs_every_append(tmp_path, monkeypatch):
    calls: list[int] = []
    real = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (calls.append(fd), real(fd))[1])
    spool = Spool(tmp_path, max_bytes=1 << 20, fsync="always")
    before = len(calls)
    spool.append(recs("a", range(3)))
    spool.append(recs("a", range(3, 4)))
    assert len(calls) - before >= 2 and spool.fsyncs == 2


def test_fsync_never_does_not_fsync(tmp_path, monkeypatch):
    calls: list[int] = []
    monkeypatch.setattr(os, "fsync", calls.append)
    spool = Spool(tmp_path, max_bytes=1 << 20, fsync="never", segment_bytes=100)
    for s in range(20):
        spool.append(recs("a", range(s, s + 1)))
    spool.close()
    assert calls == [] and spool.fsyncs == 0


def test_fsync_interval_waits_for_the_interval(tmp_path, monkeypatch):
    calls: list[int] = []
    monkeypatch.setattr(os, "fsync", calls.append)
    now = [1000.0]
    monkeypatch.setattr("visionflow.workers.spool.time.monotonic", lambda: now[0])
    spool = Spool(tmp_path, max_bytes=1 << 20, fsync="interval", fsync_interval_ms=500)
    spool.append(recs("a", range(1)))
    spool.append(recs("a", range(1, 2)))
    assert calls == []  # within the interval
    now[0] += 0.6
    spool.tick()
    assert len(calls) == 1
    spool.tick()
    assert len(calls) == 1  # nothing new written: nothing to fsync
    spool.append(recs("a", range(2, 3)))
    now[0] += 0.6
    spool.append(recs("a", range(3, 4)))  # due: fsynced on append
    assert len(calls) == 2


def test_close_removes_an_empty_spool(tmp_path):
    d = tmp_path / "sp"
    spool = Spool(d, max_bytes=1 << 20)
    spool.append(recs("a", range(2)))
    drain(spool)
    spool.close(remove_if_empty=True)
    assert not d.exists()
    kept = Spool(d, max_bytes=1 << 20)
    kept.append(recs("a", range(2)))
    kept.close(remove_if_empty=True)
    assert len(Spool(d, max_bytes=1 << 20).peek(5)) == 2


# ---------------------------------------------------------------------------- entry ids
def test_entry_id_is_capture_ms_and_seq():
    assert next_entry_id(1700000000.1234, 7, None) == (1700000000123, 7)
    assert next_entry_id(1700000000.5, 8, (1700000000123, 7)) == (1700000000500, 8)


def test_entry_ids_stay_increasing_when_the_clock_steps_back_and_seq_restarts():
    last = None
    ids = []
    # capture times step back by 5 s at seq 3; a restart at seq 0 on the same millisecond
    times = [10.0, 10.04, 10.08, 5.0, 5.04, 10.08, 10.08, 10.2]
    seqs = [0, 1, 2, 3, 4, 0, 1, 2]
    for t, s in zip(times, seqs, strict=True):
        last = next_entry_id(t, s, last)
        ids.append(last)
    assert all(a < b for a, b in itertools.pairwise(ids))
    assert [i[1] for i in ids] == seqs  # the second part always names the frame
    assert ids[-1] == (10200, 2)  # caught up with the clock again


def test_parse_stream_id():
    assert parse_stream_id(b"12-3") == (12, 3) and parse_stream_id("5") == (5, 0)


def test_spool_path_config(tmp_path):
    assert RedisConfig(key_prefix="p", spool_dir="").spool_path() is None
    assert RedisConfig(key_prefix="p").spool_path() == (
        Path.home() / ".cache" / "visionflow" / "spool" / "p"
    )
    assert RedisConfig(spool_dir=str(tmp_path)).spool_path() == tmp_path


def test_pending_bytes_count_only_unacknowledged_records(tmp_path: Path):
    spool = Spool(tmp_path / "s", max_bytes=1 << 20, segment_bytes=200)
    spool.append(recs("a", range(20)))  # several segments of about 200 bytes
    assert spool.pending_bytes == spool.size_bytes > 200
    got = spool.peek(5)
    spool.ack(got[-1].end, len(got))
    assert 0 < spool.pending_bytes < spool.size_bytes
    drain(spool)
    assert spool.pending_bytes == 0 and spool.size_bytes > 0  # the active segment stays
    spool.close()
