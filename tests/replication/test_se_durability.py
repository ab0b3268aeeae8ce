"""Storage-element durability edges: what an ack and a STATUS promise, at the worst moment.

Each test stops time at one point inside the SE (a wrapped disk step) and checks the promise
there: a kill -9 right after a log reset or a log overwrite, a disk error with writes queued
behind it, a STATUS taken while a write is on its way to the disk, a commit batch larger than
the log, and a replay source whose stream jumped during a recovery.
"""

from __future__ import annotations

import asyncio
import errno
import shutil
import time
from pathlib import Path
from typing import Any

import pytest

from ophiura.replication.se import recovery as se_recovery
from ophiura.replication.se.metadata import SLOT_SIZE, decode_slot
from ophiura.replication.wire.client import SeClient, SeError

from .test_se_recovery import wait_state
from .test_se_support import MiB, block, client_for, running_se


def _snapshot(tmp: Path, name: str, dest: Path) -> None:
    """What a kill -9 leaves at this instant: every file as the kernel holds it now."""
    vdir = dest / name / "volumes" / "v"
    vdir.mkdir(parents=True)
    for f in ("data", "meta"):
        shutil.copyfile(tmp / name / "volumes" / "v" / f, vdir / f)
    (dest / name / "logs").mkdir()
    shutil.copyfile(tmp / name / "logs" / "v.log", dest / name / "logs" / "v.log")


def _durable_meta(tmp: Path, name: str) -> Any:
    raw = (tmp / name / "volumes" / "v" / "meta").read_bytes()
    slots = [decode_slot(raw[i * SLOT_SIZE : (i + 1) * SLOT_SIZE]) for i in (0, 1)]
    return max((s for s in slots if s is not None), key=lambda m: m.generation)


async def test_kill9_right_after_the_recovery_log_reset_keeps_acked_writes(
    tmp_path: Path,
) -> None:
    snap = tmp_path / "snap"
    async with (
        running_se(tmp_path, "a") as a,
        running_se(tmp_path, "b") as b,
        client_for(a) as ca,
        client_for(b) as cb,
    ):
        for c in (ca, cb):
            await c.open_volume("v", MiB)
        for s in range(1, 21):
            await ca.write("v", 1, s, s * 4096, block(s))
            if s <= 10:
                await cb.write("v", 1, s, s * 4096, block(s))  # b acked 1..10, data unsynced
        rlog = b.volumes["v"].disk.log
        real_reset = rlog.reset

        def reset_then_crash() -> None:
            real_reset()
            if not snap.exists():
                _snapshot(tmp_path, "b", snap)  # kill -9 here, before anything else

        rlog.reset = reset_then_crash  # type: ignore[method-assign]
        await cb.set_epoch("v", 1, base=0)  # the owner establishes its ballot first
        await cb.recover("v", 1, "replay", ("a", "127.0.0.1", a.port), 20)
        await wait_state(cb, "v", {"up"})
    async with running_se(snap, "b") as b2, client_for(b2) as c2:
        st = await c2.volume_state("v")
        assert st.applied_seq >= 10, st  # it acknowledged 1..10: it must not forget them
        for s in range(1, 11):
            assert await c2.read("v", s * 4096, 4096) == block(s), s


async def test_kill9_right_after_a_log_overwrite_keeps_acked_writes(tmp_path: Path) -> None:
    snap = tmp_path / "snap"
    async with running_se(tmp_path, "b", log_size=MiB) as b, client_for(b) as c:
        await c.open_volume("v", 4 * MiB)
        rlog = b.volumes["v"].disk.log
        real_append = rlog.append
        seen: dict[str, int] = {}

        def append_then_crash(records: list[Any]) -> None:
            victim = rlog.would_evict_above(records)
            real_append(records)
            if victim and not snap.exists():
                seen["acked_before"] = records[0].seq - 1
                _snapshot(tmp_path, "b", snap)  # the log lap overwrote records: kill -9 now

        rlog.append = append_then_crash  # type: ignore[method-assign]
        seq = 0
        while not snap.exists() and seq < 1000:  # 1 MiB log: wraps after ~120 writes
            seq += 1
            await c.write("v", 1, seq, (seq % 512) * 8192, block(seq, 8192))
        assert snap.exists()
    async with running_se(snap, "b", log_size=MiB) as b2, client_for(b2) as c2:
        st = await c2.volume_state("v")
        assert st.applied_seq >= seen["acked_before"], (st, seen)
        s = seen["acked_before"]
        assert await c2.read("v", (s % 512) * 8192, 8192) == block(s, 8192)


async def test_no_write_is_acknowledged_after_a_failed_commit(tmp_path: Path) -> None:
    async with running_se(tmp_path) as se, client_for(se) as c:
        await c.open_volume("v", MiB)
        assert await c.write("v", 1, 1, 0, block(1)) == 1
        rlog = se.volumes["v"].disk.log
        real_sync = rlog.sync
        calls = [0]

        def failing_sync() -> None:
            calls[0] += 1
            if calls[0] == 1:
                time.sleep(0.3)  # seq 3 arrives and queues behind this batch meanwhile
                raise OSError(errno.EIO, "injected I/O error")
            real_sync()

        rlog.sync = failing_sync  # type: ignore[method-assign]
        w2 = asyncio.ensure_future(c.write("v", 1, 2, 4096, block(2)))
        await asyncio.sleep(0.1)
        w3 = asyncio.ensure_future(c.write("v", 1, 3, 8192, block(3)))
        r2, r3 = await asyncio.gather(w2, w3, return_exceptions=True)
        # seq 2 may be lost: acknowledging 3 would promise "every write <= 3 is here"
        assert isinstance(r2, SeError) and isinstance(r3, SeError), (r2, r3)
        assert (await c.volume_state("v")).state == "failed"


async def test_status_applied_seq_is_on_disk_and_readable(tmp_path: Path) -> None:
    """An HE that re-attaches trusts STATUS.applied_seq and may read that block at once."""
    async with running_se(tmp_path) as se, client_for(se) as c, client_for(se) as he2:
        await c.open_volume("v", MiB)
        assert await c.write("v", 1, 1, 0, block(1)) == 1
        rlog = se.volumes["v"].disk.log
        real_append = rlog.append

        def slow_append(records: list[Any]) -> None:
            time.sleep(0.3)  # the write is admitted, not yet in the log or the data file
            real_append(records)

        rlog.append = slow_append  # type: ignore[method-assign]
        w2 = asyncio.ensure_future(c.write("v", 1, 2, 4096, block(2)))
        checked = 0
        deadline = time.monotonic() + 10
        while not w2.done() and time.monotonic() < deadline:
            st = await he2.volume_state("v")
            if st.applied_seq >= 2:
                assert await he2.read("v", 4096, 4096) == block(2)
                checked += 1
            await asyncio.sleep(0.01)
        assert await w2 == 2
        assert (await he2.volume_state("v")).applied_seq == 2
        assert await he2.read("v", 4096, 4096) == block(2)
        assert checked <= 1  # a STATUS before the ack claimed at most the finished write


async def test_a_commit_batch_never_laps_the_log(tmp_path: Path) -> None:
    """Writes that piled up behind a slow disk: one batch of 4 MiB into a 1 MiB log would
    overwrite its own first records before the data file holds them durably."""
    async with running_se(tmp_path, "b", log_size=MiB) as b, client_for(b) as c:
        await c.open_volume("v", 8 * MiB)
        vol = b.volumes["v"]
        blocker = vol.call(lambda: time.sleep(0.3))  # the disk is busy: the burst queues up
        acks = await asyncio.gather(
            *[c.write("v", 1, s, (s - 1) * 65536, block(s, 65536)) for s in range(1, 65)]
        )
        await blocker
        assert acks == list(range(1, 65))
        meta = _durable_meta(tmp_path, "b")
        # every record the log no longer holds is durably in the data file
        assert vol.disk.log.oldest_seq() <= meta.data_synced_seq + 1, (
            vol.disk.log.oldest_seq(),
            meta.data_synced_seq,
        )


async def test_replay_source_log_stays_contiguous_after_a_resumed_recovery(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """b's replay is interrupted, gets writes after the old target, then resumes to a newer
    one: its stream jumps. Later b is itself a replay source and must serve exact records."""
    monkeypatch.setattr(se_recovery, "PEER_BEHIND_TIMEOUT", 0.3)
    async with (
        running_se(tmp_path, "a") as a,
        running_se(tmp_path, "b") as b,
        client_for(a) as ca,
        client_for(b) as cb,
    ):
        for c in (ca, cb):
            await c.open_volume("v", MiB)

        async def write(clients: list[SeClient], s: int) -> None:
            await asyncio.gather(*[c.write("v", 1, s, (s % 200) * 4096, block(s)) for c in clients])

        for s in range(1, 11):
            await write([ca, cb], s)
        for s in range(11, 101):
            await write([ca], s)
        # a has only 100 of the 150 asked for: the replay stops "peer stuck"
        await cb.set_epoch("v", 1, base=0)  # the owner establishes its ballot first
        await cb.recover("v", 1, "replay", ("a", "127.0.0.1", a.port), 150)
        st = await wait_state(cb, "v", {"interrupted-replay"})
        assert "interrupted" in st.detail
        for s in range(101, 151):
            await write([ca], s)
        for s in range(151, 161):
            await write([ca, cb], s)  # b logs 151..160 (after the old target)
        for s in range(161, 201):
            await write([ca], s)
        await cb.set_epoch("v", 1, base=0)  # the owner establishes its ballot first
        await cb.recover("v", 1, "replay", ("a", "127.0.0.1", a.port), 200)  # jump to 201
        for s in range(201, 211):
            await write([ca, cb], s)
        st = await wait_state(cb, "v", {"up"})
        assert st.applied_seq == 210
        _, _, records = await cb.log_read("v", 205, 210, MiB)
        assert [r.seq for r in records] == [205, 206, 207, 208, 209, 210]
        assert records[0].data == block(205)
        # whatever b's log starts at, a replay from there gets exactly that seq
        first = (await cb.volume_state("v")).log_first_seq
        assert first is not None and first <= 201
        _, _, records = await cb.log_read("v", first, 210, MiB)
        assert [r.seq for r in records] == list(range(first, 211))


async def test_volume_state_reports_log_first_seq(tmp_path: Path) -> None:
    async with running_se(tmp_path, log_size=MiB) as se, client_for(se) as c:
        st = await c.open_volume("v", 4 * MiB)
        assert st.log_first_seq == 1  # empty log: replay can start at the next write
        for s in range(1, 6):
            await c.write("v", 1, s, s * 4096, block(s))
        assert (await c.volume_state("v")).log_first_seq == 1
        for s in range(6, 400):  # 8 KiB records wrap the 1 MiB log
            await c.write("v", 1, s, (s % 400) * 8192, block(s, 8192))
        first = (await c.volume_state("v")).log_first_seq
        assert first is not None and 1 < first < 400
        _, _, records = await c.log_read("v", first, 399, MiB)
        assert records[0].seq == first
        with pytest.raises(SeError):
            await c.log_read("v", first - 1, 399, MiB)  # LOG_GONE exactly below it


async def test_recovery_reports_up_only_with_everything_applied(tmp_path: Path) -> None:
    """The end of a recovery (a durable metadata write) is slow here. A STATUS meanwhile must
    not say `up` with an old applied_seq, and writes arriving meanwhile must not be lost from
    it (the flake: applied_seq 2144 after seq 2145 was acknowledged)."""
    async with (
        running_se(tmp_path, "a") as a,
        running_se(tmp_path, "b") as b,
        client_for(a) as ca,
        client_for(b) as cb,
    ):
        for c in (ca, cb):
            await c.open_volume("v", MiB)
        for s in range(1, 51):
            await ca.write("v", 1, s, s * 4096, block(s))
        disk = b.volumes["v"].disk
        real_sync = disk.sync_data

        def slow_sync() -> None:
            time.sleep(0.2)
            real_sync()

        disk.sync_data = slow_sync  # type: ignore[method-assign]
        await cb.set_epoch("v", 1, base=0)  # the owner establishes its ballot first
        await cb.recover("v", 1, "full", ("a", "127.0.0.1", a.port), 50)
        seq, seen_up = 50, []
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            seq += 1
            await asyncio.gather(
                *[c.write("v", 1, seq, (seq % 200) * 4096, block(seq)) for c in (ca, cb)]
            )
            st = await cb.volume_state("v")
            if st.state == "up":
                seen_up.append(st.applied_seq)
                assert st.applied_seq == seq, (st, seq)  # every acknowledged write, no less
                if len(seen_up) >= 5:
                    break
        assert len(seen_up) >= 5
