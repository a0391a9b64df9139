"""Dynamic batching across real RTSP streams: batches form, slow streams are not starved."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from tests.conftest import wait_until
from tests.integration.helpers import config, entries, running
from visionflow.workers.status import StreamStatus

pytestmark = [pytest.mark.integration, pytest.mark.serial]  # rates, latencies, deadlines


@dataclass(frozen=True)
class _Counts:
    frames: int
    published: int
    drops: int


def _delta(before: StreamStatus, after: StreamStatus) -> _Counts:
    return _Counts(
        frames=after.frames - before.frames,
        published=after.published - before.published,
        drops=after.total_drops - before.total_drops,
    )


def test_eight_busy_streams_form_batches_larger_than_one(
    rtsp, redis_server, redis_client, key_prefix
):
    mounts = {f"s{i}": "test:320x240@30" for i in range(8)}
    server = rtsp(mounts)
    cfg = config(
        [{"id": m, "url": server.url(m)} for m in mounts],
        redis_server,
        key_prefix,
        batching={"max_batch": 8, "max_delay_ms": 30},
    )
    with running(cfg, redis_server) as pipeline:
        wait_until(
            lambda: sum(w.batches for w in pipeline.status().workers) >= 60,
            40,
            lambda: f"too few batches: {pipeline.status().workers}",
        )
        workers = pipeline.status().workers
    frames = sum(w.frames for w in workers)
    batches = sum(w.batches for w in workers)
    assert frames / batches > 1.0, f"mean batch {frames / batches:.2f}"
    sizes = [e.batch_size for m in mounts for e in entries(redis_client, key_prefix, m)]
    assert max(sizes) > 1 and all(1 <= s <= 8 for s in sizes)


def test_slow_stream_gets_through_while_fast_streams_overload(
    rtsp, redis_server, redis_client, key_prefix
):
    # small frames: the overload must be inference's, not the test server's live encoders'
    # or the decoders' (640x360 x 6 left a slower 2-core VM ~20 fps for everything)
    mounts = {f"fast{i}": "test:320x180@30" for i in range(6)}
    mounts["slow"] = "test:640x360@2"
    server = rtsp(mounts)
    cfg = config(
        [{"id": m, "url": server.url(m)} for m in mounts],
        redis_server,
        key_prefix,
        # batches of 1: inference must fall behind the fast cameras on a faster machine too
        # (with batches of 4 a 2-core AMD EPYC VM served ~95% of their 180 frames/s, drop
        # rate 2-5% against the 5% asked below; with 1, 14-37%)
        batching={"max_batch": 1, "max_delay_ms": 5, "buffer_per_stream": 2},
        # the batcher's round-robin under overload, not shedding before decode (which would
        # keep the fast cameras from overloading it at all)
        source={"shed_load": False},
    )
    with running(cfg, redis_server) as pipeline:
        # measure in steady state: frames buffered while the worker warmed up are not
        # what round-robin fairness is about
        wait_until(
            lambda: pipeline.status().stream("slow").published >= 3,
            40,
            lambda: f"slow stream never published: {pipeline.status().stream('slow')}",
        )
        before = pipeline.status()
        wait_until(
            lambda: (
                pipeline.status().stream("slow").published >= before.stream("slow").published + 12
            ),
            40,
            lambda: f"slow stream starved: {pipeline.status().stream('slow')}",
        )
        after = pipeline.status()
    slow = _delta(before.stream("slow"), after.stream("slow"))
    fast = [_delta(before.stream(m), after.stream(m)) for m in mounts if m != "slow"]
    # the fast cameras share what inference serves evenly, each getting more than the slow
    # one offers (a multiple of the slow one's count measured the machine: on a 2-core AMD
    # EPYC VM at 2 GHz, ~30 frames/s in all, the fast ones got 28-29 to its 12)
    counts = [f.published for f in fast]
    assert min(counts) > slow.published, (fast, slow)
    assert min(counts) >= 0.75 * max(counts), f"fast cameras served unevenly: {fast}"

    # round-robin: the slow camera loses no more than its share even when the fast ones
    # overload. Drop rates, not published/captured: frames still in flight when the
    # status is read are a large fraction of the slow camera's dozen frames.
    slow_drop_rate = slow.drops / max(slow.frames, 1)
    fast_drop_rate = sum(f.drops for f in fast) / max(sum(f.frames for f in fast), 1)
    assert fast_drop_rate > 0.05, f"fast cameras did not overload (drop rate {fast_drop_rate})"
    assert slow_drop_rate <= 0.1, (
        f"slow camera dropped {slow.drops} of {slow.frames} frames in steady state "
        f"(rate {slow_drop_rate:.2f}), fast cameras' rate {fast_drop_rate:.2f}"
    )
    seqs = [e.seq for e in entries(redis_client, key_prefix, "slow")]
    assert seqs == sorted(seqs)
