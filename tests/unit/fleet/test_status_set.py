"""Fleet nodes share ``<prefix>:streams``: each lists its own streams, none erases another's."""

from __future__ import annotations

from tests.unit.api.conftest import pipeline_status, stream_status
from visionflow.config import RedisConfig
from visionflow.schema import status_key, streams_key
from visionflow.workers.board import RedisStatusWriter


def shared_writer(config: RedisConfig, mine: dict[str, list[str]], node: str) -> RedisStatusWriter:
    """A fleet node's writer: its streams are ``mine[node]`` at each write."""
    return RedisStatusWriter(
        config,
        config.url,
        lambda: pipeline_status(tuple(stream_status(s) for s in mine[node])),
        shared=True,
    )


def test_shared_writers_keep_each_others_streams(redis_server, redis_client, key_prefix):
    config = RedisConfig(url=redis_server, key_prefix=key_prefix)
    mine = {"a": ["cam1", "cam2"], "b": ["cam3"]}
    a, b = shared_writer(config, mine, "a"), shared_writer(config, mine, "b")
    a.write()
    b.write()
    assert redis_client.smembers(streams_key(key_prefix)) == {"cam1", "cam2", "cam3"}
    mine["a"] = ["cam1"]  # cam2 handed over to b
    mine["b"] = ["cam3", "cam2"]
    b.write()
    a.write()
    assert redis_client.smembers(streams_key(key_prefix)) == {"cam1", "cam2", "cam3"}
    mine["b"] = ["cam2"]  # cam3 unregistered: the fleet node unlists it, not the writer
    b.write()
    assert redis_client.smembers(streams_key(key_prefix)) == {"cam1", "cam2", "cam3"}
    alone = RedisStatusWriter(config, redis_server, lambda: pipeline_status((stream_status("x"),)))
    alone.write()  # a single pipeline owns the set
    assert redis_client.smembers(streams_key(key_prefix)) == {"x"}


def test_a_shared_writer_leaves_the_status_hash_of_a_stream_it_gave_up(
    redis_server, redis_client, key_prefix
):
    config = RedisConfig(url=redis_server, key_prefix=key_prefix)
    mine = {"a": ["cam1", "cam2"], "b": []}
    a, b = shared_writer(config, mine, "a"), shared_writer(config, mine, "b")
    a.write()
    mine["a"], mine["b"] = ["cam1"], ["cam2"]  # cam2 handed over: b writes its hash first
    b.write()
    a.write()  # the old owner's next write must not delete b's hash
    assert redis_client.exists(status_key(key_prefix, "cam2")) == 1
    assert redis_client.exists(status_key(key_prefix, "cam1")) == 1
    alone = RedisStatusWriter(config, redis_server, lambda: pipeline_status((stream_status("x"),)))
    alone.write()
    alone.snapshot = lambda: pipeline_status(())
    alone.write()  # a single pipeline deletes the hash of a stream it removed
    assert redis_client.exists(status_key(key_prefix, "x")) == 0
