from __future__ import annotations

from visionflow.pipeline.batcher import DynamicBatcher
from visionflow.pipeline.frames import FrameRef
from visionflow.pipeline.letterbox import letterbox_geometry

LB = letterbox_geometry(64, 64, 32, 32)


def frame(stream: str, seq: int) -> FrameRef:
    return FrameRef(stream, seq, None, 0.0, 1.0, f"pool-{stream}", seq % 4, LB)


def test_batch_leaves_when_full():
    b = DynamicBatcher(max_batch=4, max_delay_s=10, buffer_per_stream=8)
    for i in range(3):
        b.add(frame("a", i), now=0.0)
    assert b.time_until_due(0.0) == 10
    b.add(frame("b", 0), now=0.0)
    assert b.time_until_due(0.0) == 0
    assert len(b.take()) == 4 and b.waiting == 0


def test_batch_leaves_after_max_delay_of_oldest_frame():
    b = DynamicBatcher(max_batch=8, max_delay_s=0.02, buffer_per_stream=8)
    assert b.time_until_due(0.0) is None
    b.add(frame("a", 0), now=1.0)
    b.add(frame("a", 1), now=1.015)
    assert abs(b.time_until_due(1.01) - 0.01) < 1e-9
    assert b.time_until_due(1.02) == 0


def test_round_robin_gives_the_slow_stream_its_place():
    b = DynamicBatcher(max_batch=4, max_delay_s=0, buffer_per_stream=100)
    for i in range(50):
        b.add(frame("fast", i), now=0.0)
    b.add(frame("slow", 0), now=0.0)
    first = b.take()
    assert [f.stream_id for f in first].count("slow") == 1
    assert [f.seq for f in first if f.stream_id == "fast"] == [0, 1, 2]


def test_rotation_changes_the_first_stream():
    b = DynamicBatcher(max_batch=1, max_delay_s=0, buffer_per_stream=10)
    for i in range(3):
        for s in ("a", "b", "c"):
            b.add(frame(s, i), now=0.0)
    assert [b.take()[0].stream_id for _ in range(3)] == ["a", "b", "c"]


def test_full_buffer_drops_oldest_and_returns_it():
    b = DynamicBatcher(max_batch=8, max_delay_s=1, buffer_per_stream=2)
    assert b.add(frame("a", 0), 0.0) is None
    assert b.add(frame("a", 1), 0.0) is None
    dropped = b.add(frame("a", 2), 0.0)
    assert dropped is not None and dropped.seq == 0
    assert [f.seq for f in b.take()] == [1, 2]


def test_remove_stream_returns_waiting_frames():
    b = DynamicBatcher(max_batch=8, max_delay_s=1, buffer_per_stream=4)
    b.add(frame("a", 0), 0.0)
    b.add(frame("b", 0), 0.0)
    assert [f.stream_id for f in b.remove_stream("a")] == ["a"]
    assert b.waiting == 1 and [f.stream_id for f in b.drain()] == ["b"]


def test_lossless_frames_are_never_dropped():
    from dataclasses import replace

    b = DynamicBatcher(max_batch=8, max_delay_s=1, buffer_per_stream=2)
    for i in range(5):
        assert b.add(replace(frame("file", i), lossless=True), 0.0) is None
    assert [f.seq for f in b.take()] == [0, 1, 2, 3, 4]


def test_a_backlog_larger_than_a_batch_is_served_in_turn():
    """Six streams with a backlog, batches of four: the second batch starts where the first
    stopped, so no stream waits more than two batches for its next frame."""
    b = DynamicBatcher(max_batch=4, max_delay_s=0, buffer_per_stream=10)
    streams = [f"s{i}" for i in range(6)]
    for seq in range(3):
        for s in streams:
            b.add(frame(s, seq), now=0.0)
    served = [[f.stream_id for f in b.take()] for _ in range(3)]
    assert served == [
        ["s0", "s1", "s2", "s3"],
        ["s4", "s5", "s0", "s1"],
        ["s2", "s3", "s4", "s5"],
    ]


def test_a_batch_of_several_passes_resumes_after_its_last_frame():
    b = DynamicBatcher(max_batch=5, max_delay_s=0, buffer_per_stream=10)
    for seq in range(4):
        for s in ("a", "b", "c"):
            b.add(frame(s, seq), now=0.0)
    assert [f.stream_id for f in b.take()] == ["a", "b", "c", "a", "b"]
    assert [f.stream_id for f in b.take()][:1] == ["c"]


def test_removing_a_stream_before_the_rotation_point_skips_nobody():
    b = DynamicBatcher(max_batch=2, max_delay_s=0, buffer_per_stream=10)
    for s in "abcde":
        b.add(frame(s, 0), now=0.0)
    assert [f.stream_id for f in b.take()] == ["a", "b"]  # the next batch starts at c
    b.remove_stream("a")
    assert [f.stream_id for f in b.take()] == ["c", "d"]


def test_removing_a_stream_after_a_batch_served_them_all_keeps_the_rotation():
    b = DynamicBatcher(max_batch=8, max_delay_s=0, buffer_per_stream=10)
    for seq in range(2):
        for s in "abcde":
            b.add(frame(s, seq), now=0.0)
    assert [f.stream_id for f in b.take()] == [*"abcde", "a", "b", "c"]  # next: d
    b.remove_stream("e")  # the last stream, after the rotation point
    assert [f.stream_id for f in b.take()] == ["d"]
    for s in "abcd":
        b.add(frame(s, 9), now=0.0)
    b.remove_stream("a")  # before it
    assert [f.stream_id for f in b.take()][:1] == ["b"]
