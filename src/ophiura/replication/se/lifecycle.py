"""The life of one volume on a storage element, as a transition table.

Everything that moves a volume between these states is an event below, and an event with no
entry for the current state is a `LifecycleError` (a bug, never ignored). Before this table the
state was three fields (`state`, `recovery`, `recovery_meta`) written from two modules and
derived again for STATUS; issue 9's failures 4 and 5 lived in that gap (an SE restarted during
its recovery reported a state the HE took for "quick-recoverable").

    UP --recover-replay--> RECOVERING_REPLAY --done--> UP
    UP --recover-full----> RECOVERING_FULL   --done--> UP
    RECOVERING_* --stopped (peer lost, log gone)--> INTERRUPTED_*  --recover-*--> RECOVERING_*
    (load with a recovery in the metadata) --loaded-*--> INTERRUPTED_*
    any live state --diverged (a new owner's base below what is held)--> INTERRUPTED_FULL
    any state --disk-error--> FAILED (final until the SE restarts)

What each state promises (the HE decides recovery from it, docs/replication-protocol.md):
UP holds every write up to applied_seq (a hole waiting for a resend is reported `gap`, which is
UP with writes buffered); RECOVERING_* and INTERRUPTED_* hold the recovered prefix and the
current writes after the recovery's target, not those between, serve no reads and are no
recovery source; only RECOVER of the matching kind (or a full copy) brings them back up.
"""

from __future__ import annotations

from enum import StrEnum


class VolState(StrEnum):
    UP = "up"
    RECOVERING_REPLAY = "recovering-replay"
    RECOVERING_FULL = "recovering-full"
    INTERRUPTED_REPLAY = "interrupted-replay"
    INTERRUPTED_FULL = "interrupted-full"
    FAILED = "failed"


class VolEvent(StrEnum):
    RECOVER_REPLAY = "recover-replay"  # RECOVER(replay) started (or resumed)
    RECOVER_FULL = "recover-full"  # RECOVER(full) started (or resumed)
    DONE = "done"  # the pull finished and is durable
    STOPPED = "stopped"  # the pull ended without finishing
    LOADED_REPLAY = "loaded-replay"  # opened with an unfinished replay in the metadata
    LOADED_FULL = "loaded-full"  # opened with an unfinished full copy in the metadata
    DIVERGED = "diverged"  # held writes above a new owner's base were truncated
    DISK_ERROR = "disk-error"


class LifecycleError(Exception):
    """An event the table has no entry for in this state."""


S, E = VolState, VolEvent
_RECOVER = {E.RECOVER_REPLAY: S.RECOVERING_REPLAY, E.RECOVER_FULL: S.RECOVERING_FULL}
_LIVE = (
    S.UP,
    S.RECOVERING_REPLAY,
    S.RECOVERING_FULL,
    S.INTERRUPTED_REPLAY,
    S.INTERRUPTED_FULL,
)

TRANSITIONS: dict[VolState, dict[VolEvent, VolState]] = {
    S.UP: {
        **_RECOVER,
        E.LOADED_REPLAY: S.INTERRUPTED_REPLAY,
        E.LOADED_FULL: S.INTERRUPTED_FULL,
    },
    S.RECOVERING_REPLAY: {**_RECOVER, E.DONE: S.UP, E.STOPPED: S.INTERRUPTED_REPLAY},
    S.RECOVERING_FULL: {**_RECOVER, E.DONE: S.UP, E.STOPPED: S.INTERRUPTED_FULL},
    S.INTERRUPTED_REPLAY: {**_RECOVER},
    S.INTERRUPTED_FULL: {**_RECOVER},
    S.FAILED: {E.DISK_ERROR: S.FAILED},
}
for _state in _LIVE:
    TRANSITIONS[_state][E.DIVERGED] = S.INTERRUPTED_FULL
    TRANSITIONS[_state][E.DISK_ERROR] = S.FAILED

# The states in which the volume serves no reads and is no source for a peer's recovery.
NOT_READABLE = frozenset(s for s in VolState if s is not S.UP)
INTERRUPTED = frozenset({S.INTERRUPTED_REPLAY, S.INTERRUPTED_FULL})


def next_state(state: VolState, event: VolEvent) -> VolState:
    try:
        return TRANSITIONS[state][event]
    except KeyError:
        raise LifecycleError(f"volume event {event} is not allowed in state {state}") from None


def recover_event(kind: str) -> VolEvent:
    return E.RECOVER_FULL if kind == "full" else E.RECOVER_REPLAY


def loaded_event(kind: str) -> VolEvent:
    return E.LOADED_FULL if kind == "full" else E.LOADED_REPLAY
