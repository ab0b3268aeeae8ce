"""`Replica`: one volume on one SE as this HE tracks it, a plain record.

Its state changes, attach and recovery are `replica_set.ReplicaSet`'s; the volume's I/O paths
(`volume.py`) read and update its tracker and in-flight sends. Kept apart so both sides share
one record without either owning the other's logic.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import TYPE_CHECKING, Any

from ophiura.replication.he.quorum import AckTracker
from ophiura.replication.he.recovery import RecoveryPlan
from ophiura.replication.he.se_session import ReplicaState, SeSession

if TYPE_CHECKING:
    from ophiura.replication.wire.client import SeClient

HISTORY = 16  # state changes kept per replica for `status`


class Replica:
    """One volume on one SE, as this HE tracks it."""

    def __init__(self, session: SeSession) -> None:
        self.session = session
        self.state = ReplicaState.CONNECTING
        self.incarnation = 0
        self.client: SeClient | None = None  # the session's client once attached
        self.tracker = AckTracker(0)
        self.target = 0  # seq at which the current recovery is complete
        self.recovery_start = 0
        self.plan: RecoveryPlan | None = None
        self.progress: tuple[int, int] = (0, 0)
        self.se_epoch = 0
        self.se_applied = 0
        # Where this SE's replay log starts (VolumeState.log_first_seq): a peer can replay
        # seq s from it iff s >= this. Asked for when another SE may need a replay; None: unknown.
        self.log_first_seq: int | None = None
        self.last_error: str | None = None
        self.last_recovery: str | None = None  # kind of the last recovery, for status/tests
        self.recoveries: dict[str, int] = {}
        self.failures: dict[str, int] = {}  # event -> count (lost, lagging), for status/tests
        # the last state changes (wall time, state, event, HE latest seq): a status poll shows a
        # recovery that began and ended between two polls (a quick one lasts ~0.1 s)
        self.history: deque[dict[str, Any]] = deque(maxlen=HISTORY)
        # sends not known to be finished, oldest first: (tick, reply future, incarnation, seq,
        # waiter) (see `HostElementVolume._send`); finished ones are dropped from the left
        self.inflight: deque[tuple[int, asyncio.Future[Any], int, int, Any]] = deque()
        self.deferred = 0  # sends queued with call_soon, not on the wire yet
        self.reading = 0  # reads sent to this SE and not answered yet (read_route.best)
        self.reads = 0  # reads this SE served (status: how the load was divided)

    @property
    def name(self) -> str:
        return self.session.name
