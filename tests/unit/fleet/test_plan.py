"""Quotas, placement and each node's moves (pure functions)."""

from __future__ import annotations

from collections import Counter

from visionflow.fleet.plan import Moves, NodeView, eligible, plan_moves, quotas
from visionflow.streams.config import StreamConfig


def cams(n: int, **labels: str) -> list[StreamConfig]:
    return [StreamConfig(id=f"c{i:02d}", url=f"rtsp://h/{i}", labels=labels) for i in range(n)]


def test_quotas_split_by_weight_and_sum_to_the_streams():
    nodes = [NodeView("a"), NodeView("b"), NodeView("c")]
    assert quotas(12, nodes) == {"a": 4, "b": 4, "c": 4}
    assert quotas(13, nodes) == {"a": 5, "b": 4, "c": 4}  # ties to the lower id: all agree
    heavy = [NodeView("a", weight=3), NodeView("b", weight=1)]
    assert quotas(8, heavy) == {"a": 6, "b": 2}


def test_quotas_capped_nodes_leave_the_rest_to_the_others():
    nodes = [NodeView("a", capacity=2), NodeView("b"), NodeView("c", capacity=10)]
    assert quotas(12, nodes) == {"a": 2, "b": 5, "c": 5}
    full = [NodeView("a", capacity=1), NodeView("b", capacity=2)]
    assert quotas(12, full) == {"a": 1, "b": 2}  # 9 stay unassigned


def test_draining_nodes_get_nothing():
    nodes = [NodeView("a"), NodeView("b", draining=True)]
    assert quotas(6, nodes) == {"a": 6, "b": 0}


def test_placement_keys_pin_streams_and_other_labels_do_not():
    north = StreamConfig(id="n", url="rtsp://h/n", labels={"site": "north", "zone": "gate"})
    free = StreamConfig(id="f", url="rtsp://h/f", labels={"zone": "gate"})
    node_s = NodeView("s", labels={"site": "south"})
    node_n = NodeView("n", labels={"site": "north"})
    assert not eligible(north, node_s, ["site"]) and eligible(north, node_n, ["site"])
    assert eligible(free, node_s, ["site"])  # no site label: anywhere
    assert eligible(north, node_s, [])  # no placement keys: labels are only labels


def _settle(streams: list[StreamConfig], nodes: list[NodeView], keys: list[str] | None = None):
    """Every node plans in turn (its leases granted) until nobody moves."""
    owners: dict[str, str | None] = {s.id: None for s in streams}
    for _ in range(50):
        moved = False
        for node in nodes:
            moves = plan_moves(node.node_id, streams, nodes, owners, keys or [], 100, 1)
            for sid in moves.release:
                owners[sid], moved = None, True
            for sid in moves.acquire:
                if owners[sid] is None:
                    owners[sid], moved = node.node_id, True
        if not moved:
            return owners
    raise AssertionError(f"never settled: {owners}")


def test_three_nodes_settle_even_and_a_fourth_gets_its_share():
    streams = cams(12)
    nodes = [NodeView("a"), NodeView("b"), NodeView("c")]
    owners = _settle(streams, nodes)
    assert Counter(owners.values()) == {"a": 4, "b": 4, "c": 4}
    nodes.append(NodeView("d"))
    before = dict(owners)
    for _ in range(10):
        for node in nodes:
            moves = plan_moves(node.node_id, streams, nodes, owners, [], 100, 1)
            for sid in moves.release:
                owners[sid] = None
            for sid in moves.acquire:
                owners[sid] = owners[sid] or node.node_id
    assert Counter(owners.values()) == {"a": 3, "b": 3, "c": 3, "d": 3}
    assert sum(before[s] != owners[s] for s in owners) == 3  # only what d needed moved


def test_a_node_gives_up_at_most_max_release_and_only_to_a_node_with_room():
    streams = cams(8)
    nodes = [NodeView("a"), NodeView("b")]
    owners: dict[str, str | None] = {s.id: "a" for s in streams}
    moves = plan_moves("a", streams, nodes, owners, [], 10, 2)
    assert len(moves.release) == 2 and not moves.acquire
    pinned = cams(8, site="north")
    nodes = [NodeView("a", labels={"site": "north"}), NodeView("b", labels={"site": "south"})]
    owners = {s.id: "a" for s in pinned}
    assert plan_moves("a", pinned, nodes, owners, ["site"], 10, 2) == Moves()


def test_free_streams_beyond_quota_are_taken_when_no_one_else_can():
    pinned = cams(4, site="north")
    nodes = [NodeView("a", labels={"site": "north"}), NodeView("b", labels={"site": "south"})]
    owners: dict[str, str | None] = {s.id: None for s in pinned}
    moves = plan_moves("a", pinned, nodes, owners, ["site"], 10, 1)
    assert len(moves.acquire) == 4  # quota says 2, but b may not run them
    assert plan_moves("b", pinned, nodes, owners, ["site"], 10, 1) == Moves()


def test_acquisitions_are_bounded_and_capacity_is_a_ceiling():
    streams = cams(10)
    nodes = [NodeView("a", capacity=3)]
    owners: dict[str, str | None] = {s.id: None for s in streams}
    assert len(plan_moves("a", streams, nodes, owners, [], 2, 1).acquire) == 2
    assert len(plan_moves("a", streams, nodes, owners, [], 100, 1).acquire) == 3


def test_a_draining_node_releases_everything_and_takes_nothing():
    streams = cams(4)
    nodes = [NodeView("a", draining=True), NodeView("b")]
    owners: dict[str, str | None] = {"c00": "a", "c01": "a", "c02": None, "c03": None}
    moves = plan_moves("a", streams, nodes, owners, [], 10, 1)
    assert set(moves.release) == {"c00", "c01"} and not moves.acquire


def test_placement_pinned_streams_are_balanced_among_the_nodes_that_may_run_them():
    north = cams(12, site="north")
    nodes = [
        NodeView("a", labels={"site": "north"}),
        NodeView("b", labels={"site": "north"}),
        NodeView("c", labels={"site": "south"}),
    ]
    owners: dict[str, str | None] = {s.id: "a" if i < 8 else "b" for i, s in enumerate(north)}
    moves = plan_moves("a", north, nodes, owners, ["site"], 10, 10)
    assert len(moves.release) == 2 and not moves.acquire  # c may not take them: b gets them
    assert plan_moves("b", north, nodes, owners, ["site"], 10, 10) == Moves()
    assert plan_moves("c", north, nodes, owners, ["site"], 10, 10) == Moves()


def test_unpinned_streams_fill_the_nodes_the_pins_left_short():
    streams = cams(12, site="north") + [
        StreamConfig(id=f"u{i}", url=f"rtsp://h/u{i}") for i in range(6)
    ]
    nodes = [
        NodeView("a", labels={"site": "north"}),
        NodeView("b", labels={"site": "north"}),
        NodeView("c", labels={"site": "south"}),
    ]
    owners = _settle(streams, nodes, ["site"])
    assert Counter(owners.values()) == {"a": 6, "b": 6, "c": 6}
    assert {owners[f"u{i}"] for i in range(6)} == {"c"}
