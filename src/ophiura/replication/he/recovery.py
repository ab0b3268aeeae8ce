"""Which recovery an SE needs when it (re)attaches: a pure decision over a snapshot.

StarFish §3: the SE reports its highest applied sequence number; the HE then knows exactly what
it missed. Quick recovery resends from the HE write queue; replay makes the SE pull the missed
writes from an up-to-date peer's log; full copies the whole volume from a peer (long outage, a
new or wiped SE, or an SE whose tail diverged because it missed a takeover).

The plan also says where the HE's own resending starts: the SE gets writes `resend_from..`
from the HE (queued ones now, new ones as they come), and everything up to `upto` from the
peer. Choosing `upto` = the peer's acknowledged watermark (not the newest assigned seq) means
the peer surely holds what it is asked for, and the writes between are still in the HE queue
because the peer, a live SE, has not acknowledged them yet.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class RecoveryKind(StrEnum):
    NONE = "none"  # already holds the newest write
    QUICK = "quick"
    REPLAY = "replay"
    FULL = "full"
    BLOCKED = "blocked"  # needs a peer and none is up to date: retry later


@dataclass(frozen=True)
class PeerView:
    """An up SE that could serve as recovery source."""

    name: str
    watermark: int  # contiguous acknowledged seq
    log_first_seq: int | None = None  # replay from s works iff s >= this; None: unknown
    rtt: float = 0.0


@dataclass(frozen=True)
class RecoveryView:
    se_applied: int
    se_epoch: int
    current_epoch: int
    latest_seq: int  # newest seq assigned by this HE
    queue_first_seq: int  # oldest seq still in the HE write queue (latest+1 when empty)
    peers: tuple[PeerView, ...] = ()
    epoch_base: int | None = None  # seq at which the current epoch began (takeover point)
    # as the SE reports it: up, gap, recovering-replay|full, interrupted-replay|full
    se_state: str = "up"
    se_wiped: bool = False  # the SE has no data for this volume (new, or its files were lost)
    se_diverged: bool = False  # what it holds is not a prefix of the owner's history


@dataclass(frozen=True)
class RecoveryPlan:
    kind: RecoveryKind
    reason: str
    resend_from: int = 0  # first seq the HE sends itself
    peer: str | None = None
    upto: int = 0  # the peer brings the SE to this seq


def choose_recovery(v: RecoveryView) -> RecoveryPlan:
    applied = v.se_applied
    diverged = (
        v.se_diverged
        or applied > v.latest_seq
        or (v.se_epoch < v.current_epoch and v.epoch_base is not None and applied > v.epoch_base)
    )
    full_pending = v.se_state in ("recovering-full", "interrupted-full")
    if full_pending or v.se_wiped or diverged:
        if v.se_wiped and applied == v.latest_seq == 0:
            return RecoveryPlan(RecoveryKind.NONE, "new volume", resend_from=1)
        why = (
            f"full copy to finish ({v.se_state})"
            if full_pending
            else "diverged tail from an older epoch"
            if diverged
            else "new or wiped SE"
        )
        return _from_peer(v, RecoveryKind.FULL, why)
    # An SE whose replay was stopped holds its recovered prefix and the writes after the
    # replay's target, not those between: resending from the prefix cannot fill that hole
    # (the SE's stream is past it), only the replay can. Never quick, never "up to date".
    replay_pending = v.se_state in ("recovering-replay", "interrupted-replay")
    if applied == v.latest_seq and v.se_state in ("up", "gap"):
        return RecoveryPlan(RecoveryKind.NONE, "up to date", resend_from=applied + 1)
    if applied == 0 and v.latest_seq > 0 and v.queue_first_seq > 1:
        return _from_peer(v, RecoveryKind.FULL, "empty SE")
    if not replay_pending and applied + 1 >= v.queue_first_seq:
        return RecoveryPlan(
            RecoveryKind.QUICK,
            f"writes {applied + 1}..{v.latest_seq} are in the HE queue",
            resend_from=applied + 1,
        )
    return _from_peer(v, RecoveryKind.REPLAY, f"missed writes after {applied}")


def _from_peer(v: RecoveryView, kind: RecoveryKind, why: str) -> RecoveryPlan:
    applied = v.se_applied
    # Any up peer whose acked seq reaches back into the HE queue can be the source: the writes
    # between its watermark and the newest are resent by the HE.
    usable = [p for p in v.peers if p.watermark + 1 >= v.queue_first_seq]
    if kind is RecoveryKind.REPLAY:
        loggers = [p for p in usable if p.log_first_seq is None or p.log_first_seq <= applied + 1]
        if not loggers:
            if not usable:
                return RecoveryPlan(RecoveryKind.BLOCKED, f"{why}: no up-to-date peer")
            kind, why = RecoveryKind.FULL, f"{why}: no peer log reaches back to {applied + 1}"
        else:
            usable = loggers
    if not usable:
        return RecoveryPlan(RecoveryKind.BLOCKED, f"{why}: no up-to-date peer")
    best = min(usable, key=lambda p: (-p.watermark, p.rtt, p.name))
    return RecoveryPlan(
        kind, why, resend_from=best.watermark + 1, peer=best.name, upto=best.watermark
    )
