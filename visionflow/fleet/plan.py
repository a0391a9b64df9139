"""Who should read what: pure functions every node evaluates on the same view of the fleet.

Each node reads the live nodes (weight, capacity, labels), the desired streams and the
lease holders, and decides only its own moves: take free streams while below its quota,
give streams up while above it *and* a node with room could take them.  Quotas are the
streams split in proportion to the weights (largest remainder, ties to the lower node id,
so every node computes the same numbers), capped at each node's capacity.  Which free
stream a node tries first is its rendezvous-hash order, so nodes starting together go for
different streams; the lease (``SET NX``) settles the rest.
"""

from __future__ import annotations

import hashlib
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


def quotas(total: int, nodes: Sequence[NodeView]) -> dict[str, int]:
    """``total`` streams split over the non-draining nodes by weight, capped by capacity
    (what a capped node cannot take goes to the others, in proportion again)."""
    active = sorted((n for n in nodes if not n.draining), key=lambda n: n.node_id)
    result = {n.node_id: 0 for n in nodes}
    left, open_nodes = total, list(active)
    while left > 0 and open_nodes:
        weight = sum(n.weight for n in open_nodes)
        exact = {n.node_id: left * n.weight / weight for n in open_nodes}
        share = {nid: math.floor(x) for nid, x in exact.items()}
        spare = left - sum(share.values())
        by_rest = sorted(
            open_nodes, key=lambda n: (-(exact[n.node_id] - share[n.node_id]), n.node_id)
        )
        for node in by_rest[:spare]:
            share[node.node_id] += 1
        capped = []
        for node in open_nodes:
            room = None if node.capacity is None else node.capacity - result[node.node_id]
            give = share[node.node_id] if room is None else min(share[node.node_id], room)
            result[node.node_id] += give
            left -= give
            if room is not None and give >= room:
                capped.append(node.node_id)
        if not capped:
            break
        open_nodes = [n for n in open_nodes if n.node_id not in capped]
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
    quota = quotas(len(streams), nodes)
    count = {n.node_id: 0 for n in nodes}
    for sid in (s.id for s in streams):
        holder = owners.get(sid)
        if holder in count:
            count[holder] += 1
    mine = [s for s in streams if owners.get(s.id) == me]
    # streams no longer mine to keep: labels changed, or the node is draining
    release = [s.id for s in mine if not eligible(s, node, placement_keys)]
    held = len(mine) - len(release)

    def has_room(other: NodeView) -> bool:
        return count[other.node_id] < quota[other.node_id]

    acquire: list[str] = []
    free = [s for s in streams if owners.get(s.id) is None and eligible(s, node, placement_keys)]
    free.sort(key=lambda s: rank(s.id, me), reverse=True)
    capacity = math.inf if node.capacity is None else node.capacity
    for stream in free:
        if len(acquire) >= max_acquire or held + len(acquire) >= capacity:
            break
        others = [
            n for n in nodes
            if n.node_id != me and has_room(n) and eligible(stream, n, placement_keys)
        ]  # fmt: skip
        if held + len(acquire) < quota[me] or not others:
            acquire.append(stream.id)
    surplus = held - quota[me]
    if surplus > 0 and not release:
        keep = sorted(
            (s for s in mine if eligible(s, node, placement_keys)),
            key=lambda s: rank(s.id, me),
        )
        receivers = [n for n in nodes if n.node_id != me and has_room(n)]
        for stream in keep:
            if len(release) >= min(surplus, max_release):
                break
            if any(eligible(stream, n, placement_keys) for n in receivers):
                release.append(stream.id)
    return Moves(tuple(acquire), tuple(release))
