"""The life of each replica of a volume: attach on (re)connection, choose and drive recovery,
fail, fence. Split from `volume.py` (the I/O paths) because this is the other half of the HE:
the part that decides from a snapshot (`recovery.choose_recovery`) and then acts.

`ReplicaLife` is a mixin of `HostElementVolume`; it uses the volume's queue, epoch, signal and
task set, and drives every replica state change through `se_session.next_state`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from dataclasses import replace
from typing import Any

from ophiura.causes import describe
from ophiura.replication.he.quorum import AckTracker
from ophiura.replication.he.recovery import (
    PeerView,
    RecoveryKind,
    RecoveryPlan,
    RecoveryView,
    choose_recovery,
)
from ophiura.replication.he.se_session import (
    READABLE,
    ReplicaEvent,
    ReplicaState,
    SeSession,
    next_state,
)

log = logging.getLogger("ophiura.replication.he.volume")


HISTORY = 16  # state changes kept per replica for `status`


class Replica:
    """One volume on one SE, as this HE tracks it."""

    def __init__(self, session: SeSession) -> None:
        self.session = session
        self.state = ReplicaState.CONNECTING
        self.incarnation = 0
        self.client: Any = None
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
        # waiter) (see HostElementVolume._send); finished ones are dropped from the left
        self.inflight: deque[tuple[int, asyncio.Future[Any], int, int, Any]] = deque()
        self.deferred = 0  # sends queued with call_soon, not on the wire yet
        self.send_task_name = f"send-{session.name}"

    @property
    def name(self) -> str:
        return self.session.name


class ReplicaLife:
    """Replica state handling for `HostElementVolume` (see the module docstring)."""

    # ---- replica life --------------------------------------------------------------------
    def _transition(self, r: Replica, event: ReplicaEvent) -> None:
        old = r.state
        r.state = next_state(old, event)
        if r.state is not old:
            log.info("%s/%s: %s -> %s (%s)", self.name, r.name, old, r.state, event)
            r.history.append(
                {
                    "at": round(time.time(), 3),
                    "state": r.state.value,
                    "event": event.value,
                    "seq": self.latest_seq,
                }
            )
        self._signal.notify()
        if self.on_state_change is not None:
            self.on_state_change(self)

    def _fail(self, r: Replica, event: ReplicaEvent, why: str) -> None:
        r.last_error = why
        r.failures[event.value] = r.failures.get(event.value, 0) + 1
        r.incarnation += 1
        r.client = None
        if r.state not in (ReplicaState.FAILED, ReplicaState.CLOSED, ReplicaState.FENCED):
            self._transition(r, event)
        elif r.state is ReplicaState.FAILED:
            self._signal.notify()

    def _replica_lost(self, r: Replica, inc: int, why: str) -> None:
        """An I/O error on this replica: it is failed and its connection is re-made."""
        if r.incarnation != inc or self.closed:
            return
        gen = r.session.generation
        log.warning("%s/%s: failed: %s", self.name, r.name, why)
        self._fail(r, ReplicaEvent.LOST, why)
        r.session.lost(why, gen)

    def _session_lost(self, session: SeSession) -> None:
        r = self.replicas.get(session.name)
        if r is None or self.closed or r.state in (ReplicaState.FAILED, ReplicaState.CLOSED):
            return
        self._fail(r, ReplicaEvent.LOST, session.last_error or "connection lost")

    def _fence(self, why: str) -> None:
        if self.fenced:
            return
        self.fenced = True
        self.fence_reason = why
        self.cache.clear()  # never served again: the new owner may already have written
        log.error("%s: FENCED, no more writes or reads will be served: %s", self.name, why)
        for waiter in list(self._pending.values()):
            waiter.fence(why)
        self._signal.notify()
        if self.on_state_change is not None:
            self.on_state_change(self)

    def _epochs_polled(self, session: SeSession, ballots: dict[str, tuple[int, int]]) -> None:
        """The session's periodic poll: a newer ballot on ANY SE proves another HE claimed
        this volume (`takeover.claim_volume` raises it before anything else), so fence at once;
        an idle HE would otherwise learn it only when its next write is refused."""
        ballot = ballots.get(self.name)
        if ballot is None or ballot <= (self.epoch, self.he_id) or self.fenced or self.closed:
            return
        self._fence(f"SE {session.name} holds ballot {ballot} > ours {(self.epoch, self.he_id)}")

    async def _reattach_later(self, r: Replica, inc: int) -> None:
        await asyncio.sleep(self.config.reattach_delay)
        if r.incarnation == inc and r.state is ReplicaState.FAILED and r.session.connected:
            await self._attach(r.session)

    def _recovered(self, r: Replica) -> None:
        self._transition(r, ReplicaEvent.RECOVERED)
        r.progress = (r.progress[1], r.progress[1])
        log.info(
            "%s/%s: recovered (%s) at seq %d",
            self.name,
            r.name,
            r.last_recovery,
            r.tracker.contiguous,
        )

    async def _attach(self, session: SeSession) -> None:
        """The SE (re)connected: learn where it stands, choose its recovery, start it."""
        r = self.replicas.get(session.name)
        if r is None or self.closed or r.state in (ReplicaState.CLOSED, ReplicaState.FENCED):
            return
        if r.state is not ReplicaState.FAILED and r.state is not ReplicaState.CONNECTING:
            self._fail(r, ReplicaEvent.LOST, "reconnected")
        if r.state is ReplicaState.FAILED:
            self._transition(r, ReplicaEvent.RETRY)
        r.incarnation += 1
        inc = r.incarnation
        client = session.client
        gen = session.generation
        for _ in range(10_000):  # bounded; each round waits, and stops on any state change
            if self.closed or r.incarnation != inc or client is None:
                return
            try:
                vs = await client.open_volume(self.name, self._size, self.config.block_size)
                fresh = vs.epoch == 0 and vs.applied_seq == 0
                ours = (self.epoch, self.he_id)
                if vs.ballot > ours:
                    self._fence(f"SE {r.name} holds ballot {vs.ballot} > ours {ours}")
                    self._transition(r, ReplicaEvent.FENCED)
                    return
                se_epoch = vs.epoch
                if vs.ballot != ours or vs.base_seq != self.base:
                    # Adopt and establish our ballot before deciding anything: an SE holding
                    # an older ballot's writes above our base truncates them now and reports
                    # it (interrupted-full), on this attach and on every later one.
                    vs = await client.set_epoch(
                        self.name, self.epoch, he_id=self.he_id, base=self.base
                    )
                if vs.size < self._size:  # grown while this SE was away
                    vs = await client.resize_volume(self.name, self._size)
            except self._stale as exc:
                self._fence(f"SE {r.name}: {exc}")
                if r.incarnation == inc:
                    self._transition(r, ReplicaEvent.FENCED)
                return
            except self._transport as exc:
                why = f"attach: {describe(exc)}"
                if r.incarnation == inc:
                    self._fail(r, ReplicaEvent.LOST, why)
                    session.lost(why, gen)
                return
            try:
                matches = await self._holds_our_history(r, vs)
            except self._transport as exc:
                why = f"attach: history check: {describe(exc)}"
                if r.incarnation == inc:
                    self._fail(r, ReplicaEvent.LOST, why)
                    session.lost(why, gen)
                return
            if matches is None:  # no up SE to compare with yet (a takeover is attaching)
                r.last_error = "waiting for an up SE to check its history against"
                await self._signal.wait(0.2)
                continue
            if vs.applied_seq + 1 < self.queue.first_seq:
                await self._learn_peer_logs(r)  # beyond the queue: replay or full decides
            if self.closed or r.incarnation != inc:
                return
            # ---- decide from a snapshot, then act (no await until the plan is in place) ----
            r.se_epoch, r.se_applied = se_epoch, vs.applied_seq
            view = self._recovery_view(r, vs, se_epoch, fresh)
            if not matches:
                view = replace(view, se_diverged=True)
            plan = choose_recovery(view)
            if plan.kind is RecoveryKind.BLOCKED:
                r.last_error = plan.reason
                await self._signal.wait(0.2)
                continue
            self._begin(r, plan, client, vs.applied_seq)
            return

    async def _holds_our_history(self, r: Replica, vs: Any) -> bool | None:
        """Is what the SE holds up to its applied seq t a prefix of the history we own?

        Above our base, establishing the ballot already truncated anything else. At or below
        it, an SE that missed whole reigns can hold an unacknowledged tail of an older owner
        that a later owner overwrote (different writes under the same seqs). One owner never
        gives a seq two contents, and an SE's stream only ever gains greater ballots, so the
        SE's stream is a prefix of ours iff the ballot that wrote its seq t is the one that
        wrote t in our history: `base_ballot` at the base, else the record t of an up SE.
        None: no up SE can tell yet; False: unknown or different (a full copy is needed).
        """
        t = vs.applied_seq
        recovering = vs.state in ("recovering-full", "interrupted-full")
        if t == 0 or t > self.base or recovering:
            return True  # nothing held, written under our ballot, or a full copy anyway
        if vs.top_ballot == (0, 0):
            return False
        truth = await self._ballot_at(t, exclude=r)
        if truth is None:
            return None
        return truth == vs.top_ballot

    async def _ballot_at(self, seq: int, exclude: Replica | None = None) -> tuple[int, int] | None:
        """The ballot that wrote `seq` in our history, from the log of an up SE that holds it:
        (0, 0) when no log still has the record, None when no up SE can be asked."""
        if seq > self.base:
            return (self.epoch, self.he_id)
        if seq == self.base and self.base_ballot != (0, 0):
            return self.base_ballot
        from ophiura.replication.wire.client import LogGoneError

        peers = [
            p
            for p in self.replicas.values()
            if p is not exclude
            and p.state in READABLE
            and p.client is not None
            and p.tracker.contiguous >= seq
        ]
        for p in peers:
            try:
                _, _, records = await asyncio.wait_for(
                    p.client.log_read(self.name, seq, seq, 1), 2.0
                )
            except LogGoneError:
                return (0, 0)
            except self._transport:
                continue
            if records and records[0].seq == seq:
                return (records[0].epoch, records[0].he_id)
        return None if not peers else (0, 0)

    async def _learn_peer_logs(self, r: Replica) -> None:
        """Ask every up peer where its replay log starts, so `choose_recovery` picks replay
        only from a peer whose log still reaches back (else full at once, instead of a replay
        the peer refuses). A peer that does not answer in time stays unknown (None); the
        fallback to full on LOG_GONE covers it and a log that moved on meanwhile."""
        peers = [
            p
            for p in self.replicas.values()
            if p is not r and p.state in READABLE and p.client is not None
        ]

        async def ask(p: Replica) -> None:
            try:
                vs = await asyncio.wait_for(p.client.volume_state(self.name), 2.0)
            except self._transport:
                p.log_first_seq = None
                return
            p.log_first_seq = vs.log_first_seq

        await asyncio.gather(*(ask(p) for p in peers))

    def _recovery_view(self, r: Replica, vs: Any, se_epoch: int, fresh: bool) -> RecoveryView:
        peers = tuple(
            PeerView(
                p.name,
                p.tracker.contiguous,
                p.log_first_seq,
                p.session.rtt,
            )
            for p in self.replicas.values()
            if p is not r and p.state in READABLE and p.client is not None
        )
        return RecoveryView(
            se_applied=vs.applied_seq,
            se_epoch=se_epoch,
            current_epoch=self.epoch,
            latest_seq=self.latest_seq,
            queue_first_seq=self.queue.first_seq,
            peers=peers,
            epoch_base=self.epoch_base,
            se_state=str(vs.state),
            se_wiped=fresh and self.latest_seq > 0,
        )

    def _begin(self, r: Replica, plan: RecoveryPlan, client: Any, applied: int) -> None:
        r.client = client
        r.plan = plan
        if plan.kind is RecoveryKind.NONE:
            r.tracker = AckTracker(applied)
            r.target = applied
            self._transition(r, ReplicaEvent.CAUGHT_UP)
            return
        r.last_recovery = plan.kind.value
        r.recoveries[plan.kind.value] = r.recoveries.get(plan.kind.value, 0) + 1
        log.warning("%s/%s: %s recovery: %s", self.name, r.name, plan.kind, plan.reason)
        inc = r.incarnation
        if plan.kind is RecoveryKind.QUICK:
            r.tracker = AckTracker(applied)
            r.recovery_start = applied
            r.target = self.latest_seq
            r.progress = (0, r.target - applied)
            self._transition(r, ReplicaEvent.BEHIND_QUICK)
            for op in self.queue.since(applied):
                self._send(r, op, None, defer=True)
            return
        assert plan.peer is not None
        r.tracker = AckTracker(plan.upto)
        r.recovery_start = applied
        r.target = plan.upto
        r.progress = (0, 0)
        event = (
            ReplicaEvent.BEHIND_REPLAY
            if plan.kind is RecoveryKind.REPLAY
            else ReplicaEvent.BEHIND_FULL
        )
        self._transition(r, event)
        # The recover command goes on the wire first, then the writes after `upto`.
        pull = self._spawn(self._recover_cmd(client, plan), f"recover-{r.name}")
        for op in self.queue.since(plan.upto):
            self._send(r, op, None, defer=True)
        self._spawn(self._drive_recovery(r, inc, plan, client, pull), f"drive-{r.name}")

    def _replay_to_full(self, r: Replica, plan: RecoveryPlan, why: str) -> RecoveryPlan:
        """The replay cannot be served (the peer's log moved on): same peer, full copy."""
        full = RecoveryPlan(RecoveryKind.FULL, why, plan.resend_from, plan.peer, plan.upto)
        r.plan = full
        r.last_recovery = "full"
        r.recoveries["full"] = r.recoveries.get("full", 0) + 1
        self._transition(r, ReplicaEvent.BEHIND_FULL)
        return full

    async def _recover_cmd(self, client: Any, plan: RecoveryPlan) -> None:
        peer = self.replicas[plan.peer or ""].session.spec
        upto_ballot = await self._ballot_at(plan.upto) if plan.upto else (0, 0)
        await client.recover(
            self.name,
            self.epoch,
            plan.kind.value,
            (peer.name, peer.host, peer.port),
            plan.upto,
            he_id=self.he_id,
            upto_ballot=upto_ballot or (0, 0),
        )

    async def _drive_recovery(
        self, r: Replica, inc: int, plan: RecoveryPlan, client: Any, pull: asyncio.Task[None]
    ) -> None:
        """Wait for the SE to finish pulling from its peer; poll its progress for status."""
        try:
            try:
                await pull
            except self._se_error as exc:
                if plan.kind is not RecoveryKind.REPLAY or isinstance(exc, self._stale):
                    raise
                log.warning("%s/%s: replay refused (%s): full copy instead", self.name, r.name, exc)
                if r.incarnation != inc:
                    return
                plan = self._replay_to_full(r, plan, f"replay failed: {exc}")
                await self._recover_cmd(client, plan)
            last_progress, last_change = None, time.monotonic()
            while r.incarnation == inc and not self.closed:
                vs = await client.volume_state(self.name)
                r.progress = (vs.recovery_done, vs.recovery_total)
                r.se_applied = vs.applied_seq
                if vs.state == "up" and vs.applied_seq >= r.target:
                    r.tracker.raise_to(vs.applied_seq)
                    self._recovered(r)
                    return
                if (
                    plan.kind is RecoveryKind.REPLAY
                    and vs.state in ("gap", "interrupted-replay")
                    and vs.detail.startswith("log-gone")
                ):
                    # The SE pulls after RECOVER answered OK, so a peer log that is gone shows
                    # here, not as a refusal; waiting for the stall timeout retried the replay
                    # forever (the peer's log only moves further on).
                    log.warning("%s/%s: %s: full copy instead", self.name, r.name, vs.detail)
                    plan = self._replay_to_full(r, plan, vs.detail)
                    await self._recover_cmd(client, plan)
                    last_progress, last_change = None, time.monotonic()
                    continue
                now = time.monotonic()
                if r.progress != last_progress:
                    last_progress, last_change = r.progress, now
                elif now - last_change > self.config.recovery_stall:
                    raise TimeoutError(f"{plan.kind} recovery made no progress")
                await asyncio.sleep(self.config.recovery_poll)
        except self._stale as exc:
            self._fence(f"SE {r.name} during recovery: {exc}")
        except self._transport as exc:
            why = f"{plan.kind} recovery: {describe(exc)}"
            self._replica_lost(r, inc, why)
