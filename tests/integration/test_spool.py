"""At-least-once delivery to Redis: the sink's disk spool against real, killed Redis servers
and a killed sink process."""

from __future__ import annotations

import itertools
import json
import shutil
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from tests.conftest import ROOT, wait_until
from tests.tcp_proxy import TcpProxy
from visionflow.config import RedisConfig
from visionflow.pipeline.frames import FrameRef, FrameResult
from visionflow.pipeline.letterbox import letterbox_geometry
from visionflow.redis_server import free_port
from visionflow.schema import detections_key, fleet_lease_key, parse_entry, parse_stream_id
from visionflow.workers.fence import FenceBook
from visionflow.workers.sinks import RedisStreamSink
from visionflow.workers.spool import Spool

pytestmark = pytest.mark.integration
LB = letterbox_geometry(640, 480, 320, 320)
T0 = 1_700_000_000.0


def results(stream: str, seqs: range) -> list[FrameResult]:
    return [
        FrameResult(
            FrameRef(stream, s, None, T0 + s * 0.033, 1.0, "p", 0, LB), (), 1.0, 1.0, 1, 0, T0
        )
        for s in seqs
    ]


def config(url: str, prefix: str, spool_dir: Path, **kw: object) -> RedisConfig:
    base: dict[str, object] = {
        "url": url,
        "key_prefix": prefix,
        "socket_timeout_s": 0.3,
        "spool_dir": str(spool_dir),
        "spool_after_s": 0.2,
        "pipeline_max_entries": 16,
    }
    base.update(kw)
    return RedisConfig(**base)  # type: ignore[arg-type]


def stored(url: str, prefix: str, stream: str) -> list[tuple[str, int]]:
    client = redis.Redis.from_url(url, decode_responses=True)
    try:
        return [
            (i, parse_entry(i, f).seq) for i, f in client.xrange(detections_key(prefix, stream))
        ]
    finally:
        client.close()


def assert_in_order_once(rows: list[tuple[str, int]], expected: list[int]) -> None:
    ids = [parse_stream_id(i) for i, _ in rows]
    seqs = [s for _, s in rows]
    assert all(a < b for a, b in itertools.pairwise(ids)), "ids not increasing"
    assert seqs == expected, f"got {len(seqs)} entries, {len(set(seqs))} distinct"
    assert [i[1] for i in ids] == seqs  # id <capture_ms>-<seq>


def total(counter: object) -> int:
    return sum(counter.values())  # type: ignore[attr-defined]


# ---------------------------------------------------------------------------- (a)
def test_redis_killed_mid_run_results_spooled_and_replayed_in_order(
    killable_redis, key_prefix, tmp_path
):
    url = killable_redis.url
    sink = RedisStreamSink(config(url, key_prefix, tmp_path / "spool"), url, "m1")
    sink.start()
    try:
        sink.write(results("a", range(0, 50)) + results("b", range(0, 50)))
        wait_until(lambda: total(sink.published) == 100, 10, lambda: f"{sink.published}")
        killable_redis.kill()  # Redis SIGKILLed (no persistence: what it held is gone)
        written = 100
        for start in range(50, 250, 25):  # results keep coming during the outage
            sink.write(
                results("a", range(start, start + 25)) + results("b", range(start, start + 25))
            )
            written += 50
            wait_until(
                lambda n=written: total(sink.spooled) + 100 >= n - sink.config.pipeline_max_entries,
                10,
                lambda: f"spooled {sink.spooled}, pending {sink.pending}",
                interval=0.02,
            )
        assert not sink.connected
        wait_until(lambda: total(sink.spooled) == 400, 10, lambda: f"spooled {sink.spooled}")
        assert sink.spool is not None and sink.spool.pending == 400
        killable_redis.start()
        sink.write(results("a", range(250, 260)) + results("b", range(250, 260)))
        wait_until(lambda: total(sink.published) == 520, 20, lambda: f"published {sink.published}")
    finally:
        sink.stop()
    # the 400 written during the outage went through the spool (the last 20 may have: they
    # came while the writer was still backing off)
    assert sink.spooled == sink.replayed and min(sink.replayed.values()) >= 200
    assert total(sink.dropped) == 0 and total(sink.duplicates_skipped) == 0
    for stream in ("a", "b"):
        # everything written after Redis lost its memory, once, in order
        assert_in_order_once(stored(url, key_prefix, stream), list(range(50, 260)))
    assert not (tmp_path / "spool").exists()  # empty spool removed on stop


# ---------------------------------------------------------------------------- (b)
SINK_CHILD = textwrap.dedent(
    """
    import sys, time
    sys.path.insert(0, {root!r})
    from tests.integration.test_spool import config, results
    from visionflow.workers.sinks import RedisStreamSink
    from pathlib import Path
    sink = RedisStreamSink(
        config({url!r}, {prefix!r}, Path({spool!r})), {url!r}, "m1", run_id={run!r}
    )
    sink.start()
    sink.write(results("a", range(120)) + results("b", range(80)))
    while sum(sink.spooled.values()) < 200:
        time.sleep(0.02)
    print("SPOOLED", flush=True)
    time.sleep(3600)
    """
)


@pytest.mark.parametrize("same_run", [False, True])
def test_sink_killed_while_redis_down_next_sink_replays_its_spool(
    killable_redis, key_prefix, tmp_path, same_run
):
    """The next sink replays a killed one's spool; a sink of the same pipeline run (an
    output process restarted) counts those entries as its own published ones, a sink of
    another run (the pipeline restarted) as replayed only."""
    url, spool_dir = killable_redis.url, tmp_path / "spool"
    killable_redis.kill()
    code = SINK_CHILD.format(
        root=str(ROOT), url=url, prefix=key_prefix, spool=str(spool_dir), run="run-1"
    )
    child = subprocess.Popen(
        [sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, cwd=ROOT
    )
    try:
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "SPOOLED"
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    left = Spool(spool_dir, max_bytes=1 << 30)
    assert left.pending == 200
    left.close()

    killable_redis.start()
    run = "run-1" if same_run else "run-2"
    sink = RedisStreamSink(config(url, key_prefix, spool_dir), url, "m1", run_id=run)
    sink.start()
    own = 120 if same_run else 0
    try:
        sink.write(results("a", range(120, 130)))
        wait_until(
            lambda: sink.replayed == {"a": 120, "b": 80} and sink.published["a"] == 10 + own,
            20,
            lambda: f"replayed {sink.replayed} published {sink.published}",
        )
    finally:
        sink.stop()
    # another run's entries are replayed, not 'published'; the same run's are its own
    assert total(sink.published) == 10 + (200 if same_run else 0)
    assert_in_order_once(stored(url, key_prefix, "a"), list(range(130)))
    assert_in_order_once(stored(url, key_prefix, "b"), list(range(80)))


# ---------------------------------------------------------------------------- (c)
def test_replay_over_entries_redis_already_holds_adds_no_duplicates(
    killable_redis, key_prefix, tmp_path
):
    url, spool_dir = killable_redis.url, tmp_path / "spool"
    killable_redis.kill()
    first = RedisStreamSink(config(url, key_prefix, spool_dir), url, "m1")
    first.start()
    first.write(results("a", range(50)))
    wait_until(lambda: total(first.spooled) == 50, 10, lambda: f"spooled {first.spooled}")
    first.stop()  # the spool keeps them
    killable_redis.start()
    # a sink that wrote the first 30 and died before moving the cursor: Redis holds them
    client = redis.Redis.from_url(url, decode_responses=True)
    left = Spool(spool_dir, max_bytes=1 << 30)
    for record in left.peek(30):
        body = json.loads(record.data)
        client.xadd(detections_key(key_prefix, record.key), body["f"], id=body["id"])
    left.close()
    second = RedisStreamSink(config(url, key_prefix, spool_dir), url, "m1")
    second.start()
    try:
        wait_until(lambda: second.replayed["a"] == 50, 20, lambda: f"{second.replayed}")
    finally:
        second.stop()
    assert second.duplicates_skipped["a"] == 30 and total(second.reassigned) == 0
    assert_in_order_once(stored(url, key_prefix, "a"), list(range(50)))
    client.close()


def test_new_ids_follow_what_redis_holds_even_when_the_clock_is_behind(
    redis_server, redis_client, key_prefix, tmp_path
):
    key = detections_key(key_prefix, "a")
    later = int((T0 + 3600) * 1000)
    redis_client.xadd(key, {"seq": "999", "note": "an earlier run, clock ahead"}, id=f"{later}-999")
    sink = RedisStreamSink(config(redis_server, key_prefix, tmp_path / "s"), redis_server, "m1")
    sink.start()
    try:
        sink.write(results("a", range(20)))
        wait_until(lambda: sink.published["a"] == 20, 10, lambda: f"{sink.published}")
    finally:
        sink.stop()
    ids = [parse_stream_id(i) for i, _ in redis_client.xrange(key)][1:]
    assert len(ids) == 20 and ids[0] > (later, 999)
    assert all(a < b for a, b in itertools.pairwise(ids))
    assert [i[1] for i in ids] == list(range(20))
    assert total(sink.reassigned) == 0 and total(sink.duplicates_skipped) == 0


def test_a_partitioned_fleet_sink_drops_its_spool_as_fenced_once_the_lease_moved(
    redis_server, redis_client, key_prefix, tmp_path
):
    """A fleet node cut off from Redis past its lease: another node takes the stream and
    writes; when the link comes back the cut-off sink's buffer and spool are refused by the
    fence (dropped, counted ``fenced``, the spool emptied), never written after the new
    owner's entries under fresh ids."""
    lease = fleet_lease_key(key_prefix, "a")
    redis_client.set(lease, "n1/1")
    old_book, new_book = FenceBook(), FenceBook()
    old_book.set("a", "n1/1", 0, 1)
    new_book.set("a", "n2/2", 100, 1)
    with TcpProxy(int(redis_server.rsplit(":", 1)[1].split("/")[0])) as proxy:
        url = f"redis://127.0.0.1:{proxy.port}/0"
        old = RedisStreamSink(config(url, key_prefix, tmp_path / "old"), url, "m1", old_book)
        old.start()
        try:
            old.write(results("a", range(0, 20)))
            wait_until(lambda: old.published["a"] == 20, 10, lambda: f"{old.published}")
            proxy.stall()  # the link goes silent (no reset)
            old.write(results("a", range(20, 60)))
            wait_until(lambda: old.spooled["a"] == 40, 10, lambda: f"spooled {old.spooled}")
            redis_client.set(lease, "n2/2")  # the lease expired; another node took it
            new = RedisStreamSink(
                config(redis_server, key_prefix, tmp_path / "new"), redis_server, "m1", new_book
            )
            new.start()
            new.write(results("a", range(100, 110)))
            wait_until(lambda: new.published["a"] == 10, 10, lambda: f"{new.published}")
            new.stop()
            proxy.passthrough()
            wait_until(
                lambda: old.fenced["a"] == 40 and old.pending == 0,
                20,
                lambda: f"fenced {old.fenced} pending {old.pending} error {old.last_error}",
            )
        finally:
            old.stop()
    assert [seq for _, seq in stored(redis_server, key_prefix, "a")] == [
        *range(20),
        *range(100, 110),
    ]
    assert old.fenced_drops() == [("a", 1, 40)] and total(old.reassigned) == 0
    # every result handed to the sink accounted once
    assert old.accepted == old.published["a"] + old.dropped_fenced[("a", 1)] == 60
    assert total(old.replayed) == 0 and not (tmp_path / "old").exists()  # spool emptied


# ---------------------------------------------------------------------------- (d)
class DurableRedis:
    """redis-server with ``appendonly yes`` and ``appendfsync always`` in one directory, so a
    SIGKILLed server comes back with what it acknowledged."""

    def __init__(self, directory: Path) -> None:
        self.directory, self.port = directory, free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.skip("redis-server not installed")
        self.process = subprocess.Popen(
            [
                binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
                "--dir",
                str(self.directory),
                "--protected-mode",
                "no",
                "--loglevel",
                "warning",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        client = redis.Redis(port=self.port, socket_connect_timeout=0.2)

        def up() -> bool:
            try:
                return bool(client.ping())
            except redis.RedisError:
                return False

        wait_until(up, 10, "durable redis did not start", interval=0.05)
        client.close()

    def kill(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait()
            self.process = None


@pytest.fixture
def durable_redis(tmp_path: Path) -> Iterator[DurableRedis]:
    (tmp_path / "redis").mkdir()
    server = DurableRedis(tmp_path / "redis")
    server.start()
    yield server
    server.kill()


def test_appendfsync_always_redis_killed_loses_no_acknowledged_entry(durable_redis, tmp_path):
    url, prefix = durable_redis.url, "vfdurable"
    sink = RedisStreamSink(config(url, prefix, tmp_path / "spool"), url, "m1")
    sink.start()
    try:
        for start in range(0, 300, 30):
            sink.write(results("a", range(start, start + 30)))
        wait_until(lambda: sink.published["a"] == 300, 10, lambda: f"{sink.published}")
        durable_redis.kill()  # right after the last reply: everything acknowledged
        sink.write(results("a", range(300, 340)))  # and more while it is down
        wait_until(lambda: not sink.connected, 10, "outage not noticed")
        durable_redis.start()
        # the sink may already be writing 300.. again: the 300 acknowledged ones come first
        assert [s for _, s in stored(url, prefix, "a")][:300] == list(range(300))  # 0 lost
        wait_until(lambda: sink.published["a"] == 340, 20, lambda: f"{sink.published}")
    finally:
        sink.stop()
    assert_in_order_once(stored(url, prefix, "a"), list(range(340)))
    assert total(sink.duplicates_skipped) == 0 and total(sink.dropped) == 0
