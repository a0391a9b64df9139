"""Redis with ACL users and TLS (issue #9): the pipeline publishes over ``rediss://`` as a
user limited to what it needs, a consumer user reads (and dead-letters) over TLS, and what
the ACL, the login or the certificate check refuses is reported naming what is missing.

The server: :mod:`tests.integration.secure_redis` (fixture ``tls_redis``).
"""

from __future__ import annotations

import logging
import threading

import pytest
import redis

from tests.conftest import wait_until
from tests.integration.helpers import assert_books_balance, config, running
from tests.integration.secure_redis import (
    PASSWORDS,
    PREFIX,
    consumer_config,
    publish,
    results,
    sink_config,
)
from visionflow.config import RedisConfig
from visionflow.consumer import DetectionConsumer
from visionflow.errors import PublishError
from visionflow.redis_client import explain, probe
from visionflow.schema import fleet_lease_key, worker_key
from visionflow.workers.board import RedisStatusWriter
from visionflow.workers.fence import FenceBook
from visionflow.workers.sinks import RedisStreamSink
from visionflow.workers.status import PipelineStatus, WorkerStatus

pytestmark = pytest.mark.integration


# ---------------------------------------------------------------------------- the pipeline
def test_pipeline_publishes_over_tls_as_an_acl_user_and_a_consumer_reads(rtsp, tls_redis, tmp_path):
    server = tls_redis()
    camera = rtsp({"cam": "test:160x120@10"})
    secret = tmp_path / "redis-password"
    secret.write_text(PASSWORDS["vf-publisher"] + "\n")  # as secret files usually end
    url = f"rediss://vf-publisher:${{file:{secret}}}@127.0.0.1:{server.port}/0"
    cfg = config(
        [{"id": "cam", "url": camera.url("cam")}],
        url,
        PREFIX,
        redis={"tls_ca_file": server.ca, "spool_dir": str(tmp_path / "spool")},
    )
    assert cfg.redis.url == server.url("vf-publisher")  # the secret file was read
    admin = server.admin()
    with running(cfg, cfg.redis.url) as pipeline:
        wait_until(
            lambda: pipeline.status().stream("cam").published >= 20,
            40,
            lambda: f"nothing published over TLS: {pipeline.status()}",
        )
        wait_until(lambda: admin.exists(f"{PREFIX}:status:cam"), 10, "no status hash")
        assert pipeline.status().redis_connected and pipeline.status().redis_error is None
    final = pipeline.status()
    assert_books_balance(final, admin, PREFIX)
    assert admin.smembers(f"{PREFIX}:streams") == {"cam"}
    assert (
        int(admin.hget(f"{PREFIX}:status:cam", "published") or 0) == final.stream("cam").published
    )

    consumer_cfg = consumer_config(server)
    reader = DetectionConsumer(consumer_cfg)
    seen: list[int] = []
    try:
        reader.refresh_streams()
        reader.run(lambda d: seen.append(d.entry.seq), threading.Event(), 10)
    finally:
        reader.close()
    assert len(seen) == 10 and seen == sorted(seen)
    pending = admin.xpending(f"{PREFIX}:detections:cam", consumer_cfg.group)
    assert pending["pending"] == 0, pending
    admin.close()


def test_consumer_user_dead_letters_over_tls(tls_redis, tmp_path):
    """The consumer's dead-letter path (MULTI, XADD to <prefix>:deadletter:*, XACK) is within
    its ACL; entries come from a publisher sink over TLS."""
    server = tls_redis()
    publish(sink_config(server, tmp_path), server.url("vf-publisher"), 3)
    cfg = consumer_config(
        server,
        max_deliveries=1,
        claim_idle_ms=1,
        claim_interval_ms=1,
        block_ms=50,
    )
    reader = DetectionConsumer(cfg)
    stop = threading.Event()

    def always_fails(delivery: object) -> None:
        raise RuntimeError("handler down")

    def run() -> None:
        reader.run(always_fails, stop)

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    try:
        wait_until(lambda: reader.counters.dead_lettered == 3, 20, lambda: f"{reader.counters}")
    finally:
        stop.set()
        worker.join(timeout=10)
        reader.close()
    admin = server.admin()
    assert admin.xlen(f"{PREFIX}:deadletter:cam") == 3
    assert reader.counters.redis_errors == 0
    admin.close()


# ---------------------------------------------------------------------------- refusals
def test_a_fleet_publisher_writes_fenced_with_the_documented_rules(tls_redis, tmp_path):
    """The publisher's rules plus the fenced write's (README): the script is loaded and
    run, it writes while the lease holds the entry's value, refuses once it moved, and a
    fleet node's worker hashes get their expiry."""
    server = tls_redis()
    admin = redis.Redis.from_url(server.url("admin"), ssl_ca_certs=server.ca)
    lease = fleet_lease_key(PREFIX, "cam")
    admin.set(lease, "n1/1")
    book = FenceBook()
    book.set("cam", "n1/1", 0, 1)
    cfg = sink_config(server, tmp_path)
    sink = RedisStreamSink(cfg, server.url("vf-fleet"), "m", book)
    sink.start()
    try:
        sink.write(results("cam", range(5)))
        wait_until(lambda: sink.published["cam"] == 5, 15, lambda: f"{sink.last_error}")
        admin.set(lease, "n2/2")
        sink.write(results("cam", range(5, 8)))
        wait_until(lambda: sink.fenced["cam"] == 3, 15, lambda: f"{sink.last_error}")
    finally:
        sink.stop(flush_timeout=0.5)
    assert sink.write_errors == 0 and admin.xlen(f"{PREFIX}:detections:cam") == 5
    status = PipelineStatus((), (WorkerStatus(0, "ready", "cpu", "cpu", 0, 0, 0, 0, None),), True, None,
                            0, "m", 1.0)  # fmt: skip
    writer = RedisStatusWriter(cfg, server.url("vf-fleet"), lambda: status, True, "n1")
    writer.write()
    assert 0 < admin.pttl(worker_key(PREFIX, 0, "n1")) <= 5000 * cfg.status_interval_s
    writer.write(final=True)  # the node left: its worker hashes go
    assert not admin.exists(worker_key(PREFIX, 0, "n1"))
    admin.close()


def test_acl_refusals_name_the_missing_permission(tls_redis, tmp_path, caplog):
    server = tls_redis()
    caplog.set_level(logging.ERROR, logger="visionflow.sinks")
    sink = RedisStreamSink(sink_config(server, tmp_path), server.url("vf-noxadd"), "m")
    sink.start()
    try:
        sink.write(results("cam", range(5)))
        wait_until(lambda: sink.last_error, 15, "the refused XADD was never reported")
        error = sink.last_error or ""
        assert "permission denied by the Redis ACL" in error and "'xadd'" in error, error
        assert "README" in error and PASSWORDS["vf-noxadd"] not in error
        assert sink.published["cam"] == 0 and sink.pending == 5  # kept, not dropped
        assert any("'xadd'" in r.getMessage() for r in caplog.records), caplog.text
    finally:
        sink.stop(flush_timeout=0.5)

    def refusal(user: str, *command: str) -> str:
        client = redis.Redis.from_url(server.url(user), ssl_ca_certs=server.ca)
        try:
            with pytest.raises(redis.ResponseError) as info:
                client.execute_command(*command)
            return explain(info.value)
        finally:
            client.close()

    # the publisher cannot read as a group, touch another prefix, or write status as a stream
    text = refusal("vf-publisher", "XREADGROUP", "GROUP", "g", "c", "STREAMS", f"{PREFIX}:detections:cam", ">")  # fmt: skip
    assert "'xreadgroup'" in text and "permission denied" in text, text
    text = refusal("vf-publisher", "XADD", "other:detections:cam", "*", "a", "1")
    assert "permission denied" in text and "key" in text, text
    text = refusal("vf-publisher", "XADD", f"{PREFIX}:status:cam", "*", "a", "1")
    assert "permission denied" in text, text
    # the consumer cannot forge detections (XADD only to dead-letter streams) nor write status
    text = refusal("vf-consumer", "XADD", f"{PREFIX}:detections:cam", "*", "a", "1")
    assert "permission denied" in text, text
    text = refusal("vf-consumer", "HSET", f"{PREFIX}:status:cam", "a", "1")
    assert "'hset'" in text, text


def test_wrong_password_and_unknown_ca_are_explained_not_retried_elsewhere(tls_redis):
    server = tls_redis()
    tls = RedisConfig(tls_ca_file=server.ca)
    assert probe(server.url("vf-publisher"), tls) is None
    with pytest.raises(PublishError, match="refused the login") as info:
        probe(server.url("vf-publisher", "not-the-password"), tls)
    assert "not-the-password" not in str(info.value)
    with pytest.raises(PublishError, match="tls_ca_file") as info:
        probe(server.url("vf-publisher"), RedisConfig())  # the system CAs do not know ours
    assert PASSWORDS["vf-publisher"] not in str(info.value)


def test_client_certificate_required_by_the_server(tls_redis, tmp_path):
    server = tls_redis("yes")
    without = RedisConfig(tls_ca_file=server.ca)
    with pytest.raises(PublishError, match="TLS to Redis failed"):
        probe(server.url("vf-publisher"), without)
    certs = server.certs
    cfg = sink_config(
        server,
        tmp_path,
        tls_cert_file=str(certs / "client.crt"),
        tls_key_file=str(certs / "client.key"),
    )
    assert probe(server.url("vf-publisher"), cfg) is None
    publish(cfg, server.url("vf-publisher"), 4)
