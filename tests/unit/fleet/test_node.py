"""FleetNode on a real Redis, driving the real reconciler; the pipeline behind it is a
recording stand-in (the seam: which streams run, their seq, in-flight frames)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import pytest
import redis

from tests.conftest import KillableRedis, wait_until
from tests.unit.api.conftest import pipeline_status, stream_status
from visionflow.config import AppConfig
from visionflow.fleet.config import FleetConfig
from visionflow.fleet.leases import LeaseBook
from visionflow.fleet.node import FleetNode, NodeState, OwnedTarget, fleet_client
from visionflow.fleet.plan import Moves
from visionflow.fleet.view import fleet_view
from visionflow.schema import (
    fleet_drain_key,
    fleet_handovers_key,
    fleet_lease_key,
    status_key,
    streams_key,
)
from visionflow.streams.config import StreamConfig
from visionflow.streams.registry import StreamRegistry
from visionflow.streams.state import StreamState
from visionflow.workers.reconcile import Reconciler
from visionflow.workers.status import PipelineStatus

CAMS = [StreamConfig(id=f"cam{i}", url=f"rtsp://10.0.0.{i}/live") for i in range(4)]


class RecordingPipeline:
    """Runs nothing: keeps the streams it was given, counts seq up from first_seq."""

    def __init__(self) -> None:
        self.running: dict[str, StreamConfig] = {}
        self.first: dict[str, int] = {}
        self.fences: dict[str, list[tuple[str, int]]] = {}  # stream -> (lease value, first seq)

    def streams(self) -> dict[str, StreamConfig]:
        return dict(self.running)

    def add_stream(self, stream: StreamConfig, first_seq: int = 0) -> None:
        self.running[stream.id], self.first[stream.id] = stream, first_seq

    def update_stream(self, stream: StreamConfig) -> None:
        self.running[stream.id] = stream

    def remove_stream(self, stream_id: str) -> None:
        del self.running[stream_id]

    def set_fence(self, stream_id: str, token: str, first_seq: int) -> None:
        self.fences.setdefault(stream_id, []).append((token, first_seq))

    def fence(self, stream_id: str) -> str | None:
        return self.fences[stream_id][-1][0] if stream_id in self.fences else None

    def last_seq(self, stream_id: str) -> int:
        return self.first.get(stream_id, 0) + 9 if stream_id in self.running else -1

    def status(self) -> PipelineStatus:
        states = {True: StreamState.STREAMING, False: StreamState.DISABLED}
        return pipeline_status(
            tuple(stream_status(s.id, state=states[s.enabled], in_flight=0)
                  for s in self.running.values())
        )  # fmt: skip


class StuckPipeline(RecordingPipeline):
    """A pipeline whose removal of the streams in ``stuck`` fails."""

    def __init__(self) -> None:
        super().__init__()
        self.stuck: set[str] = set()

    def remove_stream(self, stream_id: str) -> None:
        if stream_id in self.stuck:
            raise RuntimeError(f"{stream_id} cannot be removed now")
        super().remove_stream(stream_id)


def make_node(
    url: str, prefix: str, node_id: str, pipeline: RecordingPipeline | None = None,
    **fleet: object,
) -> FleetNode:  # fmt: skip
    config = FleetConfig(node_id=node_id, **{"lease_ttl_s": 2.0, **fleet})  # type: ignore[arg-type]
    app = AppConfig(streams=CAMS)
    registry = StreamRegistry(redis.Redis.from_url(url), prefix, CAMS)
    pipeline = pipeline or RecordingPipeline()
    node = FleetNode(config, fleet_client(url, config), prefix, registry, pipeline)
    reconciler = Reconciler(OwnedTarget(pipeline, node), registry, app, scope=node.scope)
    node.apply = reconciler.rescope
    return node


@pytest.fixture
def nodes(redis_server: str, key_prefix: str) -> Iterator[list[FleetNode]]:
    made: list[FleetNode] = []
    yield made
    for node in made:
        node.stop_thread()


def running(node: FleetNode) -> set[str]:
    pipeline = node.pipeline
    assert isinstance(pipeline, RecordingPipeline)
    return {sid for sid, s in pipeline.running.items() if s.enabled}


def test_two_nodes_split_the_streams_then_one_drains_to_the_other(
    nodes, redis_server, redis_client, key_prefix
):
    a = make_node(redis_server, key_prefix, "a")
    b = make_node(redis_server, key_prefix, "b")
    nodes += [a, b]
    redis_client.sadd(streams_key(key_prefix), "unregistered-cam")  # listed by a gone node
    redis_client.hset(status_key(key_prefix, "unregistered-cam"), "state", "streaming")
    a.start()
    b.start()
    wait_until(lambda: len(running(a)) == 2 and len(running(b)) == 2, 20,
               lambda: f"a {running(a)} b {running(b)}")  # fmt: skip
    assert running(a).isdisjoint(running(b))
    assert "unregistered-cam" not in redis_client.smembers(streams_key(key_prefix))
    assert not redis_client.exists(status_key(key_prefix, "unregistered-cam"))
    view = fleet_view(redis_client, key_prefix, [c.id for c in CAMS])
    assert [(n["node_id"], n["alive"], len(n["streams"])) for n in view["nodes"]] == [
        ("a", True, 2),
        ("b", True, 2),
    ]
    assert view["unassigned"] == []
    given = running(b)
    b.drain(timeout=5)
    assert running(b) == set()
    wait_until(lambda: running(a) == {c.id for c in CAMS}, 10, lambda: f"a {running(a)}")
    moves = [f for _, f in redis_client.xrange(fleet_handovers_key(key_prefix))]
    released = [m for m in moves if m["from_node"] == "b"]
    assert {m["stream_id"] for m in released} == given
    assert all(m["cause"] == "released" and m["to_node"] == "a" for m in released)
    pipeline = a.pipeline
    assert isinstance(pipeline, RecordingPipeline)
    for m in released:  # a goes on above what b reached (b's last seq: first + 9)
        assert pipeline.first[m["stream_id"]] == int(m["first_seq"]) >= 10
    for sid in running(a):  # each stream added with its lease value: its write fence
        token = redis_client.get(fleet_lease_key(key_prefix, sid))
        assert token is not None and token.startswith("a/")
        assert pipeline.fences[sid][-1] == (token, pipeline.first[sid])
    view = fleet_view(redis_client, key_prefix)
    assert {n["node_id"]: n["alive"] for n in view["nodes"]} == {"a": True, "b": False}


def test_redis_unreachable_stops_streams_before_their_leases_can_expire(
    nodes, killable_redis: KillableRedis
):
    prefix = "vfnode"
    node = make_node(killable_redis.url, prefix, "a")
    nodes.append(node)
    node.start()
    wait_until(lambda: len(running(node)) == 4, 20, lambda: f"{running(node)}")
    killable_redis.kill()
    expiry = min(lease.valid_until for lease in node.leases.values())  # the first to go
    wait_until(lambda: not running(node), 10, lambda: f"still running {running(node)}")
    stopped = time.monotonic()
    assert stopped < expiry, f"stopped {stopped - expiry:.2f}s after a lease could expire"


def test_a_drain_request_hands_everything_over_and_withdrawing_it_rebalances(
    nodes, redis_server, redis_client, key_prefix
):
    a = make_node(redis_server, key_prefix, "a")
    b = make_node(redis_server, key_prefix, "b")
    nodes += [a, b]
    a.start()
    b.start()
    wait_until(lambda: len(running(a)) == 2 and len(running(b)) == 2, 20,
               lambda: f"a {running(a)} b {running(b)}")  # fmt: skip
    redis_client.set(fleet_drain_key(key_prefix, "b"), "1")  # what POST .../drain writes
    wait_until(lambda: len(running(a)) == 4 and not running(b), 20,
               lambda: f"a {running(a)} b {running(b)}")  # fmt: skip
    assert b.state == NodeState.DRAINING and b.thread.is_alive()
    redis_client.delete(fleet_drain_key(key_prefix, "b"))
    wait_until(lambda: len(running(a)) == 2 and len(running(b)) == 2, 30,
               lambda: f"a {running(a)} b {running(b)}")  # fmt: skip
    assert b.state == NodeState.RUNNING


def test_an_unregistered_stream_is_stopped_and_its_lease_given_back(
    nodes, redis_server, redis_client, key_prefix
):
    a = make_node(redis_server, key_prefix, "a")
    nodes.append(a)
    a.start()
    wait_until(lambda: len(running(a)) == 4, 20, lambda: f"a {running(a)}")
    a.registry.remove("cam1")  # through the registry, as DELETE /streams/cam1 does
    wait_until(lambda: "cam1" not in a.pipeline.streams(), 10, "cam1 still in the pipeline")
    wait_until(lambda: a.book.owners(["cam1"]) == {"cam1": None}, 10, "cam1's lease still held")
    assert running(a) == {"cam0", "cam2", "cam3"}


def ticked(node: FleetNode, predicate: Callable[[], object]) -> object:
    """One tick of the node (no thread: each step seen in order), then ``predicate``."""
    if node.state is NodeState.STARTING:
        node.state = NodeState.RUNNING  # what start() does, without the thread
    node.tick()
    return predicate()


ALL = {c.id for c in CAMS}


def test_a_failure_right_after_taking_a_lease_gives_it_back(redis_server, redis_client, key_prefix):
    redis_client.set(fleet_handovers_key(key_prefix), "not a stream")  # XADD fails: WRONGTYPE
    a = make_node(redis_server, key_prefix, "a")
    wait_until(lambda: ticked(a, lambda: "WRONGTYPE" in (a.last_error or "")), 20,
               lambda: f"no failed take: error {a.last_error}, leases {sorted(a.leases)}")  # fmt: skip
    assert a.leases == {} and running(a) == set()
    assert set(a.book.owners(sorted(ALL)).values()) == {None}, "a lease held, nothing read"
    redis_client.delete(fleet_handovers_key(key_prefix))
    wait_until(lambda: ticked(a, lambda: running(a) == ALL), 20, lambda: f"a {running(a)}")


def test_a_pipeline_that_drifted_from_the_leases_is_brought_back(redis_server, key_prefix, caplog):
    a = make_node(redis_server, key_prefix, "a")
    wait_until(lambda: ticked(a, lambda: running(a) == ALL), 20, lambda: f"a {running(a)}")
    a.pipeline.remove_stream("cam0")  # as if an apply had failed or been skipped
    assert ticked(a, lambda: running(a) == ALL), f"a {running(a)}"
    assert "pipeline differs from the leases (missing: cam0)" in caplog.text


def test_a_failed_attempt_costs_no_acquire_budget(redis_server, key_prefix):
    other = LeaseBook(fleet_client(redis_server, FleetConfig()), key_prefix, "z", 30.0)
    assert other.try_acquire("cam0") is not None
    a = make_node(redis_server, key_prefix, "a")
    before = a._acquire.tokens
    a._apply_moves(Moves(acquire=("cam0",)), CAMS, time.monotonic())
    assert a.leases == {} and a._acquire.tokens == before


def test_a_lease_is_released_only_once_its_stream_left_the_pipeline(
    redis_server, redis_client, key_prefix
):
    pipeline = StuckPipeline()
    a = make_node(redis_server, key_prefix, "a", pipeline)
    wait_until(lambda: ticked(a, lambda: running(a) == ALL), 20, lambda: f"a {running(a)}")
    pipeline.stuck.add("cam0")
    redis_client.set(fleet_drain_key(key_prefix, "a"), "1")
    wait_until(lambda: ticked(a, lambda: set(pipeline.running) == {"cam0"}), 20,
               lambda: f"a still has {sorted(pipeline.running)}")  # fmt: skip
    ticked(a, lambda: None)
    owners = a.book.owners(sorted(ALL))
    assert owners["cam0"] == "a", "released while still in the pipeline"
    assert [sid for sid, o in owners.items() if o] == ["cam0"]
    assert "cam0" in a.releasing and not pipeline.running["cam0"].enabled
    pipeline.stuck.clear()
    wait_until(lambda: ticked(a, lambda: a.book.owners(["cam0"]) == {"cam0": None}), 20,
               lambda: f"cam0 still held; pipeline {sorted(pipeline.running)}")  # fmt: skip
    assert pipeline.running == {}


def test_a_node_meeting_a_just_restarted_redis_takes_nothing_for_a_lease_timeout(
    killable_redis: KillableRedis,
):
    a = make_node(killable_redis.url, "vfquiet", "a", lease_ttl_s=30.0)
    ticked(
        a, lambda: None
    )  # the server has been up for less than 30 s: old leases may still be believed
    assert a.leases == {} and running(a) == set()
    assert a._quiet_until - time.monotonic() > 20


def test_a_stream_taken_again_after_redis_lost_its_data_goes_on_above_its_own_seq(
    redis_server, redis_client, key_prefix
):
    """Redis lost the leases, floors and detections: the node stops its streams and takes
    them again; each goes on above every seq the node read of it (so no frame of the earlier
    lease, still buffered, shares a seq with the new one's)."""
    pipeline = RecordingPipeline()
    a = make_node(redis_server, key_prefix, "a", pipeline)
    wait_until(lambda: ticked(a, lambda: running(a) == ALL), 20, lambda: f"a {running(a)}")
    before = {sid: (pipeline.first[sid],) for sid in ALL}
    read = {sid: pipeline.last_seq(sid) for sid in ALL}
    tokens = {sid: a.token(sid) for sid in ALL}
    redis_client.delete(*redis_client.keys(f"{key_prefix}:*"))  # as after a restart, empty

    def taken_again() -> bool:  # (the fence counter restarted too; the nonce did not)
        fresh = all(pipeline.first.get(sid) != before[sid][0] for sid in ALL)
        return fresh and running(a) == ALL

    wait_until(lambda: ticked(a, taken_again), 20, lambda: f"a {running(a)} {a.leases}")
    for sid in ALL:
        assert pipeline.first[sid] > read[sid] >= before[sid][0], (sid, pipeline.first, read)
        assert pipeline.fences[sid][-1] == (a.token(sid), pipeline.first[sid])
        assert a.token(sid) != tokens[sid], "a lease value repeated after Redis lost its data"
