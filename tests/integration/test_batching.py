"""Dynamic batching across real RTSP streams: batches form, slow streams are not starved."""

from __future__ import annotations

import pytest

from tests.conftest import wait_until
from tests.integration.helpers import config, entries, running

pytestmark = pytest.mark.integration


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
    mounts = {f"fast{i}": "test:640x360@30" for i in range(6)}
    mounts["slow"] = "test:640x360@2"
    server = rtsp(mounts)
    cfg = config(
        [{"id": m, "url": server.url(m)} for m in mounts],
        redis_server,
        key_prefix,
        batching={"max_batch": 4, "max_delay_ms": 5, "buffer_per_stream": 2},
    )
    with running(cfg, redis_server) as pipeline:
        wait_until(
            lambda: pipeline.status().stream("slow").published >= 12,
            40,
            lambda: f"slow stream starved: {pipeline.status().stream('slow')}",
        )
        status = pipeline.status()
    slow = status.stream("slow")
    fast = [s for s in status.streams if s.stream_id != "slow"]
    assert all(f.published > 3 * slow.published for f in fast), (fast, slow)
    # round-robin: the slow camera gets its fair share even when the fast ones overload
    slow_share = slow.published / max(slow.frames, 1)
    fast_share = sum(f.published for f in fast) / max(sum(f.frames for f in fast), 1)
    assert slow_share >= 0.8 and slow_share >= fast_share - 0.05, (slow_share, fast_share)
    seqs = [e.seq for e in entries(redis_client, key_prefix, "slow")]
    assert seqs == sorted(seqs)
