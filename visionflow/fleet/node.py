"""One ``visionflow run`` as a node of a fleet: it reads only the streams whose lease it holds.

Every tick (a quarter of the lease timeout) the node's thread, in this order:

1. drops leases it can no longer be sure of (Redis unreachable past the point where the
   lease might expire before the next renewal): those streams stop *before* another node
   can take them;
2. renews its leases (one round trip; :mod:`visionflow.fleet.leases`), recording each
   stream's seq floor; a lease found lost (expired, Redis restarted empty) stops its stream;
3. writes its heartbeat (``<prefix>:fleet:nodes`` and ``<prefix>:fleet:alive:<id>``);
4. finishes hand-overs: a stream being given up was disabled (reader stopped); once its
   in-flight frames are written (or after the lease timeout), it is removed from the
   pipeline and, only once it is gone from it, its final seq floor recorded and its lease
   released (otherwise the lease is kept and the hand-over tried again next tick);
5. plans (:mod:`visionflow.fleet.plan`) unless draining (SIGTERM, or a drain requested
   through ``POST /fleet/nodes/{id}/drain``): takes free streams, at most ``acquire_per_s``, and
   gives streams to less loaded nodes, at most ``moves_per_s``.  After Redis restarted (its
   ``run_id`` changed, or its uptime is below a lease timeout) it takes nothing until a lease
   timeout has passed: leases of the old instance may still be held by nodes that have not
   yet noticed;
6. applies the leases again when the pipeline differs from them (an apply that failed or
   was skipped heals here, not only when the registry changes).

A stream taken over starts at ``max(floor, newest seq in its detections stream + 1)``
and the change is logged in ``<prefix>:fleet:handovers`` (previous newest seq, new first
seq), so a consumer can account the gap.  The reconciler applies ownership: its desired
set is :meth:`FleetNode.scope` of the registry's streams.
"""

from __future__ import annotations

import json
import logging
import math
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Protocol

import redis

from visionflow.errors import VisionflowError
from visionflow.fleet.config import FleetConfig
from visionflow.fleet.leases import Lease, LeaseBook
from visionflow.fleet.plan import Moves, NodeView, plan_moves
from visionflow.fleet.view import node_records
from visionflow.redis_client import RedisTls, connect
from visionflow.schema import (
    detections_key,
    fleet_alive_key,
    fleet_drain_key,
    fleet_handovers_key,
    fleet_nodes_key,
    status_key,
    streams_key,
)
from visionflow.streams.config import StreamConfig
from visionflow.streams.registry import StreamRegistry
from visionflow.streams.state import StreamState
from visionflow.streams.urls import redact_text
from visionflow.workers.status import PipelineStatus
from visionflow.workers.supervisor import SEQ_MARGIN

log = logging.getLogger("visionflow.fleet")
MAX_FPS = 240  # a stream gives out at most this many seq a second (fps_cap's limit)
HANDOVERS_MAXLEN = 10_000
FORGET_NODE_S = 3600.0  # a dead node's record is dropped from the nodes hash after this


class NodeState(StrEnum):
    STARTING = "starting"
    RUNNING = "running"
    DRAINING = "draining"
    STOPPED = "stopped"


class FleetPipeline(Protocol):
    """What the node reads from the pipeline (:class:`~visionflow.workers.supervisor.Pipeline`)."""

    def status(self) -> PipelineStatus: ...

    def last_seq(self, stream_id: str) -> int: ...

    def streams(self) -> dict[str, StreamConfig]: ...

    def add_stream(self, stream: StreamConfig, first_seq: int = 0) -> None: ...

    def update_stream(self, stream: StreamConfig) -> None: ...

    def remove_stream(self, stream_id: str) -> None: ...

    def set_fence(self, stream_id: str, token: str, first_seq: int) -> None: ...

    def fence(self, stream_id: str) -> str | None: ...


class OwnedTarget:
    """What the reconciler drives in a fleet: the pipeline, each stream taken over starting
    at the seq its lease said (:class:`~visionflow.workers.reconcile.StreamTarget`)."""

    def __init__(self, pipeline: FleetPipeline, node: FleetNode) -> None:
        self.pipeline, self.node = pipeline, node

    def streams(self) -> dict[str, StreamConfig]:
        return self.pipeline.streams()

    def add_stream(self, stream: StreamConfig) -> None:
        """Added with its lease value (the output stage's write fence) and first seq."""
        first = self.node.first_seq(stream.id)
        token = self.node.token(stream.id)
        if token is None:  # the lease was lost since the scope was read: not ours to read
            raise VisionflowError(f"stream {stream.id!r}: its lease was lost; not added")
        self.pipeline.set_fence(stream.id, token, first)
        self.pipeline.add_stream(stream, first)

    def update_stream(self, stream: StreamConfig) -> None:
        self.pipeline.update_stream(stream)

    def remove_stream(self, stream_id: str) -> None:
        self.pipeline.remove_stream(stream_id)


@dataclass
class _Budget:
    """A token bucket: ``rate`` moves a second.  It is spent once a tick (every ``tick_s``),
    so it saves up to a tick's worth (at least 1): a smaller cap would cut the real rate
    to ``cap / tick_s``."""

    rate: float
    tick_s: float
    tokens: float = 1.0
    at: float = 0.0

    @property
    def cap(self) -> float:
        return max(1.0, self.rate * self.tick_s)

    def take_up_to(self, now: float) -> int:
        if self.at:
            self.tokens = min(self.cap, self.tokens + (now - self.at) * self.rate)
        self.at = now
        return int(self.tokens)

    def spend(self, n: int) -> None:
        self.tokens -= n


def fleet_client(url: str, config: FleetConfig, tls: RedisTls | None = None) -> redis.Redis:
    """A client whose calls fail fast enough to act before a lease can expire."""
    timeout = config.redis_timeout_s
    return connect(
        url, tls, socket_timeout=timeout, socket_connect_timeout=timeout, health_check_interval=0
    )


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class FleetNode:
    """Holds this node's leases and tells the reconciler which streams are its own."""

    def __init__(
        self,
        config: FleetConfig,
        client: redis.Redis,
        prefix: str,
        registry: StreamRegistry,
        pipeline: FleetPipeline,
    ) -> None:
        self.config, self.client, self.prefix = config, client, prefix
        self.node_id = config.resolved_node_id()
        self.registry, self.pipeline = registry, pipeline
        self.book = LeaseBook(client, prefix, self.node_id, config.lease_ttl_s)
        self.tick_s = config.renew_interval_s
        self.margin = SEQ_MARGIN + math.ceil(MAX_FPS * self.tick_s)
        self.state = NodeState.STARTING
        self.leases: dict[str, Lease] = {}
        self.first: dict[str, int] = {}  # first seq of each stream taken
        # per stream ever held, a seq above every one this node read of it (kept when the
        # lease goes): taken again, it goes on above them even if Redis lost the floor and
        # the detections, so no seq of an earlier lease is read again under a later one
        self.own_floor: dict[str, int] = {}
        self.releasing: dict[str, float] = {}  # stream -> monotonic deadline of its hand-over
        self.started_ts = time.time()
        self.apply: Callable[[], object] = lambda: None  # the reconciler's rescope
        self.handovers = 0
        self.last_error: str | None = None
        self._run_id: str | None = None
        self._quiet_until = 0.0
        self._drift = ""  # how the pipeline last differed from the leases
        self._acquire = _Budget(config.acquire_per_s, self.tick_s)
        self._release = _Budget(config.moves_per_s, self.tick_s)
        self._lock = threading.RLock()
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="fleet", daemon=True)

    # ---- what the reconciler runs ---------------------------------------------------
    def scope(self, desired: Sequence[StreamConfig]) -> tuple[StreamConfig, ...]:
        """Of the desired streams, those whose lease this node holds; one being handed
        over is kept disabled (its reader stopped) until its lease is released."""
        with self._lock:
            owned, releasing = set(self.leases), set(self.releasing)
        out = []
        for stream in desired:
            if stream.id in releasing:
                out.append(stream.model_copy(update={"enabled": False}))
            elif stream.id in owned:
                out.append(stream)
        return tuple(out)

    def first_seq(self, stream_id: str) -> int:
        with self._lock:
            return self.first.get(stream_id, 0)

    def token(self, stream_id: str) -> str | None:
        """The value of the stream's lease as this node took it (None: not held)."""
        with self._lock:
            lease = self.leases.get(stream_id)
        return lease.token if lease is not None else None

    # ---- lifecycle ------------------------------------------------------------------
    def start(self) -> None:
        self.state = NodeState.RUNNING
        self.thread.start()

    def stop_thread(self) -> None:
        self._stop.set()
        if self.thread.ident is not None:
            self.thread.join(timeout=self.tick_s * 4 + 5)

    def drain(self, timeout: float | None = None) -> None:
        """Hand every stream over: readers stopped, in-flight frames written, then the
        leases released with their final seq floor; the node leaves the fleet."""
        self.stop_thread()
        self.state = NodeState.DRAINING
        deadline = time.monotonic() + (timeout or self.config.drain_timeout_s)
        with self._lock:
            for sid in self.leases:
                self.releasing.setdefault(sid, deadline)
        self._safely(self._heartbeat)
        self.apply()
        while time.monotonic() < deadline:
            self._safely(self._renew)
            self._safely(self._finish_releases)
            with self._lock:
                if not self.leases:
                    break
            time.sleep(0.05)
        with self._lock:  # past the deadline: give them back as they are
            for sid in self.releasing:
                self.releasing[sid] = 0.0
        self._safely(self._finish_releases)
        self.state = NodeState.STOPPED
        self._safely(self._leave)

    def _safely(self, step: Callable[[], None]) -> None:
        try:
            step()
        except redis.RedisError as exc:
            self.last_error = redact_text(str(exc))
            log.warning("fleet: Redis unreachable (%s)", self.last_error)

    # ---- the thread -----------------------------------------------------------------
    def _run(self) -> None:
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                self.tick()
            except Exception:
                log.exception("fleet: tick failed")
            self._stop.wait(max(0.0, self.tick_s - (time.monotonic() - started)))

    def tick(self) -> None:
        """One round: safety, renewal, heartbeat, hand-overs, planning, and the pipeline
        brought back to the leases if it drifted from them."""
        self._drop_unsafe()
        step = "checking the Redis server"
        try:
            self._watch_server()
            step = "reading the drain request"
            self._follow_drain_request()
            step = "renewing the leases"
            self._renew()
            step = "writing the heartbeat"
            self._heartbeat()
            step = "finishing hand-overs"
            self._finish_releases()
            step = "reading the registry"
            desired = self.registry.desired().streams
            if self.state is NodeState.RUNNING and time.monotonic() >= self._quiet_until:
                step = "planning and taking streams"
                self._plan_and_move(desired)
            self._heal(desired)
            self.last_error = None
        except redis.RedisError as exc:
            self.last_error = redact_text(str(exc))
            log.warning("fleet: Redis call failed while %s (%s)", step, self.last_error)
            self._drop_unsafe()

    def _heal(self, desired: Sequence[StreamConfig]) -> None:
        """Apply the scope again when the pipeline is not what the leases say (an apply
        skipped or failed): which streams it has, and which of them read; and the write
        fence of a stream taken again while still in the pipeline."""
        self._heal_fences()
        wanted = {s.id: s.enabled for s in self.scope(desired)}
        actual = {sid: s.enabled for sid, s in self.pipeline.streams().items()}
        if wanted == actual:
            self._drift = ""
            return
        parts = {
            "missing": sorted(set(wanted) - set(actual)),
            "not leased": sorted(set(actual) - set(wanted)),
            "reading or not wrongly": sorted(
                sid for sid in set(wanted) & set(actual) if wanted[sid] != actual[sid]
            ),
        }
        text = "; ".join(f"{k}: {', '.join(v)}" for k, v in parts.items() if v)
        level = logging.DEBUG if text == self._drift else logging.WARNING  # once per drift
        log.log(level, "fleet: pipeline differs from the leases (%s); applying them again", text)
        self._drift = text
        self.apply()

    def _heal_fences(self) -> None:
        """A stream in the pipeline whose write fence is not its current lease (taken again
        before it left the pipeline): frames from the lease's first seq on are written
        under the new value (earlier ones stay fenced by the old one, and are refused: drops
        of the stream's registration, which stays the same, so its in-flight count settles)."""
        present = set(self.pipeline.streams())
        with self._lock:
            held = {sid: (lease.token, self.first.get(sid, 0))
                    for sid, lease in self.leases.items() if sid in present}  # fmt: skip
        for sid, (token, first) in held.items():
            if self.pipeline.fence(sid) != token:
                log.warning("fleet: %s writes under lease %s from seq %d on", sid, token, first)
                self.pipeline.set_fence(sid, token, first)

    def _drop_unsafe(self) -> None:
        """Stop the streams whose lease might expire before the next renewal completes."""
        limit = time.monotonic() + self.tick_s + 2 * self.config.redis_timeout_s
        with self._lock:
            unsafe = [sid for sid, lease in self.leases.items() if lease.valid_until < limit]
        if unsafe:
            log.error("fleet: leases of %s not renewed in time; stopping them (another node "
                      "may take them)", ", ".join(sorted(unsafe)))  # fmt: skip
            self._forget(unsafe)

    def _forget(self, stream_ids: Sequence[str]) -> None:
        with self._lock:
            for sid in stream_ids:
                self.leases.pop(sid, None)
                self.releasing.pop(sid, None)
                self.first.pop(sid, None)
        self.apply()

    def _watch_server(self) -> None:
        """Redis restarted: a new ``run_id`` (seen by a node already running), or a server
        up for less than a lease timeout (seen by a node just started): take nothing until
        a lease timeout has passed since, so leases of the old instance have expired in the
        minds of their holders."""
        info = self.client.info("server")
        run_id = _text(info.get("run_id", ""))
        ttl = self.config.lease_ttl_s
        quiet = 0.0
        if self._run_id is not None and run_id != self._run_id:
            quiet = ttl
        uptime = float(info.get("uptime_in_seconds", ttl))
        if uptime < ttl:
            quiet = max(quiet, ttl - uptime + 1.0)  # uptime is in whole seconds: round up
        now = time.monotonic()
        if quiet and now + quiet > self._quiet_until:
            if self._quiet_until <= now:
                log.warning("fleet: Redis restarted; taking no stream for %.1fs", quiet)
            self._quiet_until = now + quiet
        self._run_id = run_id

    def _follow_drain_request(self) -> None:
        """``POST /fleet/nodes/{id}/drain`` (the drain key): hand every stream over and take
        none; the key deleted: back to running."""
        requested = bool(self.client.exists(fleet_drain_key(self.prefix, self.node_id)))
        if requested and self.state is NodeState.RUNNING:
            self.state = NodeState.DRAINING
            deadline = time.monotonic() + self.config.drain_timeout_s
            with self._lock:
                for sid in self.leases:
                    self.releasing.setdefault(sid, deadline)
            log.warning("fleet: drain requested; handing %d stream(s) over", len(self.leases))
            self.apply()
        elif not requested and self.state is NodeState.DRAINING:
            self.state = NodeState.RUNNING
            log.info("fleet: drain request withdrawn; taking streams again")

    def _floor(self, stream_id: str) -> int:
        first = self.first.get(stream_id, 0)
        return max(first, self.pipeline.last_seq(stream_id) + 1) + self.margin

    def _renew(self) -> None:
        with self._lock:
            leases = list(self.leases.values())
            floors = {lease.stream_id: self._floor(lease.stream_id) for lease in leases}
            self._raise_own_floors(floors)
        lost = self.book.renew(leases, floors)
        if lost:
            log.error("fleet: lost the leases of %s (expired or Redis restarted); stopping "
                      "them", ", ".join(sorted(lost)))  # fmt: skip
            self._forget(lost)

    def _raise_own_floors(self, floors: dict[str, int]) -> None:
        for sid, floor in floors.items():
            self.own_floor[sid] = max(self.own_floor.get(sid, 0), floor)

    # ---- heartbeat ------------------------------------------------------------------
    def record(self) -> dict[str, Any]:
        """This node as ``GET /fleet`` shows it."""
        with self._lock:
            owned, releasing = sorted(self.leases), sorted(self.releasing)
        running = [sid for sid, s in self.pipeline.streams().items() if s.enabled]
        return {
            "node_id": self.node_id,
            "state": str(self.state),
            "weight": self.config.weight,
            "capacity": self.config.capacity,
            "labels": dict(self.config.labels),
            "owned": owned,
            "releasing": releasing,
            "reading": sorted(sid for sid in running if sid not in releasing),
            "handovers": self.handovers,
            "started_ts": round(self.started_ts, 3),
            "heartbeat_ts": round(time.time(), 3),
            "lease_ttl_s": self.config.lease_ttl_s,
            "error": self.last_error,
        }

    def _heartbeat(self) -> None:
        payload = json.dumps(self.record(), separators=(",", ":"))
        pipe = self.client.pipeline(transaction=False)
        pipe.hset(fleet_nodes_key(self.prefix), self.node_id, payload)
        pipe.set(fleet_alive_key(self.prefix, self.node_id), str(self.state),
                 px=int(self.config.lease_ttl_s * 1000))  # fmt: skip
        pipe.execute()

    def _leave(self) -> None:
        self.client.delete(fleet_alive_key(self.prefix, self.node_id))
        self._heartbeat_final()

    def _heartbeat_final(self) -> None:
        payload = json.dumps(self.record(), separators=(",", ":"))
        self.client.hset(fleet_nodes_key(self.prefix), self.node_id, payload)

    # ---- views of the fleet -------------------------------------------------------------
    def live_nodes(self) -> list[NodeView]:
        """The nodes alive now (a draining one marked so); records of nodes gone for
        longer than an hour are dropped."""
        now, views, stale = time.time(), [], []
        for nid, rec, flag in node_records(self.client, self.prefix):
            if flag is None:
                if now - float(rec.get("heartbeat_ts", 0)) > FORGET_NODE_S:
                    stale.append(nid)
                continue
            weight, capacity = float(rec.get("weight", 1.0)), rec.get("capacity")
            draining = flag != str(NodeState.RUNNING)
            views.append(NodeView(nid, weight, capacity, dict(rec.get("labels", {})), draining))
        if stale:
            self.client.hdel(fleet_nodes_key(self.prefix), *stale)
        return views

    # ---- planning and moves ---------------------------------------------------------
    def _plan_and_move(self, desired: Sequence[StreamConfig]) -> None:
        registered = {s.id for s in desired}
        self._unlist_unregistered(registered)
        with self._lock:  # unregistered: no longer read (the reconciler), so give it back
            for sid in set(self.leases) - registered:
                self.releasing.setdefault(sid, 0.0)
        nodes = self.live_nodes()
        if all(n.node_id != self.node_id for n in nodes):
            return  # our own heartbeat is not visible yet
        owners = self.book.owners([s.id for s in desired])
        now = time.monotonic()
        with self._lock:
            for sid in self.releasing:  # already on their way out: not ours to plan
                owners[sid] = None if owners.get(sid) == self.node_id else owners.get(sid)
        moves = plan_moves(
            self.node_id,
            desired,
            nodes,
            owners,
            self.config.placement_keys,
            self._acquire.take_up_to(now),
            self._release.take_up_to(now),
        )
        with self._lock:
            moves = Moves(
                tuple(s for s in moves.acquire if s not in self.releasing),
                moves.release,
            )
        self._apply_moves(moves, desired, now)

    def _unlist_unregistered(self, registered: set[str]) -> None:
        """Nodes only add to the shared ``<prefix>:streams`` set and never delete a status
        hash (the stream may be another node's now); streams no longer registered leave the
        set here, and their status hashes go with them."""
        key = streams_key(self.prefix)
        listed = {_text(m) for m in self.client.smembers(key)}  # type: ignore[union-attr]
        gone = listed - registered
        if gone:
            pipe = self.client.pipeline(transaction=True)
            pipe.srem(key, *gone)
            pipe.delete(*(status_key(self.prefix, sid) for sid in gone))
            pipe.execute()

    def _apply_moves(self, moves: Moves, desired: Sequence[StreamConfig], now: float) -> None:
        if moves.release:
            self._release.spend(len(moves.release))
            with self._lock:
                for sid in moves.release:
                    if sid in self.leases:
                        self.releasing.setdefault(sid, now + self.config.lease_ttl_s)
            log.info("fleet: handing over %s", ", ".join(moves.release))
        taken: list[str] = []
        try:
            for sid in moves.acquire:
                if self._take(sid):
                    taken.append(sid)
        finally:  # what was taken before a failure is read all the same
            self._acquire.spend(len(taken))  # a lease someone else got first costs nothing
            if taken or moves.release:
                self.apply()
            if taken:
                log.info("fleet: took %s", ", ".join(taken))

    def _take(self, stream_id: str) -> bool:
        """Try the stream's lease; on success note where its seq goes on."""
        lease = self.book.try_acquire(stream_id)
        if lease is None:
            return False
        try:
            self._record_take(lease)
        except redis.RedisError:
            with self._lock:
                self.leases.pop(stream_id, None)
                self.first.pop(stream_id, None)
            self.book.give_back(lease)
            raise
        self.handovers += 1
        return True

    def _record_take(self, lease: Lease) -> None:
        """Note the first seq of a stream just leased, in the lease's floor and the
        hand-over log."""
        stream_id = lease.stream_id
        previous = self.book.floor(stream_id)
        last = self._last_written(stream_id)
        with self._lock:
            own = self.own_floor.get(stream_id, 0)
        first = max(previous.floor if previous else 0, last + 1, own)
        cause = "new" if previous is None else "released" if previous.released else "expired"
        with self._lock:
            self.leases[stream_id] = lease
            self.first[stream_id] = first
            self._raise_own_floors({stream_id: first + self.margin})
        self.book.renew([lease], {stream_id: first + self.margin})
        self.client.xadd(
            fleet_handovers_key(self.prefix),
            {
                "stream_id": stream_id,
                "from_node": previous.node if previous else "",
                "to_node": self.node_id,
                "cause": cause,
                "last_seq": str(last),
                "first_seq": str(first),
                "fence": str(lease.fence),
                "ts": f"{time.time():.3f}",
            },
            maxlen=HANDOVERS_MAXLEN,
            approximate=True,
        )

    def _last_written(self, stream_id: str) -> int:
        """The seq of the newest entry in the stream's detections (-1: none)."""
        newest = self.client.xrevrange(detections_key(self.prefix, stream_id), count=1)
        if not newest:
            return -1
        fields = {_text(k): _text(v) for k, v in newest[0][1].items()}  # type: ignore[index,union-attr]
        return int(fields.get("seq", -1))

    def _finish_releases(self) -> None:
        """Release the streams being handed over whose frames are all written (or whose
        time is up): removed from the pipeline first, then the lease given back."""
        with self._lock:
            pending = dict(self.releasing)
        if not pending:
            return
        status = {s.stream_id: s for s in self.pipeline.status().streams}
        now = time.monotonic()
        done = []
        for sid, deadline in pending.items():
            st = status.get(sid)
            idle = st is None or (st.state == StreamState.DISABLED and st.in_flight == 0)
            if idle or now >= deadline:
                done.append(sid)
        if not done:
            return
        floors = {sid: max(self.pipeline.last_seq(sid), self._last_written(sid)) + 1
                  for sid in done}  # fmt: skip
        with self._lock:
            self._raise_own_floors(floors)
            leases = [self.leases.pop(sid) for sid in done if sid in self.leases]
            kept = {sid: self.releasing.pop(sid) for sid in done if sid in self.releasing}
            firsts = {sid: self.first.pop(sid) for sid in done if sid in self.first}
        self.apply()  # removed from the pipeline before anyone else may take it
        present = set(self.pipeline.streams())
        stuck = sorted(lease.stream_id for lease in leases if lease.stream_id in present)
        if stuck:  # not removed: keep the lease (renewed) and try again next tick
            with self._lock:
                for lease in leases:
                    sid = lease.stream_id
                    if sid in present:
                        self.leases[sid] = lease
                        self.releasing[sid] = kept.get(sid, 0.0)
                        if sid in firsts:
                            self.first[sid] = firsts[sid]
            log.warning("fleet: %s still in the pipeline; lease kept, release tried again",
                        ", ".join(stuck))  # fmt: skip
            self.apply()
        released = []
        for lease in leases:
            if lease.stream_id in present:
                continue
            released.append(lease.stream_id)
            if not self.book.release(lease, floors[lease.stream_id]):
                log.warning("fleet: lease of %s was already gone at release", lease.stream_id)
        if released:
            log.info("fleet: released %s", ", ".join(released))
