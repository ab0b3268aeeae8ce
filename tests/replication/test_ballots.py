"""Issue 9, failures 1, 4, 5 and 8: ownership is a ballot, a new owner truncates, an SE
acknowledges only what it holds, and an SE that missed a resize comes back.

Each test drives real storage elements (`ophiura se` subprocesses where a kill -9 is needed)
with the real client or the real HE; each failed on the code before the fix (an SE accepted an
equal epoch from anyone and acknowledged any resent `seq <= durable_seq`).
"""

from __future__ import annotations

import asyncio
from dataclasses import replace
from pathlib import Path

import pytest

from ophiura.block.device import BlockDeviceError
from ophiura.replication.he.recovery import RecoveryKind, RecoveryView, choose_recovery
from ophiura.replication.wire import messages
from ophiura.replication.wire.client import SeClient, SeError, StaleEpoch

from .he_harness import (
    SECRET,
    SeHandle,
    he_config,
    start_he,
    wait_all_up,
    wait_for,
)

BS = 4096


def block(tag: int) -> bytes:
    return tag.to_bytes(8, "little") * (BS // 8)


async def connect(se: SeHandle, name: str = "he") -> SeClient:
    return await SeClient.connect(se.name, "127.0.0.1", se.port, SECRET, client_name=name)


# ---- failure 1: two owners at the same epoch ------------------------------------------------


async def test_equal_epoch_from_another_he_is_not_adopted(ses: list[SeHandle]) -> None:
    """Two claimants that both read epoch 1 and both propose 2: the SE holds one ballot, the
    other claimant's writes (and claims) are refused; a resent seq of the loser is never
    acknowledged as a retransmission of the winner's write."""
    a, b = await connect(ses[0], "he-a"), await connect(ses[0], "he-b")
    try:
        await a.open_volume("v", 1 << 20)
        await a.set_epoch("v", 1, he_id=5, base=0)
        for s in range(1, 4):
            await a.write("v", 1, s, s * BS, block(s), he_id=5, base=0)
        # both take over from epoch 1; b has the higher he_id and comes second
        await a.set_epoch("v", 2, he_id=7, base=messages.NO_BASE)
        st = await b.set_epoch("v", 2, he_id=9, base=3)
        assert st.ballot == (2, 9) and st.base_seq == 3
        with pytest.raises(StaleEpoch) as err:
            await a.write("v", 2, 4, 0, block(40), he_id=7, base=3)
        assert err.value.current == (2, 9)
        with pytest.raises(StaleEpoch):  # and the loser cannot claim the same ballot again
            await a.set_epoch("v", 2, he_id=7, base=3)
        assert await b.write("v", 2, 4, 0, block(4), he_id=9, base=3) == 4
        # a lower he_id coming second is refused outright
        with pytest.raises(StaleEpoch):
            await a.set_epoch("v", 2, he_id=8, base=messages.NO_BASE)
        assert (await b.read("v", 0, BS, ballot=(2, 9))) == block(4)
        with pytest.raises(StaleEpoch):  # a fenced HE is refused reads too (failure 7)
            await a.read("v", 0, BS, ballot=(2, 7))
    finally:
        await a.close()
        await b.close()


async def test_dueling_takeovers_leave_exactly_one_writer(
    ses: list[SeHandle], tmp_path: Path
) -> None:
    """Two standbys take over at once (both read the same epoch): at most one of them can have
    writes acknowledged, and what it reads back is its own data. (Both may lose: each volume
    and its SCSI-state companion are claimed separately, so the duel can split them; a later,
    single takeover then wins, and finds every acknowledged write.)"""
    cfg = he_config(ses)
    old = await start_he(cfg, tmp_path / "old")
    hes = [
        await start_he(replace(cfg, standby=True, state_dir=tmp_path / n), tmp_path / n)
        for n in ("x", "y", "z")
    ]
    try:
        await wait_all_up(old)
        await old.volumes["vol"].data.write(0, block(1))
        await old.stop()
        await asyncio.gather(*(he.takeover() for he in hes[:2]), return_exceptions=True)
        writers = []
        for i, he in enumerate(hes[:2]):
            vol = he.volumes.get("vol")
            if vol is None:
                continue
            try:
                await vol.data.write(BS, block(100 + i))
            except BlockDeviceError:
                continue
            writers.append((i, vol.data))
        assert len(writers) <= 1, [i for i, _ in writers]
        for i, owner in writers:
            assert await owner.read(0, BS) == block(1)
            assert await owner.read(BS, BS) == block(100 + i)
        # the next, single takeover owns it and sees every acknowledged write
        await hes[2].takeover()
        last = hes[2].volumes["vol"].data
        await last.write(2 * BS, block(7))
        assert await last.read(0, BS) == block(1)
        for i, _ in writers:
            assert await last.read(BS, BS) == block(100 + i)
        for _, loser in writers:
            with pytest.raises(BlockDeviceError):
                await loser.write(3 * BS, block(8))
    finally:
        for he in hes:
            await he.stop()


# ---- failure 5: a new owner truncates an older ballot's tail --------------------------------


async def test_establishing_a_base_truncates_an_older_ballots_tail(ses: list[SeHandle]) -> None:
    """The SE holds 1..10 from the old owner; the new one's base is 8 (9 and 10 were never
    acknowledged). Establishing the base drops 9..10 for good: the SE says it needs a full
    copy, on this attach and on every later one, and never acknowledges the new owner's seq 9
    as a duplicate of the old one's."""
    old, new = await connect(ses[1], "old"), await connect(ses[1], "new")
    try:
        await old.open_volume("v", 1 << 20)
        for s in range(1, 11):
            await old.write("v", 1, s, s * BS, block(s), he_id=3, base=0)
        st = await new.set_epoch("v", 2, he_id=4, base=messages.NO_BASE)  # the claim
        assert st.applied_seq == 10 and st.base_seq == messages.NO_BASE
        st = await new.set_epoch("v", 2, he_id=4, base=8)  # the attach
        assert st.state == "interrupted-full" and "diverged" in st.detail, st
        # the new owner's seq 10 is not a duplicate of the old owner's 10: it waits for 9
        # (before the fix it was acknowledged at once, never written)
        ten = asyncio.ensure_future(new.write("v", 2, 10, 10 * BS, block(100), he_id=4, base=8))
        for _ in range(3):  # requests on one connection are taken in order: 10 arrived first
            await new.volume_state("v")
        assert not ten.done(), ten
        assert await new.write("v", 2, 9, 9 * BS, block(90), he_id=4, base=8) == 9
        assert await ten == 10
        st = await new.set_epoch("v", 2, he_id=4, base=8)  # a second attach: same answer
        assert st.state == "interrupted-full" and st.applied_seq == 0, st
        with pytest.raises(StaleEpoch):
            await old.write("v", 1, 11, 0, block(11), he_id=3, base=0)
    finally:
        await old.close()
        await new.close()
    # it survives a restart: the truncation was durable before the reply
    ses[1].kill9()
    ses[1].spawn()
    await ses[1].wait_listening()
    c = await connect(ses[1])
    try:
        st = await c.volume_state("v")
        assert st.state == "interrupted-full" and st.ballot == (2, 4) and st.base_seq == 8, st
    finally:
        await c.close()


def test_interrupted_recoveries_are_resumed_never_quick() -> None:
    """choose_recovery from what the SE reports: a stopped replay or full copy is resumed from
    a peer, never answered with a resend from the HE queue (which cannot fill its hole)."""
    from ophiura.replication.he.recovery import PeerView

    peer = (PeerView("a", 200, 1),)
    for state, kind in (
        ("interrupted-replay", RecoveryKind.REPLAY),
        ("recovering-replay", RecoveryKind.REPLAY),
        ("interrupted-full", RecoveryKind.FULL),
    ):
        v = RecoveryView(
            se_applied=150,
            se_epoch=2,
            current_epoch=2,
            latest_seq=200,
            queue_first_seq=100,
            peers=peer,
            se_state=state,
        )
        assert choose_recovery(v).kind is kind, state
    up = RecoveryView(150, 2, 2, 200, 100, peer, se_state="up")
    assert choose_recovery(up).kind is RecoveryKind.QUICK


# ---- failure 4: an SE restarted during recovery acknowledges only what it holds -------------


async def test_se_restarted_during_recovery_does_not_ack_what_it_lacks(
    ses: list[SeHandle],
) -> None:
    src, dst = ses[0], ses[1]
    ca, cb = await connect(src), await connect(dst)
    try:
        for c in (ca, cb):
            await c.open_volume("v", 8 << 20)
            await c.set_epoch("v", 1, he_id=2, base=0)
        for s in range(1, 11):
            for c in (ca, cb):
                await c.write("v", 1, s, s * BS, block(s), he_id=2, base=0)
        for s in range(11, 1501):
            await ca.write("v", 1, s, (s % 2000) * BS, block(s), he_id=2, base=0)
        # a replay of 11..1500 at 1 MiB/s: one 4 MiB batch, then a pause of ~4 s; meanwhile
        # current writes 1501..1510 reach both
        await cb.recover("v", 1, "replay", ("a", "127.0.0.1", src.port), 1500, 1 << 20, he_id=2)
        for s in range(1501, 1511):
            for c in (ca, cb):
                await c.write("v", 1, s, (s % 2000) * BS, block(s), he_id=2, base=0)
        st = await cb.volume_state("v")
        assert st.state == "recovering-replay" and st.applied_seq < 1500, st
    finally:
        await cb.close()
    dst.kill9()
    dst.spawn()
    await dst.wait_listening()
    cb = await connect(dst)
    try:
        st = await cb.volume_state("v")
        assert st.state == "interrupted-replay" and st.applied_seq < 1500, st
        prefix = st.applied_seq
        # the HE's queue resends everything after what it reports: the SE must refuse what it
        # does not hold (before the fix it acknowledged every seq <= 1510)
        for s in (prefix + 1, 1200, 1500):
            with pytest.raises(SeError) as err:
                await cb.write("v", 1, s, (s % 2000) * BS, block(s), he_id=2, base=0)
            assert err.value.code == messages.ErrorCode.NOT_HELD, err.value
        # what it holds is acknowledged again: its prefix and the current writes after 1000
        assert await cb.write("v", 1, 1505, (1505 % 2000) * BS, block(1505), he_id=2) == 1505
        # RECOVER resumes the replay and brings the volume up with everything
        await cb.recover("v", 1, "replay", ("a", "127.0.0.1", src.port), 1500, he_id=2)
        await wait_for_state(cb, "up")
        assert (await cb.volume_state("v")).applied_seq == 1510
        for s in (11, 500, 1500, 1510):
            assert await cb.read("v", (s % 2000) * BS, BS) == block(s)
    finally:
        await ca.close()
        await cb.close()


async def wait_for_state(c: SeClient, state: str, timeout: float = 30.0) -> None:
    async def check() -> bool:
        return (await c.volume_state("v")).state == state

    deadline = asyncio.get_running_loop().time() + timeout
    while not await check():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"never {state}: {await c.volume_state('v')}")
        await asyncio.sleep(0.05)


# ---- failure 8: a volume grown while an SE was down ------------------------------------------


async def test_se_that_missed_a_resize_rejoins_at_the_new_size(
    ses: list[SeHandle], tmp_path: Path
) -> None:
    he = await start_he(he_config(ses), tmp_path)
    try:
        vol = he.volumes["vol"].data
        await wait_all_up(he)
        await vol.write(0, block(1))
        ses[2].kill9()
        await wait_for(lambda: vol.replicas["c"].state.value != "up", 10, "c seen down")
        new_size = vol.size * 2
        await vol.resize(new_size)
        await vol.write(new_size - BS, block(2))  # a write in the grown part
        ses[2].spawn()
        await ses[2].wait_listening()
        await wait_all_up(he, timeout=20)
        c = await connect(ses[2])
        try:
            st = await c.volume_state("vol")
            assert st.size == new_size and st.state == "up", st
            assert await c.read("vol", new_size - BS, BS) == block(2)
        finally:
            await c.close()
        assert vol.replicas["c"].failures.get("lost", 0) <= 2, vol.replicas["c"].failures
    finally:
        await he.stop()


def test_claim_takes_the_newest_history_not_the_longest() -> None:
    """SE m was away for B's whole reign with A's unacknowledged 101..105; x holds B's
    acknowledged 101..103. The base is x's (B, 103): taking m's longer stream (the old rule,
    max applied seq) would drop B's acknowledged writes."""
    from ophiura.replication.he.takeover import plan_claim

    a, b = (1, 7), (2, 9)
    base, ballot, holders = plan_claim({"m": (a, 105), "x": (b, 103)}, 3, 2, "v", 3)
    assert (base, ballot, holders) == (103, b, ("x",))
    # same ballot: the longer stream of it wins
    assert plan_claim({"m": (b, 101), "x": (b, 103)}, 3, 2, "v", 3)[:2] == (103, b)
