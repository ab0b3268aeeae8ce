"""The SE volume lifecycle table (`se.lifecycle`): every event outside it is an error."""

from __future__ import annotations

import pytest

from ophiura.replication.se.lifecycle import (
    TRANSITIONS,
    LifecycleError,
    VolEvent,
    VolState,
    next_state,
)

S, E = VolState, VolEvent


@pytest.mark.parametrize(
    ("state", "event", "new"),
    [
        (S.UP, E.RECOVER_REPLAY, S.RECOVERING_REPLAY),
        (S.UP, E.LOADED_FULL, S.INTERRUPTED_FULL),
        (S.RECOVERING_REPLAY, E.DONE, S.UP),
        (S.RECOVERING_REPLAY, E.STOPPED, S.INTERRUPTED_REPLAY),
        (S.RECOVERING_FULL, E.STOPPED, S.INTERRUPTED_FULL),
        (S.INTERRUPTED_REPLAY, E.RECOVER_REPLAY, S.RECOVERING_REPLAY),
        (S.INTERRUPTED_REPLAY, E.RECOVER_FULL, S.RECOVERING_FULL),
        (S.RECOVERING_REPLAY, E.DIVERGED, S.INTERRUPTED_FULL),
        (S.UP, E.DIVERGED, S.INTERRUPTED_FULL),
        (S.INTERRUPTED_FULL, E.DISK_ERROR, S.FAILED),
    ],
)
def test_allowed(state: VolState, event: VolEvent, new: VolState) -> None:
    assert next_state(state, event) is new


@pytest.mark.parametrize(
    ("state", "event"),
    [
        (S.UP, E.DONE),  # nothing to finish
        (S.UP, E.STOPPED),
        (S.INTERRUPTED_REPLAY, E.DONE),  # only a running pull finishes: resume first
        (S.INTERRUPTED_FULL, E.STOPPED),
        (S.RECOVERING_FULL, E.LOADED_FULL),  # loading happens once, from UP
        (S.FAILED, E.RECOVER_FULL),  # a failed disk is final until a restart
        (S.FAILED, E.DIVERGED),
    ],
)
def test_refused(state: VolState, event: VolEvent) -> None:
    with pytest.raises(LifecycleError):
        next_state(state, event)


def test_every_state_has_an_entry_and_up_is_reachable_from_every_live_state() -> None:
    assert set(TRANSITIONS) == set(VolState)
    for state in VolState:
        if state is S.FAILED:
            continue
        seen, todo = {state}, [state]
        while todo:
            for new in TRANSITIONS[todo.pop()].values():
                if new not in seen:
                    seen.add(new)
                    todo.append(new)
        assert S.UP in seen, state
    assert set(TRANSITIONS[S.FAILED].values()) == {S.FAILED}
