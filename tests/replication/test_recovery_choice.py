"""Recovery choice (StarFish §3) as a table of snapshots."""

from __future__ import annotations

import pytest

from ophiura.replication.he.recovery import (
    PeerView,
    RecoveryKind,
    RecoveryView,
    choose_recovery,
)

K = RecoveryKind
NEAR = PeerView("near", watermark=100, log_first_seq=20, rtt=0.001)
FAR = PeerView("far", watermark=100, log_first_seq=1, rtt=0.050)
BEHIND = PeerView("slow", watermark=40, log_first_seq=1)


def view(applied: int, **kw: object) -> RecoveryView:
    base: dict[str, object] = dict(
        se_applied=applied,
        se_epoch=1,
        current_epoch=1,
        latest_seq=100,
        queue_first_seq=60,
        peers=(NEAR, FAR),
    )
    base.update(kw)
    return RecoveryView(**base)  # type: ignore[arg-type]


CASES = [
    ("up to date", view(100), K.NONE, None, 0),
    ("quick: queue holds 61..100", view(60), K.QUICK, None, 0),
    ("quick: queue holds exactly the first missed", view(59), K.QUICK, None, 0),
    ("replay from the closest peer whose log reaches", view(30), K.REPLAY, "near", 100),
    ("replay only the far log reaches", view(10), K.REPLAY, "far", 100),
    ("full when no log reaches", view(10, peers=(NEAR,)), K.FULL, "near", 100),
    ("full for a wiped SE", view(0, se_wiped=True), K.FULL, "near", 100),
    ("full for an empty SE beyond the queue", view(0), K.FULL, "near", 100),
    (
        "quick for an empty SE when the queue has everything",
        view(0, queue_first_seq=1),
        K.QUICK,
        None,
        0,
    ),
    (
        "nothing to do on a brand new volume",
        view(0, latest_seq=0, queue_first_seq=1, se_wiped=True),
        K.NONE,
        None,
        0,
    ),
    (
        "diverged tail after a missed takeover",
        view(95, se_epoch=0, epoch_base=90),
        K.FULL,
        "near",
        100,
    ),
    (
        "old epoch but no tail past the takeover point",
        view(80, se_epoch=0, epoch_base=90),
        K.QUICK,
        None,
        0,
    ),
    ("ahead of the HE is divergence", view(120), K.FULL, "near", 100),
    ("resume an interrupted full copy", view(50, se_state="recovering-full"), K.FULL, "near", 100),
    ("no up-to-date peer: blocked", view(30, peers=(BEHIND,)), K.BLOCKED, None, 0),
    ("no peer at all: blocked", view(30, peers=()), K.BLOCKED, None, 0),
    ("unknown peer log: try replay", view(30, peers=(PeerView("x", 100),)), K.REPLAY, "x", 100),
    (
        "peer behind newest but inside queue",
        view(30, peers=(PeerView("p", 70, 1),)),
        K.REPLAY,
        "p",
        70,
    ),
]


@pytest.mark.parametrize(("why", "v", "kind", "peer", "upto"), CASES, ids=[c[0] for c in CASES])
def test_choice(why: str, v: RecoveryView, kind: RecoveryKind, peer: str | None, upto: int) -> None:
    plan = choose_recovery(v)
    assert plan.kind is kind, plan.reason
    assert plan.peer == peer
    if kind in (K.REPLAY, K.FULL):
        assert plan.upto == upto
        assert plan.resend_from == upto + 1
    if kind is K.QUICK:
        assert plan.resend_from == v.se_applied + 1
