from __future__ import annotations

import pytest

from visionflow.errors import InvalidTransitionError
from visionflow.streams.state import TRANSITIONS, StreamState, StreamStateMachine

S = StreamState


def test_normal_life_cycle_is_recorded_and_reported():
    seen = []
    machine = StreamStateMachine("cam", on_change=seen.append)
    for target in (
        S.CONNECTING,
        S.STREAMING,
        S.STALLED,
        S.CONNECTING,
        S.BACKOFF,
        S.CONNECTING,
        S.STREAMING,
        S.STOPPED,
    ):
        machine.to(target, "why")
    assert machine.state is S.STOPPED
    assert [t.target for t in machine.history] == [t.target for t in seen]
    assert seen[2].source is S.STREAMING and seen[2].target is S.STALLED


@pytest.mark.parametrize(
    ("source", "target"),
    [
        (S.STOPPED, S.STREAMING),
        (S.CONNECTING, S.STALLED),
        (S.STALLED, S.STREAMING),
        (S.BACKOFF, S.STREAMING),
        (S.FAILED, S.STREAMING),
    ],
)
def test_forbidden_moves_raise(source, target):
    machine = StreamStateMachine("cam")
    machine._state = source
    with pytest.raises(InvalidTransitionError, match="cam"):
        machine.to(target)
    assert machine.state is source


def test_every_state_can_stop_or_is_stopped():
    for state, targets in TRANSITIONS.items():
        assert state is S.STOPPED or S.STOPPED in targets


def test_disabled_is_reached_from_every_state_and_left_by_enabling_or_stopping():
    for state, targets in TRANSITIONS.items():
        assert state is S.DISABLED or S.DISABLED in targets, state
    assert TRANSITIONS[S.DISABLED] == {S.CONNECTING, S.STOPPED}
    machine = StreamStateMachine("cam")
    machine.to(S.DISABLED, "starts disabled")
    with pytest.raises(InvalidTransitionError):
        machine.to(S.STREAMING)
    machine.to(S.CONNECTING, "enabled")
    assert [t.target for t in machine.history] == [S.DISABLED, S.CONNECTING]
