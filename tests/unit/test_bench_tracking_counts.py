"""bench/tracking_counts.py's rows: counts off, fair, a tree's counts by another's truth."""

from __future__ import annotations

from bench.tracking_counts import fair, summary


def scene(truth, counts, visible=None, keys=None, idf1=0.95):
    return {
        "idf1": idf1,
        "test_keys": keys or sorted(set(truth) | set(counts)),
        "truth": truth,
        "truth_visible": visible if visible is not None else truth,
        "counts": counts,
    }


def test_a_row_adds_up_the_groups_scenes_on_their_test_keys_only():
    mine = {
        "held:crossing:1": scene({"a": 3, "b": 2}, {"a": 4, "b": 2}),
        "held:reenter:1": scene({"a": 1, "z": 5}, {"a": 1, "z": 9}, keys=["a"], idf1=0.8),
        "tune:crossing:11": scene({"a": 7}, {"a": 0}),  # another group: left out
    }
    row = summary("this", "held", mine, mine)
    assert (row["scenes"], row["truth"], row["off"], row["per_100"]) == (2, 6, 1, 16.67)
    assert row["off_every_key"] == 1 + 4  # the zone left out of the test's keys counts here
    assert row["idf1_below_0.9"] == 1 and row["idf1_mean"] == 0.875


def test_fair_owes_nothing_between_the_visible_and_the_full_truth():
    s = scene({"a": 5, "b": 2}, {"a": 4, "b": 3}, visible={"a": 3})
    assert fair(s, ["a", "b"]) == 1  # a: 4 within [3, 5]; b: 3 above its 2


def test_the_cross_row_scores_one_trees_counts_by_the_others_truth():
    key = "person|zone:yard:enter"
    old = {"held:crossing:1": scene({key: 4}, {key: 5})}
    new = {"held:crossing:1": scene({key: 5}, {key: 5})}
    assert summary("this", "held", new, new)["off"] == 0
    cross = summary("cross", "held", new, old)
    assert (cross["off"], cross["truth"]) == (1, 4) and "fair" not in cross


def test_the_cross_row_keeps_a_key_only_the_other_truth_has():
    name = "held:crossing:1"
    old = {name: scene({"car|zone:yard:enter": 1, "car|line:west:in": 2}, {})}
    new = {name: scene({"car|line:west:in": 2}, {"car|line:west:in": 2})}
    cross = summary("cross", "held", new, old)
    assert (cross["truth"], cross["off"]) == (3, 1)  # the zone entry the new truth dropped
    reenter = {"held:reenter:1": scene({"car|zone:yard:enter": 1}, {})}
    gone = {"held:reenter:1": scene({}, {})}
    assert summary("cross", "held", gone, reenter)["truth"] == 0  # zones: not on reenter
