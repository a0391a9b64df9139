"""The reference consumer against a real redis-server: groups, redelivery, XAUTOCLAIM after a
SIGKILL, dead letters, entries trimmed while pending, and ``visionflow consume``."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from tests.conftest import ROOT, wait_until
from visionflow.consumer import ConsumerConfig, Delivery, DetectionConsumer
from visionflow.redis_server import free_port
from visionflow.schema import detections_key

pytestmark = pytest.mark.integration

GROUP = "g"


def add_entries(
    client: redis.Redis, prefix: str, stream_id: str, n: int, first_seq: int = 0, **xadd: object
) -> list[str]:
    """XADD ``n`` entries in the visionflow schema; returns their ids."""
    ids = []
    for seq in range(first_seq, first_seq + n):
        detections = [{"label": "person", "class_id": 0, "score": 0.91, "box": [1, 2, 30, 40]}]
        fields = {
            "stream_id": stream_id,
            "seq": str(seq),
            "pts": f"{seq / 30:.6f}",
            "capture_ts": f"{1_700_000_000 + seq / 30:.6f}",
            "width": "640",
            "height": "360",
            "model_id": "demo-abc",
            "worker": "0",
            "batch_size": "1",
            "detections": json.dumps(detections),
            "latency_ms": json.dumps({"decode": 1.0, "total": 5.0}),
        }
        ids.append(str(client.xadd(detections_key(prefix, stream_id), fields, **xadd)))  # type: ignore[arg-type]
    return ids


def make(redis_server: str, prefix: str, name: str, **overrides: object) -> DetectionConsumer:
    settings: dict[str, object] = {
        "redis_url": redis_server,
        "key_prefix": prefix,
        "group": GROUP,
        "consumer": name,
        "streams": ["cam1"],
        "start_id": "0",
        "block_ms": 100,
        "claim_interval_ms": 50,
        **overrides,
    }
    return DetectionConsumer(ConsumerConfig.model_validate(settings))


def pending(client: redis.Redis, prefix: str, stream_id: str = "cam1") -> list[dict[str, object]]:
    return client.xpending_range(detections_key(prefix, stream_id), GROUP, "-", "+", 1000)  # type: ignore[return-value]


@contextlib.contextmanager
def running(
    consumer: DetectionConsumer, handler: Callable[[Delivery], None]
) -> Iterator[threading.Event]:
    stop = threading.Event()
    thread = threading.Thread(target=consumer.run, args=(handler, stop), daemon=True)
    thread.start()
    try:
        yield stop
    finally:
        stop.set()
        thread.join(timeout=10)
        assert not thread.is_alive(), "consumer did not stop"


def test_two_consumers_of_one_group_get_each_entry_once(redis_server, redis_client, key_prefix):
    ids = add_entries(redis_client, key_prefix, "cam1", 20)
    a = make(redis_server, key_prefix, "a", count=3)
    b = make(redis_server, key_prefix, "b", count=3)
    seen: dict[str, list[str]] = {"a": [], "b": []}
    for _ in range(10):
        for name, consumer in (("a", a), ("b", b)):
            for delivery in consumer.poll():
                assert delivery.stream_id == "cam1" and delivery.delivery_count == 1
                seen[name].append(delivery.entry_id)
                consumer.ack(delivery)
    got = seen["a"] + seen["b"]
    assert sorted(got) == sorted(ids) and len(set(got)) == len(got), seen
    assert seen["a"] and seen["b"], "both consumers of the group should have had a share"
    assert pending(redis_client, key_prefix) == []
    assert a.counters.acked + b.counters.acked == 20


def test_an_entry_whose_handler_raises_stays_pending_and_is_redelivered(
    redis_server, redis_client, key_prefix
):
    [entry_id] = add_entries(redis_client, key_prefix, "cam1", 1)
    consumer = make(redis_server, key_prefix, "a", claim_idle_ms=200)
    stop = threading.Event()

    def broken(delivery: Delivery) -> None:
        stop.set()
        raise RuntimeError("handler bug")

    counters = consumer.run(broken, stop)
    assert (counters.failed, counters.acked) == (1, 0)
    [row] = pending(redis_client, key_prefix)
    assert (row["message_id"], row["consumer"], row["times_delivered"]) == (entry_id, "a", 1)

    handled: list[Delivery] = []
    counters = consumer.run(handled.append, threading.Event(), max_entries=1)
    assert [(d.entry_id, d.delivery_count) for d in handled] == [(entry_id, 2)]
    assert counters.acked == 1 and counters.claimed == 1
    assert pending(redis_client, key_prefix) == []


VICTIM = """
import sys, threading
from visionflow.consumer import ConsumerConfig, DetectionConsumer
cfg = ConsumerConfig(redis_url=sys.argv[1], key_prefix=sys.argv[2], group="g", consumer="victim",
                     streams=["cam1"], start_id="0", count=5, block_ms=100)
# the handler never returns: every entry read stays pending until the process dies
DetectionConsumer(cfg).run(lambda d: threading.Event().wait(), threading.Event())
"""


def test_entries_of_a_sigkilled_consumer_are_reclaimed_by_another(
    redis_server, redis_client, key_prefix
):
    ids = add_entries(redis_client, key_prefix, "cam1", 5)
    victim = subprocess.Popen(
        [sys.executable, "-c", VICTIM, redis_server, key_prefix], cwd=ROOT, env=os.environ.copy()
    )

    def victim_holds_all() -> bool:
        try:
            return [r["consumer"] for r in pending(redis_client, key_prefix)] == ["victim"] * 5
        except redis.ResponseError:  # NOGROUP: the victim has not created the group yet
            return False

    try:
        wait_until(
            victim_holds_all,
            30,
            lambda: f"victim never held all 5 entries: {pending(redis_client, key_prefix)}",
        )
    finally:
        victim.send_signal(signal.SIGKILL)
        victim.wait(timeout=10)
    assert victim.returncode == -signal.SIGKILL

    survivor = make(redis_server, key_prefix, "survivor", claim_idle_ms=300)
    handled: list[Delivery] = []
    counters = survivor.run(handled.append, threading.Event(), max_entries=5)
    assert sorted(d.entry_id for d in handled) == sorted(ids)
    assert {d.delivery_count for d in handled} == {2}
    assert counters.claimed == 5 and counters.acked == 5
    assert pending(redis_client, key_prefix) == []


def test_an_entry_failing_max_deliveries_times_is_dead_lettered_and_acked(
    redis_server, redis_client, key_prefix
):
    [entry_id] = add_entries(redis_client, key_prefix, "cam1", 1)
    consumer = make(redis_server, key_prefix, "a", claim_idle_ms=50, max_deliveries=3)
    calls: list[int] = []

    def always_fails(delivery: Delivery) -> None:
        calls.append(delivery.delivery_count)
        raise ValueError("poison")

    with running(consumer, always_fails):
        wait_until(lambda: consumer.counters.dead_lettered == 1, 30, "never dead-lettered")
    assert calls == [1, 2, 3]
    assert pending(redis_client, key_prefix) == []
    [(_, fields)] = redis_client.xrange(f"{key_prefix}:deadletter:cam1")  # type: ignore[misc]
    assert fields["dl_id"] == entry_id
    assert fields["dl_stream"] == detections_key(key_prefix, "cam1")
    assert fields["dl_deliveries"] == "4" and fields["dl_group"] == GROUP
    assert fields["seq"] == "0" and fields["model_id"] == "demo-abc"
    assert consumer.counters.failed == 3 and consumer.counters.acked == 0


def test_pending_entries_trimmed_by_maxlen_are_counted_not_fatal(
    redis_server, redis_client, key_prefix
):
    old = add_entries(redis_client, key_prefix, "cam1", 5)
    holder = make(redis_server, key_prefix, "holder", count=5)
    assert [d.entry_id for d in holder.poll()] == old  # read, never acknowledged
    # the producer goes on writing with MAXLEN: the pending entries are trimmed away
    new = add_entries(redis_client, key_prefix, "cam1", 3, first_seq=5, maxlen=3, approximate=False)
    assert [e[0] for e in redis_client.xrange(detections_key(key_prefix, "cam1"))] == new  # type: ignore[index]
    assert len(pending(redis_client, key_prefix)) == 5

    other = make(redis_server, key_prefix, "other", claim_idle_ms=1, count=2)
    handled: list[Delivery] = []
    with running(other, handled.append):
        wait_until(
            lambda: len(handled) == 3 and other.counters.trimmed_while_pending == 5,
            30,
            lambda: f"handled {len(handled)}, counters {other.counters}",
        )
    assert [d.entry.seq for d in handled] == [5, 6, 7]
    assert other.counters.claimed == 0 and other.counters.acked == 3
    assert pending(redis_client, key_prefix) == []


def test_a_restarted_consumer_drops_its_own_trimmed_pending_entries(
    redis_server, redis_client, key_prefix
):
    old = add_entries(redis_client, key_prefix, "cam1", 4)
    assert len(make(redis_server, key_prefix, "same", count=4).poll()) == 4
    kept = add_entries(
        redis_client, key_prefix, "cam1", 2, first_seq=4, maxlen=2, approximate=False
    )
    # the same consumer name after a restart: history read, no claim (idle threshold not met)
    again = make(redis_server, key_prefix, "same", claim_idle_ms=60_000)
    handled: list[Delivery] = []
    counters = again.run(handled.append, threading.Event(), max_entries=2)
    assert [d.entry_id for d in handled] == kept and old[0] not in {d.entry_id for d in handled}
    assert counters.trimmed_while_pending == 4
    assert pending(redis_client, key_prefix) == []


def visionflow(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "visionflow", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
    )


def start_consume(*args: str, **popen: Any) -> subprocess.Popen[str]:
    """`visionflow consume ARGS` running in the background, pipes on stdout and stderr."""
    return subprocess.Popen(
        [sys.executable, "-m", "visionflow", "consume", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        **popen,
    )


def write_config(path: Path, url: str, prefix: str) -> Path:
    path.write_text(
        f"redis:\n  url: {url}\n  key_prefix: {prefix}\n"
        "streams:\n  - id: cam1\n    url: rtsp://cam/x\n"
    )
    return path


def test_cli_consume_prints_entries_and_exits_after_max(
    tmp_path, redis_server, redis_client, key_prefix
):
    ids = add_entries(redis_client, key_prefix, "cam1", 5)
    cfg = write_config(tmp_path / "site.yaml", redis_server, key_prefix)
    result = visionflow("consume", "-c", str(cfg), "--group", GROUP, "--from-start", "--max", "3")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 3, result.stdout
    for seq, (line, entry_id) in enumerate(zip(lines, ids, strict=False)):
        assert line.startswith(f"cam1 seq={seq} 2023-11-14T22:13:"), line
        assert f"id={entry_id}" in line and "n=1 [person 0.91]" in line, line
    assert "acked 3" in result.stderr
    assert pending(redis_client, key_prefix) == []
    [group] = redis_client.xinfo_groups(detections_key(key_prefix, "cam1"))
    assert group["last-delivered-id"] == ids[2], "read no more than --max entries"


def test_cli_consume_never_prints_the_redis_password(tmp_path, key_prefix):
    url = f"redis://user:hunter2@127.0.0.1:{free_port()}/0"
    cfg = write_config(tmp_path / "site.yaml", url, key_prefix)
    result = visionflow("consume", "-c", str(cfg), "--max", "1")
    assert result.returncode == 1, result
    assert "hunter2" not in result.stdout + result.stderr
    assert "user:***@127.0.0.1" in result.stderr


def test_cli_consume_stops_cleanly_when_stdout_closes(
    tmp_path, redis_server, redis_client, key_prefix
):
    add_entries(redis_client, key_prefix, "cam1", 1)
    cfg = write_config(tmp_path / "site.yaml", redis_server, key_prefix)
    proc = start_consume("-c", str(cfg), "--group", GROUP, "--from-start")
    assert proc.stdout is not None and proc.stdout.readline().startswith("cam1 seq=0 ")
    proc.stdout.close()  # like `visionflow consume | head -1`
    # several in one round: none after the one that could not be printed may be acked
    unprinted = add_entries(redis_client, key_prefix, "cam1", 3, first_seq=1)
    try:
        _, stderr = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 0, stderr
    assert "Traceback" not in stderr and "acked 1, failed 1" in stderr, stderr
    # "acked 1" above: none of the three was acknowledged; the first one failed and is pending
    assert [r["message_id"] for r in pending(redis_client, key_prefix)][:1] == unprinted[:1]


def test_cli_consume_exits_cleanly_on_ctrl_c(tmp_path, redis_server, redis_client, key_prefix):
    cfg = write_config(tmp_path / "site.yaml", redis_server, key_prefix)
    proc = start_consume(
        "-c",
        str(cfg),
        "--group",
        GROUP,
        "--consumer",
        "cli",
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),  # as a terminal would
    )
    key = detections_key(key_prefix, "cam1")

    def reading() -> bool:
        try:
            return any(c["name"] == "cli" for c in redis_client.xinfo_consumers(key, GROUP))
        except redis.ResponseError:  # no group yet
            return False

    try:
        wait_until(reading, 30, "consume never started reading")
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    assert "Traceback" not in err and "consumed 0, acked 0" in err and out == ""


def test_a_consumer_rides_out_a_redis_restart(killable_redis, key_prefix):
    client = redis.Redis.from_url(killable_redis.url, decode_responses=True)
    add_entries(client, key_prefix, "cam1", 2)
    consumer = make(killable_redis.url, key_prefix, "a", socket_timeout_s=1)
    handled: list[Delivery] = []
    with running(consumer, handled.append):
        # the XACKs, not the handler calls: an entry handled but not yet acked when Redis
        # dies is never acked (the restarted server is empty), so `acked` would end one short
        wait_until(lambda: consumer.counters.acked == 2, 30, "first entries never acked")
        killable_redis.kill()
        wait_until(lambda: consumer.counters.redis_errors > 0, 30, "outage never noticed")
        killable_redis.start()  # empty: stream and group are gone; the group (at 0) is made again
        [later] = add_entries(client, key_prefix, "cam1", 1, first_seq=2)
        wait_until(
            lambda: len(handled) == 3,
            30,
            lambda: f"no entry after the restart: {consumer.counters}",
        )
    assert handled[-1].entry_id == later and consumer.counters.acked == 3
    client.close()
