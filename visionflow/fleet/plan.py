"""Who should read what: pure functions every node evaluates on the same view of the fleet.

Each node reads the live nodes (weight, capacity, labels), the desired streams and the
lease holders, and decides only its own moves: take free streams while below its quota,
give streams up while above it *and* a node with room could take them.  Quotas are the
streams split in proportion to the weights (one at a time to the node with the fewest per
weight, ties to the lower node id, so every node computes the same numbers), capped at each
node's capacity, and computed per placement: the streams pinned to a label value are split
over the nodes that may run them, and room is counted only among those.  Which free
stream a node tries first is its rendezvous-hash order, so nodes starting together go for
different streams; the lease (``SET NX``) settles the rest.
"""

from __future__ import annotations

import hashlib
import heapq
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from visionflow.streams.config import StreamConfig


@dataclass(frozen=True)
class NodeView:
    """A live node as the others see it (from its heartbeat)."""

    node_id: str
    weight: float = 1.0
    capacity: int | None = None
    labels: Mapping[str, str] = field(default_factory=dict)
    draining: bool = False


@dataclass(frozen=True)
class Moves:
    """What this node does now: leases to try, and streams to hand over."""

    acquire: tuple[str, ...] = ()
    release: tuple[str, ...] = ()


def eligible(stream: StreamConfig, node: NodeView, placement_keys: Sequence[str]) -> bool:
    """A stream labelled with a placement key runs only on nodes with the same value."""
    for key in placement_keys:
        wanted = stream.labels.get(key)
        if wanted is not None and node.labels.get(key) != wanted:
            return False
    return not node.draining


Placement = tuple[tuple[str, str], ...]  # a stream's placement labels: where it may run


def placement(stream: StreamConfig, placement_keys: Sequence[str]) -> Placement:
    """The placement labels of a stream (empty: it may run anywhere)."""
    return tuple((k, stream.labels[k]) for k in placement_keys if k in stream.labels)


def _fits(node: NodeView, where: Placement) -> bool:
    return not node.draining and all(node.labels.get(k) == v for k, v in where)


def _fill(total: int, nodes: Sequence[NodeView], used: dict[str, int]) -> dict[str, int]:
    """``total`` streams given one at a time to the node lowest in ``(held + 1) / weight``
    among those with room (ties to the lower node id), ``used`` counting what the node was
    given already (and updated); the share of each node."""
    share = {n.node_id: 0 for n in nodes}
    heap = [((used[n.node_id] + 1) / n.weight, n.node_id, n) for n in nodes]
    heap = [h for h in heap if h[2].capacity is None or used[h[1]] < h[2].capacity]
    heapq.heapify(heap)
    for _ in range(total):
        if not heap:
            break
        _, nid, node = heapq.heappop(heap)
        used[nid] += 1
        share[nid] += 1
        if node.capacity is None or used[nid] < node.capacity:
            heapq.heappush(heap, ((used[nid] + 1) / node.weight, nid, node))
    return share


def quotas(total: int, nodes: Sequence[NodeView]) -> dict[str, int]:
    """``total`` streams split over the non-draining nodes by weight, capped by capacity
    (what a capped node cannot take goes to the others)."""
    active = [n for n in nodes if not n.draining]
    result = {n.node_id: 0 for n in nodes}
    result.update(_fill(total, active, {n.node_id: 0 for n in active}))
    return result


def placement_quotas(
    streams: Sequence[StreamConfig], nodes: Sequence[NodeView], placement_keys: Sequence[str]
) -> dict[Placement, dict[str, int]]:
    """Quotas per placement: each pinned group split over the nodes it may run on (the
    groups in a fixed order), then the unpinned streams over all nodes, filling those with
    fewer streams first so the totals follow the weights as far as the pins allow."""
    groups: dict[Placement, int] = {}
    for stream in streams:
        where = placement(stream, placement_keys)
        groups[where] = groups.get(where, 0) + 1
    used = {n.node_id: 0 for n in nodes}
    result: dict[Placement, dict[str, int]] = {}
    for where in sorted(groups, key=lambda w: (not w, w)):  # pinned first, unpinned last
        share = {n.node_id: 0 for n in nodes}
        share.update(_fill(groups[where], [n for n in nodes if _fits(n, where)], used))
        result[where] = share
    return result


def rank(stream_id: str, node_id: str) -> int:
    """Rendezvous score: higher means this node prefers this stream."""
    digest = hashlib.blake2b(f"{stream_id}|{node_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def plan_moves(
    me: str,
    streams: Sequence[StreamConfig],
    nodes: Sequence[NodeView],
    owners: Mapping[str, str | None],
    placement_keys: Sequence[str],
    max_acquire: int,
    max_release: int,
) -> Moves:
    """This node's moves given the desired ``streams``, the live ``nodes`` (this one among
    them) and the lease holder of each stream."""
    by_id = {n.node_id: n for n in nodes}
    node = by_id.get(me)
    if node is None:
        return Moves()
    quota = placement_quotas(streams, nodes, placement_keys)
    where = {s.id: placement(s, placement_keys) for s in streams}
    count = {w: {n.node_id: 0 for n in nodes} for w in quota}
    for s in streams:
        holder = owners.get(s.id)
        if holder in by_id:
            count[where[s.id]][holder] += 1  # type: ignore[index]
    mine = [s for s in streams if owners.get(s.id) == me]
    # streams no longer mine to keep: labels changed, or the node is draining
    release = [s.id for s in mine if not eligible(s, node, placement_keys)]
    held = len(mine) - len(release)

    def has_room(other: NodeView, stream: StreamConfig) -> bool:
        """``other`` may run the stream and is below its quota for streams placed so."""
        w = where[stream.id]
        return (
            eligible(stream, other, placement_keys)
            and count[w][other.node_id] < quota[w][other.node_id]
        )

    acquire: list[str] = []
    free = [s for s in streams if owners.get(s.id) is None and eligible(s, node, placement_keys)]
    free.sort(key=lambda s: rank(s.id, me), reverse=True)
    capacity = math.inf if node.capacity is None else node.capacity
    for stream in free:
        if len(acquire) >= max_acquire or held + len(acquire) >= capacity:
            break
        w = where[stream.id]
        below = count[w][me] < quota[w][me]
        if below or not any(has_room(n, stream) for n in nodes if n.node_id != me):
            acquire.append(stream.id)
            count[w][me] += 1
    if release:
        return Moves(tuple(acquire), tuple(release))
    keep = sorted(
        (s for s in mine if eligible(s, node, placement_keys)), key=lambda s: rank(s.id, me)
    )
    for stream in keep:
        if len(release) >= max_release:
            break
        w = where[stream.id]
        to = next((n for n in nodes if n.node_id != me and has_room(n, stream)), None)
        if count[w][me] > quota[w][me] and to is not None:
            release.append(stream.id)
            count[w][me] -= 1
            count[w][to.node_id] += 1  # that room is spoken for
    return Moves(tuple(acquire), tuple(release))
