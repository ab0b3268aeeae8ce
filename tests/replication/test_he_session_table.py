"""The replica state table: every allowed transition, and refusal of everything else."""

from __future__ import annotations

import pytest

from ophiura.replication.he.se_session import (
    COUNTING,
    READABLE,
    SENDING,
    TRANSITIONS,
    ReplicaEvent,
    ReplicaState,
    SessionStateError,
    next_state,
)

S, E = ReplicaState, ReplicaEvent

ALLOWED = [
    (S.CONNECTING, E.CAUGHT_UP, S.UP),
    (S.CONNECTING, E.BEHIND_QUICK, S.RECOVERING_QUICK),
    (S.CONNECTING, E.BEHIND_REPLAY, S.RECOVERING_REPLAY),
    (S.CONNECTING, E.BEHIND_FULL, S.RECOVERING_FULL),
    (S.CONNECTING, E.LOST, S.FAILED),
    (S.UP, E.LOST, S.FAILED),
    (S.UP, E.LAGGING, S.FAILED),
    (S.UP, E.FENCED, S.FENCED),
    (S.RECOVERING_QUICK, E.RECOVERED, S.UP),
    (S.RECOVERING_REPLAY, E.RECOVERED, S.UP),
    (S.RECOVERING_REPLAY, E.BEHIND_FULL, S.RECOVERING_FULL),
    (S.RECOVERING_FULL, E.RECOVERED, S.UP),
    (S.RECOVERING_FULL, E.LOST, S.FAILED),
    (S.FAILED, E.RETRY, S.CONNECTING),
    (S.FAILED, E.CLOSE, S.CLOSED),
]


@pytest.mark.parametrize(("state", "event", "new"), ALLOWED)
def test_allowed(state: ReplicaState, event: ReplicaEvent, new: ReplicaState) -> None:
    assert next_state(state, event) is new


REFUSED = [
    (S.UP, E.RECOVERED),
    (S.UP, E.BEHIND_QUICK),
    (S.FAILED, E.RECOVERED),
    (S.FAILED, E.CAUGHT_UP),
    (S.RECOVERING_QUICK, E.BEHIND_FULL),
    (S.CLOSED, E.RETRY),
    (S.FENCED, E.RETRY),
]


@pytest.mark.parametrize(("state", "event"), REFUSED)
def test_refused(state: ReplicaState, event: ReplicaEvent) -> None:
    with pytest.raises(SessionStateError):
        next_state(state, event)


def test_every_state_has_a_row_and_close_ends_everything() -> None:
    assert set(TRANSITIONS) == set(ReplicaState)
    for state in ReplicaState:
        if state is not S.CLOSED:
            assert TRANSITIONS[state][E.CLOSE] is S.CLOSED


def test_role_sets() -> None:
    assert {S.UP} == READABLE
    assert {S.UP, S.RECOVERING_QUICK} == COUNTING
    assert S.RECOVERING_FULL in SENDING and S.FAILED not in SENDING
