#!/usr/bin/env python3
"""What one dashboard poll costs the operator API with 100 streams and an hour of counts.

    python bench/api_poll.py [--streams 100] [--seconds 10]

A private redis-server is filled the way the pipeline fills it (the status writer's own
code for 100 stream hashes and 2 workers; 60 minute buckets of counts for 3 labels per
stream, HINCRBY as the output stage does), then ``visionflow api``'s app (read from Redis)
is served by uvicorn on loopback and polled over real HTTP with httpx, one request at a time:
``GET /counts?window=3600`` (what the dashboard's chart asks) and the dashboard's 1.5 s poll
(``/streams``, ``/workers``, ``/readyz``).  Baseline in the same run: the bare Redis reads of
that hour (one HGETALL per minute bucket, no aggregation, no HTTP), so the ratio says what the
API adds on top of reading Redis.  Prints a table, writes JSON.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import table, write_result  # noqa: E402

LABELS = ("person", "car", "bicycle")
PREFIX = "bench"


def fill(url: str, streams: int) -> None:
    """Status hashes through the status writer, and an hour of minute buckets of counts."""
    import redis

    from tests.unit.api.conftest import pipeline_status, stream_status, worker_status
    from visionflow.config import RedisConfig
    from visionflow.schema import COUNT_BUCKET_S, count_field, counts_key
    from visionflow.workers.board import RedisStatusWriter

    ids = [f"cam-{i:03d}" for i in range(streams)]
    status = pipeline_status(
        streams=tuple(stream_status(sid) for sid in ids),
        workers=(worker_status(0), worker_status(1)),
    )
    writer = RedisStatusWriter(RedisConfig(url=url, key_prefix=PREFIX), url, lambda: status)
    writer.write()
    client = redis.Redis.from_url(url)
    now = int(time.time() // COUNT_BUCKET_S) * COUNT_BUCKET_S
    pipe = client.pipeline(transaction=False)
    for minute in range(60):
        key = counts_key(PREFIX, now - minute * COUNT_BUCKET_S)
        for sid in ids:
            for n, label in enumerate(LABELS):
                pipe.hincrby(key, count_field(sid, label), 10 + n + minute)
        pipe.expire(key, 7200)
    pipe.execute()


def timed(call: Callable[[], Any], seconds: float) -> dict[str, float]:
    """Calls of ``call`` back to back for ``seconds``: p50 / p99 ms and calls per second."""
    took: list[float] = []
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        t0 = time.perf_counter()
        call()
        took.append((time.perf_counter() - t0) * 1000)
    took.sort()
    return {
        "p50_ms": round(statistics.median(took), 2),
        "p99_ms": round(took[min(len(took) - 1, int(len(took) * 0.99))], 2),
        "per_s": round(len(took) / seconds, 1),
        "n": len(took),
    }


def naive_hour(client: Any) -> dict[str, int]:
    """The baseline: each minute bucket read in its own round trip, summed per label."""
    from visionflow.schema import COUNT_BUCKET_S, counts_key

    now = int(time.time() // COUNT_BUCKET_S) * COUNT_BUCKET_S
    totals: dict[str, int] = {}
    for minute in range(60):
        for field, value in client.hgetall(counts_key(PREFIX, now - minute * 60)).items():
            label = field.decode().split("|")[1]
            totals[label] = totals.get(label, 0) + int(value)
    return totals


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--streams", type=int, default=100)
    parser.add_argument("--seconds", type=float, default=10.0, help="per measurement")
    args = parser.parse_args()

    import httpx
    import redis

    from visionflow.api.config import ApiConfig
    from visionflow.api.server import ApiServer, bind, redis_app
    from visionflow.config import parse_config
    from visionflow.redis_server import EmbeddedRedis

    with EmbeddedRedis() as server:
        fill(server.url, args.streams)
        api = ApiConfig.model_validate({"listen": "127.0.0.1:0"})
        cfg = parse_config({"redis": {"url": server.url, "key_prefix": PREFIX}})
        cfg = cfg.model_copy(update={"api": api})
        http = ApiServer(redis_app(cfg, server.url), bind(api)).start()
        base = http.url.rstrip("/")
        with httpx.Client(base_url=base, timeout=10) as web:
            while True:  # the server thread is up once it answers
                try:
                    web.get("/healthz")
                    break
                except httpx.HTTPError:
                    time.sleep(0.05)
            naive = redis.Redis.from_url(server.url)
            counts = web.get("/counts", params={"window": 3600}).json()
            assert counts["series"], counts
            rows = [
                {"what": "GET /counts?window=3600 (API, one pipelined round trip)",
                 **timed(lambda: web.get("/counts", params={"window": 3600}), args.seconds)},
                {"what": "baseline: the bare reads (60 HGETALL, no aggregation, no HTTP)",
                 **timed(lambda: naive_hour(naive), args.seconds)},
                {"what": "dashboard poll: /streams + /workers + /readyz",
                 **timed(lambda: [web.get(p) for p in ("/streams", "/workers", "/readyz")],
                         args.seconds)},
            ]  # fmt: skip
        http.stop()
    ratio = round(rows[0]["p50_ms"] / rows[1]["p50_ms"], 2)
    print(table(rows, ["what", "p50_ms", "p99_ms", "per_s", "n"]))
    print(f"/counts p50 = {ratio}x the bare Redis reads; {args.streams} streams")
    path = write_result(
        "api_poll", {"streams": args.streams, "rows": rows, "counts_vs_bare_reads_p50": ratio}
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
