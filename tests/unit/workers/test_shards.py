"""Output shards: streams spread evenly, a worker's batch split so each output process sees
every batch id, and the status board's account over several output processes."""

from __future__ import annotations

import multiprocessing
import time
from dataclasses import replace
from typing import Any

import numpy as np
import pytest

from visionflow.config import OutputConfig
from visionflow.pipeline.frames import BatchResult, FrameImage, FrameRef, FrameResult
from visionflow.pipeline.letterbox import letterbox_geometry
from visionflow.workers.channels import ShardedWriter
from visionflow.workers.messages import OutputStats
from visionflow.workers.output_book import OutputBook
from visionflow.workers.shards import ShardMap, hashed_shard, split_result, stranded_spools
from visionflow.workers.status import PublishStats

LB = letterbox_geometry(64, 48, 64, 64)


def _result(stream_id: str, seq: int) -> FrameResult:
    frame = FrameRef(stream_id, seq, None, time.time(), 1.0, "pool", 0, LB)
    return FrameResult(frame, (), 1.0, 1.0, 1, 0, time.time())


def test_streams_are_spread_evenly_and_keep_their_shard_when_they_come_back():
    shards = ShardMap(2)
    got = [shards.assign(f"cam-{i:03d}") for i in range(160)]
    assert got.count(0) == got.count(1) == 80  # a hash of these ids gave 92 + 68
    shards.release("cam-000")
    shards.release("cam-002")  # shard 0 now has 78 registered: the next new stream goes there
    assert shards.assign("new") == 0
    assert shards.assign("cam-002") == 0  # back: its old shard, whatever the loads


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


def test_spool_folders_of_shards_this_run_lacks_are_named_when_they_hold_segments(tmp_path):
    for k in (1, 2, 3):
        (tmp_path / f"shard-{k}").mkdir()
    (tmp_path / "shard-2" / "seg-00000001.log").write_bytes(b"x")
    (tmp_path / "shard-1" / "seg-00000001.log").write_bytes(b"x")
    assert stranded_spools(tmp_path, 2) == [tmp_path / "shard-2"]  # shard-3 is empty
    assert stranded_spools(tmp_path, 4) == []
    assert stranded_spools(None, 1) == [] and stranded_spools(tmp_path / "none", 1) == []
