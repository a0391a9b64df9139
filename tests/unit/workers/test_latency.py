"""Latency histograms: bucket placement, cumulative counts, window percentiles, JSON shape."""

from __future__ import annotations

import json
import threading

import numpy as np
import pytest

from visionflow.workers.latency import (
    BUCKETS_MS,
    STAGES,
    LatencyBook,
    StageHistogram,
    StageLatency,
    latency_json,
    parse_latency_json,
    percentile,
)


@pytest.mark.parametrize("q", [0.0, 0.01, 0.25, 0.5, 0.9, 0.99, 1.0])
def test_percentile_matches_numpy_linear(q: float) -> None:
    values = sorted(np.random.default_rng(7).exponential(30.0, 777).tolist())
    assert percentile(values, q) == pytest.approx(float(np.percentile(values, q * 100)))


def test_percentile_edges() -> None:
    assert percentile([], 0.5) == 0.0
    assert percentile([4.0], 0.99) == 4.0
    assert percentile([1.0, 3.0], 0.5) == 2.0
    with pytest.raises(ValueError, match="quantile"):
        percentile([1.0], 1.5)


def test_bucket_bounds_are_upper_inclusive_and_cumulative() -> None:
    h = StageHistogram()
    for ms in (0.0, 1.0, 1.0001, 2.0, 4.9, 5000.0, 5000.1, 99_999.0):
        h.observe(ms)
    snap = h.snapshot()
    cumulative = dict(snap.buckets)
    assert [le for le, _ in snap.buckets] == list(BUCKETS_MS)
    assert cumulative[1] == 2  # 0 and exactly 1 ("le")
    assert cumulative[2] == 4  # + 1.0001 and 2
    assert cumulative[5] == 5  # + 4.9
    assert cumulative[2000] == 5
    assert cumulative[5000] == 6  # exactly 5000; 5000.1 and 99999 only in +Inf (= count)
    assert snap.count == 8
    assert snap.sum == pytest.approx(sum((0.0, 1.0, 1.0001, 2.0, 4.9, 5000.0, 5000.1, 99_999.0)))
    counts = [n for _, n in snap.buckets]
    assert counts == sorted(counts), "cumulative counts never decrease"


def test_percentiles_come_from_the_recent_window_buckets_from_everything() -> None:
    h = StageHistogram(window=100)
    for _ in range(1000):
        h.observe(500.0)  # an old slow spell
    for _ in range(100):
        h.observe(3.0)  # the last 100 are fast
    snap = h.snapshot()
    assert snap.p50 == 3.0 and snap.p99 == 3.0
    assert snap.count == 1100 and dict(snap.buckets)[500] == 1100 and dict(snap.buckets)[5] == 100


def test_unsorted_bounds_are_refused() -> None:
    with pytest.raises(ValueError, match="strictly increasing"):
        StageHistogram(bounds=(5, 1, 10))


def test_book_keeps_streams_and_stages_apart() -> None:
    book = LatencyBook(refresh_s=0.0)
    for i in range(10):
        book.observe("a", {"decode": 1.0, "queue": 2.0, "inference": 3.0 + i, "publish": 4.0,
                           "total": 40.0 + i})  # fmt: skip
    book.observe("b", {"total": 700.0, "bogus": 1.0})
    snap = {sid: dict(stages) for sid, stages in book.snapshot()}
    assert set(snap["a"]) == set(STAGES)
    assert set(snap["b"]) == {"total"}  # stages never observed are left out; unknown ignored
    assert snap["a"]["inference"].p50 == pytest.approx(7.5)
    assert snap["a"]["total"].count == 10 and snap["b"]["total"].p99 == 700.0


def test_book_snapshot_recomputes_only_what_changed() -> None:
    book = LatencyBook(refresh_s=0.0)
    book.observe("a", {"total": 10.0})
    book.observe("b", {"total": 20.0})
    first = dict(book.snapshot())
    book.observe("b", {"total": 30.0})
    second = dict(book.snapshot())
    assert second["a"] is first["a"], "an unchanged stream reuses its snapshot"
    assert dict(second["b"])["total"].count == 2


def test_book_recomputes_a_stream_at_most_every_refresh_s() -> None:
    book = LatencyBook(refresh_s=3600.0)
    book.observe("a", {"total": 10.0})
    assert dict(dict(book.snapshot())["a"])["total"].count == 1  # first: at once
    book.observe("a", {"total": 10.0})
    assert dict(dict(book.snapshot())["a"])["total"].count == 1  # cached within refresh_s
    book.refresh_s = 0.0
    assert dict(dict(book.snapshot())["a"])["total"].count == 2  # still dirty: recomputed


def test_book_is_safe_across_threads() -> None:
    book = LatencyBook(refresh_s=0.0)

    def feed() -> None:
        for _ in range(2000):
            book.observe("s", {"total": 5.0})

    threads = [threading.Thread(target=feed) for _ in range(4)]
    for t in threads:
        t.start()
    for _ in range(50):
        book.snapshot()
    for t in threads:
        t.join()
    assert dict(dict(book.snapshot())["s"])["total"].count == 8000


def test_json_has_the_shape_the_api_reads() -> None:
    h = StageHistogram()
    for ms in (0.5, 3.0, 12.0, 12.0, 150.0):
        h.observe(ms)
    text = latency_json({"total": h.snapshot()})
    data = json.loads(text)
    assert set(data) == {"total"}
    total = data["total"]
    assert set(total) == {"p50", "p99", "count", "sum", "buckets"}
    assert total["p50"] == 12.0 and total["count"] == 5 and total["sum"] == 177.5
    assert total["buckets"][0] == [1, 1] and total["buckets"][-1] == [5000, 5]
    assert all(isinstance(le, int) and isinstance(n, int) for le, n in total["buckets"])
    back = parse_latency_json(text)["total"]
    assert back == StageLatency(
        back.p50, back.p99, 5, 177.5, tuple((float(le), n) for le, n in total["buckets"])
    )
    assert parse_latency_json("") == {} and latency_json({}) == "{}"


def test_board_passes_the_output_latency_to_status_and_its_redis_hash() -> None:
    from visionflow.streams.config import StreamConfig
    from visionflow.workers.board import StatusBoard, redis_status
    from visionflow.workers.messages import OutputStats

    book = LatencyBook()
    book.observe("a", {"total": 42.0, "inference": 7.0})
    board = StatusBoard("m")
    board.add_stream(StreamConfig(id="a", url="rtsp://cam/1"))
    board.add_stream(StreamConfig(id="b", url="rtsp://cam/2"))
    board.apply(OutputStats(0.0, (("a", 1),), (), 0, True, None, latency=book.snapshot()))
    status = board.snapshot({}, {})
    assert status.stream("a").latency["total"].p50 == 42.0
    assert status.stream("b").latency == {}
    hashes, _ = redis_status(status, "vf")
    assert json.loads(hashes["vf:status:a"]["latency_ms"])["inference"]["count"] == 1
    assert hashes["vf:status:b"]["latency_ms"] == "{}"
