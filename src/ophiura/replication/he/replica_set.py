"""The replicas of one volume and their life: attach on (re)connection, check the SE's history,
choose and drive its recovery, fail, re-attach. This is the half of the HE that decides from a
snapshot (`recovery.choose_recovery`) and then acts; `volume.py` is the other half, the I/O
paths, which only read the replicas and report what happened to them.

`ReplicaSet` is held by the volume (`HostElementVolume.replicas`) instead of being a mixin of
it, so what replica life may touch of the volume is written down: the facts it reads
(`VolumeLink`: name, ballot and base, size, latest seq, queue, closed) and four things it may
do to it, given at construction (fence it, resend a queued op to one replica, spawn a task,
announce a state change). It is a read-only mapping name -> `Replica` so the I/O paths iterate
it as they did the dict. Every replica state change goes through `se_session.next_state`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Coroutine, ItemsView, Iterator, KeysView, Mapping, ValuesView
from dataclasses import replace
from typing import TYPE_CHECKING, Any, Protocol

from ophiura.causes import describe
from ophiura.replication.he.quorum import AckTracker
from ophiura.replication.he.recovery import (
    PeerView,
    RecoveryKind,
    RecoveryPlan,
    RecoveryView,
    choose_recovery,
)
from ophiura.replication.he.replica import Replica
from ophiura.replication.he.se_session import (
    READABLE,
    ReplicaEvent,
    ReplicaState,
    SeSession,
    next_state,
    se_errors,
)
from ophiura.replication.he.write_queue import WriteOp, WriteQueue

if TYPE_CHECKING:
    from collections.abc import Sequence

    from ophiura.replication.he.volume import Signal, VolumeConfig
    from ophiura.replication.wire.client import SeClient, VolumeState

# The volume's logger: these lines were always the volume's, and operators grep them as such.
log = logging.getLogger("ophiura.replication.he.volume")


class VolumeLink(Protocol):
    """What replica life reads of the volume that holds it (`HostElementVolume`).

    The ballot `(epoch, he_id)` and `base` are told to every SE attached and decide the history
    check; `latest_seq` and `queue` decide quick recovery and what to resend; `size` and the
    config's block size open the SE's volume, its timings pace re-attach and recovery; `closed`
    stops every loop.
    """

    name: str
    config: VolumeConfig
    epoch: int
    he_id: int
    base: int
    base_ballot: tuple[int, int]  # the ballot that wrote seq `base` in our history
    epoch_base: int | None
    queue: WriteQueue
    closed: bool

    @property
    def size(self) -> int: ...

    @property
    def latest_seq(self) -> int: ...


class ReplicaSet(Mapping[str, Replica]):
    """The replicas of one volume, by SE name, and their life (see the module docstring)."""

    def __init__(
        self,
        volume: VolumeLink,
        sessions: Sequence[SeSession],
        signal: Signal,
        *,
        fence: Callable[[str], None],
        resend: Callable[[Replica, WriteOp], None],
        spawn: Callable[[Coroutine[Any, Any, Any], str], asyncio.Task[Any]],
        changed: Callable[[], None],
    ) -> None:
        self._volume = volume
        self._by_name = {s.name: Replica(s) for s in sessions}
        self._signal = signal
        self._fence = fence  # the volume stops serving: another HE owns it
        self._resend = resend  # one queued op to one replica, behind the recover command
        self._spawn = spawn  # a task the volume cancels when it closes
        self._changed = changed  # `on_state_change`, after every replica state change
        self._stale, self._se_error, self._transport = se_errors()

    # ---- the mapping (hot: the write path iterates it per write) -------------------------
    # One volume's replicas: equal only to itself, not by content as Mapping would have it,
    # and hashable like the volume it replaces as the owner of the session listeners (a bound
    # method hashes its owner).
    __eq__ = object.__eq__
    __hash__ = object.__hash__

    def __getitem__(self, name: str) -> Replica:
        return self._by_name[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._by_name)

    def __len__(self) -> int:
        return len(self._by_name)

    def get(self, name: str, default: Replica | None = None) -> Replica | None:
        return self._by_name.get(name, default)

    def keys(self) -> KeysView[str]:
        return self._by_name.keys()

    def values(self) -> ValuesView[Replica]:
        return self._by_name.values()

    def items(self) -> ItemsView[str, Replica]:
        return self._by_name.items()

    # ---- replica life --------------------------------------------------------------------
    def transition(self, r: Replica, event: ReplicaEvent) -> None:
        old = r.state
        r.state = next_state(old, event)
        if r.state is not old:
            log.info("%s/%s: %s -> %s (%s)", self._volume.name, r.name, old, r.state, event)
            r.history.append(
                {
                    "at": round(time.time(), 3),
                    "state": r.state.value,
                    "event": event.value,
                    "seq": self._volume.latest_seq,
                }
            )
        self._signal.notify()
        self._changed()

    def fail(self, r: Replica, event: ReplicaEvent, why: str) -> None:
        r.last_error = why
        r.failures[event.value] = r.failures.get(event.value, 0) + 1
        r.incarnation += 1
        r.client = None
        if r.state not in (ReplicaState.FAILED, ReplicaState.CLOSED, ReplicaState.FENCED):
            self.transition(r, event)
        elif r.state is ReplicaState.FAILED:
            self._signal.notify()

    def replica_lost(self, r: Replica, inc: int, why: str) -> None:
        """An I/O error on this replica: it is failed and its connection is re-made."""
        if r.incarnation != inc or self._volume.closed:
            return
        gen = r.session.generation
        log.warning("%s/%s: failed: %s", self._volume.name, r.name, why)
        self.fail(r, ReplicaEvent.LOST, why)
        r.session.lost(why, gen)

    def session_lost(self, session: SeSession) -> None:
        """The session's connection dropped (`SeSession.on_lost`)."""
        r = self._by_name.get(session.name)
        if (
            r is None
            or self._volume.closed
            or r.state in (ReplicaState.FAILED, ReplicaState.CLOSED)
        ):
            return
        self.fail(r, ReplicaEvent.LOST, session.last_error or "connection lost")

    async def reattach_later(self, r: Replica, inc: int) -> None:
        """A replica declared failed while its session stays up (lagging): attach it again."""
        await asyncio.sleep(self._volume.config.reattach_delay)
        if r.incarnation == inc and r.state is ReplicaState.FAILED and r.session.connected:
            await self.attach(r.session)

    def recovered(self, r: Replica) -> None:
        self.transition(r, ReplicaEvent.RECOVERED)
        r.progress = (r.progress[1], r.progress[1])
        log.info(
            "%s/%s: recovered (%s) at seq %d",
            self._volume.name,
            r.name,
            r.last_recovery,
            r.tracker.contiguous,
        )

    # ---- attach: learn where the SE stands, decide, act ----------------------------------
    async def attach(self, session: SeSession) -> None:
        """The SE (re)connected: learn where it stands, choose its recovery, start it."""
        v = self._volume
        r = self._by_name.get(session.name)
        if r is None or v.closed or r.state in (ReplicaState.CLOSED, ReplicaState.FENCED):
            return
        if r.state is not ReplicaState.FAILED and r.state is not ReplicaState.CONNECTING:
            self.fail(r, ReplicaEvent.LOST, "reconnected")
        if r.state is ReplicaState.FAILED:
            self.transition(r, ReplicaEvent.RETRY)
        r.incarnation += 1
        inc = r.incarnation
        client = session.client
        gen = session.generation
        for _ in range(10_000):  # bounded; each round waits, and stops on any state change
            if v.closed or r.incarnation != inc or client is None:
                return
            try:
                vs = await client.open_volume(v.name, v.size, v.config.block_size)
                fresh = vs.epoch == 0 and vs.applied_seq == 0
                ours = (v.epoch, v.he_id)
                if vs.ballot > ours:
                    self._fence(f"SE {r.name} holds ballot {vs.ballot} > ours {ours}")
                    self.transition(r, ReplicaEvent.FENCED)
                    return
                se_epoch = vs.epoch
                if vs.ballot != ours or vs.base_seq != v.base:
                    # Adopt and establish our ballot before deciding anything: an SE holding
                    # an older ballot's writes above our base truncates them now and reports
                    # it (interrupted-full), on this attach and on every later one.
                    vs = await client.set_epoch(v.name, v.epoch, he_id=v.he_id, base=v.base)
                if vs.size < v.size:  # grown while this SE was away
                    vs = await client.resize_volume(v.name, v.size)
            except self._stale as exc:
                self._fence(f"SE {r.name}: {exc}")
                if r.incarnation == inc:
                    self.transition(r, ReplicaEvent.FENCED)
                return
            except self._transport as exc:
                why = f"attach: {describe(exc)}"
                if r.incarnation == inc:
                    self.fail(r, ReplicaEvent.LOST, why)
                    session.lost(why, gen)
                return
            try:
                matches = await self._holds_our_history(r, vs)
            except self._transport as exc:
                why = f"attach: history check: {describe(exc)}"
                if r.incarnation == inc:
                    self.fail(r, ReplicaEvent.LOST, why)
                    session.lost(why, gen)
                return
            if matches is None:  # no up SE to compare with yet (a takeover is attaching)
                r.last_error = "waiting for an up SE to check its history against"
                await self._signal.wait(0.2)
                continue
            if vs.applied_seq + 1 < v.queue.first_seq:
                await self._learn_peer_logs(r)  # beyond the queue: replay or full decides
            if v.closed or r.incarnation != inc:
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

    async def _holds_our_history(self, r: Replica, vs: VolumeState) -> bool | None:
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
        if t == 0 or t > self._volume.base or recovering:
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
        v = self._volume
        if seq > v.base:
            return (v.epoch, v.he_id)
        if seq == v.base and v.base_ballot != (0, 0):
            return v.base_ballot
        from ophiura.replication.wire.client import LogGoneError

        peers = [
            p
            for p in self._by_name.values()
            if p is not exclude
            and p.state in READABLE
            and p.client is not None
            and p.tracker.contiguous >= seq
        ]
        for p in peers:
            try:
                _, _, records = await asyncio.wait_for(p.client.log_read(v.name, seq, seq, 1), 2.0)
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
            for p in self._by_name.values()
            if p is not r and p.state in READABLE and p.client is not None
        ]

        async def ask(p: Replica) -> None:
            try:
                vs = await asyncio.wait_for(p.client.volume_state(self._volume.name), 2.0)
            except self._transport:
                p.log_first_seq = None
                return
            p.log_first_seq = vs.log_first_seq

        await asyncio.gather(*(ask(p) for p in peers))

    def _recovery_view(
        self, r: Replica, vs: VolumeState, se_epoch: int, fresh: bool
    ) -> RecoveryView:
        v = self._volume
        peers = tuple(
            PeerView(
                p.name,
                p.tracker.contiguous,
                p.log_first_seq,
                p.session.rtt,
            )
            for p in self._by_name.values()
            if p is not r and p.state in READABLE and p.client is not None
        )
        return RecoveryView(
            se_applied=vs.applied_seq,
            se_epoch=se_epoch,
            current_epoch=v.epoch,
            latest_seq=v.latest_seq,
            queue_first_seq=v.queue.first_seq,
            peers=peers,
            epoch_base=v.epoch_base,
            se_state=str(vs.state),
            se_wiped=fresh and v.latest_seq > 0,
        )

    # ---- recovery: act on the plan ---------------------------------------------------------
    def _begin(self, r: Replica, plan: RecoveryPlan, client: SeClient, applied: int) -> None:
        v = self._volume
        r.client = client
        r.plan = plan
        if plan.kind is RecoveryKind.NONE:
            r.tracker = AckTracker(applied)
            r.target = applied
            self.transition(r, ReplicaEvent.CAUGHT_UP)
            return
        r.last_recovery = plan.kind.value
        r.recoveries[plan.kind.value] = r.recoveries.get(plan.kind.value, 0) + 1
        log.warning("%s/%s: %s recovery: %s", v.name, r.name, plan.kind, plan.reason)
        inc = r.incarnation
        if plan.kind is RecoveryKind.QUICK:
            r.tracker = AckTracker(applied)
            r.recovery_start = applied
            r.target = v.latest_seq
            r.progress = (0, r.target - applied)
            self.transition(r, ReplicaEvent.BEHIND_QUICK)
            for op in v.queue.since(applied):
                self._resend(r, op)
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
        self.transition(r, event)
        # The recover command goes on the wire first, then the writes after `upto`.
        pull = self._spawn(self._recover_cmd(client, plan), f"recover-{r.name}")
        for op in v.queue.since(plan.upto):
            self._resend(r, op)
        self._spawn(self._drive_recovery(r, inc, plan, client, pull), f"drive-{r.name}")

    def _replay_to_full(self, r: Replica, plan: RecoveryPlan, why: str) -> RecoveryPlan:
        """The replay cannot be served (the peer's log moved on): same peer, full copy."""
        full = RecoveryPlan(RecoveryKind.FULL, why, plan.resend_from, plan.peer, plan.upto)
        r.plan = full
        r.last_recovery = "full"
        r.recoveries["full"] = r.recoveries.get("full", 0) + 1
        self.transition(r, ReplicaEvent.BEHIND_FULL)
        return full

    async def _recover_cmd(self, client: SeClient, plan: RecoveryPlan) -> None:
        v = self._volume
        peer = self._by_name[plan.peer or ""].session.spec
        upto_ballot = await self._ballot_at(plan.upto) if plan.upto else (0, 0)
        await client.recover(
            v.name,
            v.epoch,
            plan.kind.value,
            (peer.name, peer.host, peer.port),
            plan.upto,
            he_id=v.he_id,
            upto_ballot=upto_ballot or (0, 0),
        )

    async def _drive_recovery(
        self,
        r: Replica,
        inc: int,
        plan: RecoveryPlan,
        client: SeClient,
        pull: asyncio.Task[None],
    ) -> None:
        """Wait for the SE to finish pulling from its peer; poll its progress for status."""
        v = self._volume
        try:
            try:
                await pull
            except self._se_error as exc:
                if plan.kind is not RecoveryKind.REPLAY or isinstance(exc, self._stale):
                    raise
                log.warning("%s/%s: replay refused (%s): full copy instead", v.name, r.name, exc)
                if r.incarnation != inc:
                    return
                plan = self._replay_to_full(r, plan, f"replay failed: {exc}")
                await self._recover_cmd(client, plan)
            last_progress, last_change = None, time.monotonic()
            while r.incarnation == inc and not v.closed:
                vs = await client.volume_state(v.name)
                r.progress = (vs.recovery_done, vs.recovery_total)
                r.se_applied = vs.applied_seq
                if vs.state == "up" and vs.applied_seq >= r.target:
                    r.tracker.raise_to(vs.applied_seq)
                    self.recovered(r)
                    return
                if (
                    plan.kind is RecoveryKind.REPLAY
                    and vs.state in ("gap", "interrupted-replay")
                    and vs.detail.startswith("log-gone")
                ):
                    # The SE pulls after RECOVER answered OK, so a peer log that is gone shows
                    # here, not as a refusal; waiting for the stall timeout retried the replay
                    # forever (the peer's log only moves further on).
                    log.warning("%s/%s: %s: full copy instead", v.name, r.name, vs.detail)
                    plan = self._replay_to_full(r, plan, vs.detail)
                    await self._recover_cmd(client, plan)
                    last_progress, last_change = None, time.monotonic()
                    continue
                now = time.monotonic()
                if r.progress != last_progress:
                    last_progress, last_change = r.progress, now
                elif now - last_change > v.config.recovery_stall:
                    raise TimeoutError(f"{plan.kind} recovery made no progress")
                await asyncio.sleep(v.config.recovery_poll)
        except self._stale as exc:
            self._fence(f"SE {r.name} during recovery: {exc}")
        except self._transport as exc:
            why = f"{plan.kind} recovery: {describe(exc)}"
            self.replica_lost(r, inc, why)
