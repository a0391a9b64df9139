"""The output stage: batch order, processors, sinks isolated from each other (real Redis)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

from tests.conftest import wait_until
from visionflow.config import RedisConfig
from visionflow.pipeline.frames import BatchResult, FrameRef, FrameResult
from visionflow.pipeline.letterbox import letterbox_geometry
from visionflow.schema import detections_key, parse_entry
from visionflow.workers.output import OutputStage
from visionflow.workers.sinks import RedisStreamSink, Sink

LB = letterbox_geometry(640, 480, 320, 320)


def batch(batch_id: int, stream: str, seqs: range) -> BatchResult:
    results = tuple(
        FrameResult(FrameRef(stream, s, None, 1.0, 1.0, "p", 0, LB), (), 1.0, 1.0, 1, 0, 1.0)
        for s in seqs
    )
    return BatchResult(batch_id, 0, results)


class Broken(Sink):
    name = "broken"

    def __init__(self) -> None:
        self.published, self.dropped = Counter(), Counter()

    def write(self, results: Sequence[FrameResult]) -> None:
        raise ConnectionError("webhook down")


class Keep(Sink):
    name = "keep"

    def __init__(self) -> None:
        self.published, self.dropped = Counter(), Counter()
        self.seen: list[int] = []

    def write(self, results: Sequence[FrameResult]) -> None:
        self.seen += [r.frame.seq for r in results]


class EveryOther:
    def process(self, results: list[FrameResult]) -> list[FrameResult]:
        return [r for r in results if r.frame.seq % 2 == 0]


def test_batches_reach_sinks_in_id_order_and_a_broken_sink_is_isolated():
    keep = Keep()
    stage = OutputStage([keep, Broken()])
    assert stage.on_result(batch(2, "a", range(4, 8))) == 0
    assert stage.on_abandoned(3) == 0
    assert stage.on_result(batch(1, "a", range(0, 4))) == 8
    assert stage.on_result(batch(4, "a", range(8, 10))) == 2
    assert keep.seen == list(range(10))
    assert stage.sink_errors == {"broken": 2}  # one write per release
    assert stage.on_result(batch(1, "a", range(0, 4))) == 0, "a re-sent batch is released once"


def test_processors_see_results_in_order_before_the_sinks():
    keep = Keep()
    stage = OutputStage([keep], processors=[EveryOther()])
    stage.on_result(batch(1, "a", range(6)))
    assert keep.seen == [0, 2, 4]


def test_redis_sink_counts_are_the_stages_published_counts(redis_server, redis_client, key_prefix):
    cfg = RedisConfig(url=redis_server, key_prefix=key_prefix)
    stage = OutputStage([RedisStreamSink(cfg, redis_server, "m1"), Broken()])
    stage.start()
    try:
        stage.on_result(batch(1, "a", range(5)))
        stage.on_result(batch(2, "b", range(3)))
        wait_until(
            lambda: stage.stats().published == (("a", 5), ("b", 3)), 10, lambda: f"{stage.stats()}"
        )
    finally:
        stage.stop(5)
    rows = [parse_entry(i, f) for i, f in redis_client.xrange(detections_key(key_prefix, "a"))]
    assert [e.seq for e in rows] == list(range(5))
    assert stage.stats(final=True).final and stage.stats().connected


def test_an_abandoned_batch_counts_lost_only_if_its_results_never_came():
    keep = Keep()
    stage = OutputStage([keep])
    stage.on_result(batch(1, "a", range(4)))  # written, then its worker died before BatchDone
    stage.on_abandoned(1, (("a", 4),))
    stage.on_abandoned(2, (("a", 3), ("b", 1)))  # never written
    dropped = {(sid, reason): n for sid, reason, n in stage.stats().dropped}
    assert dropped == {("a", "worker_lost"): 3, ("b", "worker_lost"): 1}
    assert keep.seen == [0, 1, 2, 3]


class Raises:
    def process(self, results: list[FrameResult]) -> list[FrameResult]:
        raise RuntimeError("tracker bug")


def test_a_failing_processor_is_skipped_and_filtered_results_are_counted():
    keep = Keep()
    stage = OutputStage([keep], processors=[Raises(), EveryOther()])
    stage.on_result(batch(1, "a", range(6)))
    assert keep.seen == [0, 2, 4] and stage.processor_errors == {"Raises": 1}
    assert ("a", "filtered", 3) in stage.stats().dropped
