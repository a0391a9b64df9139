"""Output shards: streams spread evenly, a worker's batch split so each output process sees
every batch id, and the status board's account over several output processes."""

from __future__ import annotations

import multiprocessing
import queue
import time
from dataclasses import replace
from typing import Any

import numpy as np
import pytest

from visionflow.config import OutputConfig
from visionflow.pipeline.frames import BatchResult, FrameImage, FrameRef, FrameResult
from visionflow.pipeline.letterbox import letterbox_geometry
from visionflow.workers.channels import ShardedWriter
from visionflow.workers.inference import WorkerLoop, WorkerQueues
from visionflow.workers.messages import OutputShards, OutputStats
from visionflow.workers.output_book import OutputBook
from visionflow.workers.shards import (
    ShardMap,
    hashed_shard,
    load_assignments,
    pending_spools,
    save_assignments,
    split_result,
    spool_shard,
)
from visionflow.workers.status import PublishStats

LB = letterbox_geometry(64, 48, 64, 64)


def _result(stream_id: str, seq: int) -> FrameResult:
    frame = FrameRef(stream_id, seq, None, time.time(), 1.0, "pool", 0, LB)
    return FrameResult(frame, (), 1.0, 1.0, 1, 0, time.time())


def test_streams_are_spread_evenly_and_keep_their_shard_when_they_come_back():
    shards = ShardMap(2)
    got = [shards.assign(f"cam-{i:03d}") for i in range(160)]
    assert got.count(0) == got.count(1) == 80  # a hash of these ids gave 92 + 68
    assert shards.assign("cam-000") == 0  # assigning again counts nothing twice
    shards.release("cam-000")
    shards.release("cam-002")  # shard 0 now has 78 registered: the next new stream goes there
    assert shards.assign("new") == 0
    shards.release("cam-001")  # 79 and 79: least-loaded would now pick shard 0
    assert shards.assign("cam-001") == 1  # back: its old shard


def test_assignments_saved_beside_the_spool_seed_a_run_with_as_many_processes(tmp_path):
    shards = ShardMap(2)
    for sid in ("a", "b", "c"):
        shards.assign(sid)
    save_assignments(tmp_path, shards)
    assert load_assignments(tmp_path, 2) == [("a", 0), ("b", 1), ("c", 0)]
    assert load_assignments(tmp_path, 3) == []  # another count: not used
    seeded = ShardMap(2, load_assignments(tmp_path, 2))
    assert seeded.assign("x") == 0 and seeded.assign("b") == 1  # b kept, x least-loaded
    shards.release("c")
    save_assignments(tmp_path, shards)  # only what is registered now
    assert load_assignments(tmp_path, 2) == [("a", 0), ("b", 1)]
    save_assignments(tmp_path, ShardMap(1))  # one process: the older file would mislead
    assert not (tmp_path / "shards.json").exists()
    (tmp_path / "shards.json").write_text("{not json")
    assert load_assignments(tmp_path, 2) == [] and load_assignments(None, 2) == []


def test_spool_folders_holding_segments_are_found_with_their_shard(tmp_path):
    for k in (1, 2, 3):
        (tmp_path / f"shard-{k}").mkdir()
    (tmp_path / "shard-2" / "seg-00000001.log").write_bytes(b"x")
    (tmp_path / "seg-00000001.log").write_bytes(b"x")
    found = pending_spools(tmp_path)
    assert found == [tmp_path, tmp_path / "shard-2"]  # shard-1 and shard-3 are empty
    assert [spool_shard(f, tmp_path) for f in found] == [0, 2]
    assert pending_spools(None) == [] and pending_spools(tmp_path / "none") == []


def test_a_stream_never_registered_falls_back_to_a_hash_of_its_id():
    shards = ShardMap(4)
    assert shards("unknown") == hashed_shard("unknown", 4)
    assert 0 <= shards("unknown") < 4
    assert hashed_shard("anything", 1) == 0
    with pytest.raises(ValueError, match="at least 1"):
        ShardMap(0)


def test_a_batch_is_split_by_shard_and_every_shard_gets_its_part_empty_ones_included():
    shards = ShardMap(3, [("a", 0), ("b", 2)])
    image = FrameImage("b", 2, np.zeros((48, 64, 3), np.uint8))
    batch = BatchResult(7, 1, (_result("a", 1), _result("b", 2), _result("a", 3)), None, (image,))
    parts = split_result(batch, shards)
    assert [p.batch_id for p in parts] == [7, 7, 7]
    assert [[(r.frame.stream_id, r.frame.seq) for r in p.results] for p in parts] == [
        [("a", 1), ("a", 3)],
        [],
        [("b", 2)],
    ]
    assert [len(p.images) for p in parts] == [0, 0, 1]
    assert split_result(batch, ShardMap(1)) == [batch]


def test_the_worker_s_writer_sends_each_pipe_its_part_and_learns_new_assignments():
    ctx = multiprocessing.get_context("fork")
    pipes = [ctx.Pipe(duplex=False) for _ in range(2)]
    writer = ShardedWriter([w for _, w in pipes], [("a", 0)])
    writer.shards.update([("b", 1)])  # an OutputShards message, as the worker applies it
    writer.put(BatchResult(3, 0, (_result("a", 1), _result("b", 1)), None))
    writer.put("to every pipe")
    writer.close()
    writer.join_thread(5)
    got = [[r.recv(), r.recv()] for r, _ in pipes]
    assert [[x.frame.stream_id for x in got[k][0].results] for k in range(2)] == [["a"], ["b"]]
    assert got[0][1] == got[1][1] == "to every pipe"


def _stats(shard: int, pid: int, published: dict[str, int], **kw: Any) -> OutputStats:
    base = OutputStats(time.time(), tuple(published.items()), (), 0, True, None)
    return replace(base, pid=pid, shard=shard, **kw)


def test_the_book_adds_the_shards_up_and_keeps_a_restarted_shard_s_old_counts():
    book = OutputBook()
    book.apply(_stats(0, 100, {"a": 5}, publish=PublishStats(published=5, spool_entries=2)))
    book.apply(_stats(1, 200, {"b": 7}, publish=PublishStats(published=7, spool_entries=3)))
    assert book.totals("a")[0] == 5 and book.totals("b")[0] == 7
    combined = book.combined()
    assert combined.publish.published == 12 and combined.publish.spool_entries == 5
    assert combined.connected
    # shard 1 restarted: its new process counts from zero, the old counts stay
    book.apply(_stats(1, 201, {"b": 2}, connected=False, last_error="down",
                      publish=PublishStats(published=2, spool_entries=1)))  # fmt: skip
    assert book.totals("b")[0] == 9
    combined = book.combined()
    assert combined.publish.published == 14
    assert combined.publish.spool_entries == 3  # the gone process's spool is no gauge
    assert not combined.connected and combined.last_error == "down"


def test_output_processes_auto_is_two_per_worker_within_the_cores():
    assert OutputConfig().resolved_processes(inference_workers=2, cpus=32) == 4
    assert OutputConfig().resolved_processes(inference_workers=1, cpus=16) == 2
    assert OutputConfig().resolved_processes(inference_workers=2, cpus=8) == 1
    assert OutputConfig().resolved_processes(inference_workers=1, cpus=2) == 1
    assert OutputConfig(processes=3).resolved_processes(inference_workers=1, cpus=2) == 3
    with pytest.raises(ValueError, match=r"output\.processes"):
        OutputConfig(processes=0)


def test_a_worker_splits_its_batches_by_the_assignments_it_is_sent():
    from tests.unit.workers.test_inference_appearance import BoxEngine, ColourPools, _batch
    from tests.unit.workers.test_inference_errors import _spec

    ctx = multiprocessing.get_context("fork")
    pipes = [ctx.Pipe(duplex=False) for _ in range(2)]
    tasks: queue.Queue[object] = queue.Queue()
    for msg in (OutputShards((("door", 1), ("street", 0))), _batch(1), None):
        tasks.put(msg)
    writer = ShardedWriter([w for _, w in pipes])
    queues = WorkerQueues(tasks, writer, queue.Queue(), queue.Queue())
    WorkerLoop(BoxEngine({}), ColourPools(), _spec(), queues).run()  # type: ignore[arg-type]
    writer.close()
    writer.join_thread(5)
    parts = [reader.recv() for reader, _ in pipes]
    assert [p.batch_id for p in parts] == [1, 1]
    assert [[r.frame.stream_id for r in p.results] for p in parts] == [["street"], ["door"]]


def test_a_fleet_fence_set_before_its_stream_is_added_reaches_the_process_that_writes_it():
    """A fleet node sets a stream's lease value before adding it: the fence must go to the
    output process the stream is then assigned, not to a hashed guess."""
    from visionflow.config import parse_config
    from visionflow.workers.fence import SetFence
    from visionflow.workers.supervisor import Pipeline

    cfg = parse_config({"redis": {"url": "redis://127.0.0.1:1/0"}, "fleet": {"node_id": "n1"}})
    pipeline = Pipeline(cfg, "redis://127.0.0.1:1/0")
    inboxes: list[queue.Queue[object]] = [queue.Queue(), queue.Queue()]
    pipeline._output_qs, pipeline._shards = inboxes, ShardMap(2)
    ids = ["a", "b"]
    assert [hashed_shard(sid, 2) for sid in ids] == [1, 1]  # a hashed guess sends both to 1
    added = []
    for sid in ids:  # as a fleet node takes a stream: its fence, then the stream
        pipeline.set_fence(sid, f"token-{sid}", 0)
        added.append(pipeline._shards.assign(sid))  # what add_stream does first
    fenced = [[m.stream_id for m in _drain_all(q) if isinstance(m, SetFence)] for q in inboxes]
    assert fenced == [["a"], ["b"]] and added == [0, 1]
    assert pipeline._shards.place("c") == 0  # a fence alone is not counted as registered
    assert pipeline._shards.place("d") == 0


def _drain_all(q: queue.Queue[object]) -> list[Any]:
    out = []
    while not q.empty():
        out.append(q.get_nowait())
    return out
