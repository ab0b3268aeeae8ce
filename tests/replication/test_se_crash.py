"""Crashes: an ack means durable (kill -9), torn log tails and torn metadata slots."""

from __future__ import annotations

import asyncio
import os
import shutil
from pathlib import Path

import pytest

from ophiura.replication.se.metadata import SLOT_SIZE, decode_slot
from ophiura.replication.se.replay_log import ALIGN, FILE_HEADER, LogRecord, ReplayLog
from ophiura.replication.wire.client import SeClient, SeError
from ophiura.replication.wire.messages import KIND_WRITE

from .test_se_support import SECRET, MiB, SeProcess, block, client_for, running_se

N = 20


async def test_acknowledged_writes_survive_kill_9(tmp_path: Path) -> None:
    se = SeProcess(tmp_path)
    port = se.start()
    acked: set[int] = set()
    try:
        c = await SeClient.connect("se1", "127.0.0.1", port, SECRET)
        await c.open_volume("v", 16 * MiB)
        await c.set_epoch("v", 1)

        window = asyncio.Semaphore(256)
        failed = asyncio.Event()

        async def one(seq: int) -> None:
            try:
                await c.write("v", 1, seq, (seq % 4096) * 4096, block(seq))
                acked.add(seq)
            except SeError:
                failed.set()  # in flight when the SE died: may or may not be there
            finally:
                window.release()

        writes = []
        for seq in range(1, 200_001):  # bounded; the kill comes long before
            await window.acquire()
            if failed.is_set():
                window.release()
                break
            writes.append(asyncio.ensure_future(one(seq)))
            if len(acked) >= 300 and se.proc is not None:
                se.kill9()  # right after acks, with writes still in flight
        await asyncio.gather(*writes)
        await c.close()
        sent = len(writes)
        assert acked and len(acked) < sent
        se.start()
        async with client_for(se.port) as c2:
            st = await c2.volume_state("v")
            assert st.applied_seq >= max(acked)
            assert st.epoch == 1 and st.state == "up"
            for seq in sorted(acked)[-200:]:
                assert await c2.read("v", (seq % 4096) * 4096, 4096) == block(seq), seq
    finally:
        if se.proc is not None:
            assert se.terminate() == 0


async def test_acked_writes_past_the_metadata_checkpoint_survive_kill_9(tmp_path: Path) -> None:
    """The metadata slot is not synced per write: the log record (seq, epoch) is the ack's
    durability. With no checkpoint at all after the first write, kill -9, lose the unsynced
    data file too: every acknowledged write must come back, from the log alone."""
    se = SeProcess(
        tmp_path, prelude="import ophiura.replication.se.disk as d; d.CHECKPOINT_INTERVAL = 1e9"
    )
    port = se.start()
    acked: list[int] = []
    try:
        async with client_for(port) as c:
            await c.open_volume("v", 16 * MiB)
            await c.set_epoch("v", 3)
            for seq in range(1, 201):  # sequential, then pipelined
                acked.append(await c.write("v", 3, seq, (seq % 4096) * 4096, block(seq)))
            acked += await asyncio.gather(
                *[c.write("v", 3, s, (s % 4096) * 4096, block(s)) for s in range(201, 1201)]
            )
            _, slots = _slots(tmp_path)
            durable = max((m for m in slots if m is not None), key=lambda m: m.generation)
            # the slot on disk knows the epoch but (next to) none of the acknowledged seqs
            assert durable.epoch == 3 and durable.applied_seq <= 1, durable
            se.kill9()
        assert acked == list(range(1, 1201))
        _forget_data_file(tmp_path)  # nothing was synced to it: it may hold nothing
        se = SeProcess(tmp_path)
        se.start()
        async with client_for(se.port) as c2:
            st = await c2.volume_state("v")
            assert (st.applied_seq, st.epoch, st.state) == (1200, 3, "up")
            for seq in acked[-4096:]:
                assert await c2.read("v", (seq % 4096) * 4096, 4096) == block(seq), seq
            # fencing survived too: the old epoch is refused
            with pytest.raises(SeError, match="stale ballot"):
                await c2.write("v", 2, 1201, 0, block(1))
    finally:
        if se.proc is not None:
            assert se.terminate() == 0


async def test_se_process_exits_zero_on_sigterm(tmp_path: Path) -> None:
    se = SeProcess(tmp_path)
    se.start()
    assert se.terminate() == 0


def _log_path(tmp: Path) -> Path:
    return tmp / "se1" / "logs" / "v.log"


async def _write_n(tmp: Path, n: int, snapshot_meta_after: int | None = None) -> bytes | None:
    """n writes to distinct blocks; optionally a copy of the metadata after write k."""
    saved = None
    async with running_se(tmp) as se, client_for(se) as c:
        await c.open_volume("v", 4 * MiB)
        for s in range(1, n + 1):
            await c.write("v", 1, s, s * 4096, block(s))
            if s == snapshot_meta_after:
                saved = (tmp / "se1" / "volumes" / "v" / "meta").read_bytes()
    return saved


def _forget_data_file(tmp: Path) -> None:
    """The data file is written lazily: after a crash it may hold none of the logged writes."""
    path = tmp / "se1" / "volumes" / "v" / "data"
    size = path.stat().st_size
    os.truncate(path, 0)
    os.truncate(path, size)


def _last_record_pos(tmp: Path) -> int:
    rl = ReplayLog(_log_path(tmp), 256 << 20)
    rl.open()
    pos = rl.entries[-1].pos
    rl.close()
    return pos


@pytest.mark.parametrize("damage", ["garble", "truncate"])
async def test_torn_log_tail_is_dropped_not_applied(tmp_path: Path, damage: str) -> None:
    meta19 = await _write_n(tmp_path, N, snapshot_meta_after=N - 1)
    assert meta19 is not None
    # The crash happened while record N was being written: it was never acknowledged, so
    # the metadata still says N-1, and the data file had not been written yet.
    (tmp_path / "se1" / "volumes" / "v" / "meta").write_bytes(meta19)
    pos = _last_record_pos(tmp_path)
    with open(_log_path(tmp_path), "r+b") as f:
        if damage == "garble":
            f.seek(pos + 100)
            f.write(os.urandom(2000))
        else:
            f.truncate(pos + 1000)
    _forget_data_file(tmp_path)
    async with running_se(tmp_path) as se, client_for(se) as c:
        st = await c.volume_state("v")
        assert (st.applied_seq, st.state) == (N - 1, "up")
        for s in range(1, N):
            assert await c.read("v", s * 4096, 4096) == block(s)
        assert await c.read("v", N * 4096, 4096) == bytes(4096)  # no garbage applied
        # and the volume carries on from there
        assert await c.write("v", 1, N, N * 4096, block(N + 100)) == N
    async with running_se(tmp_path) as se, client_for(se) as c:
        assert (await c.volume_state("v")).applied_seq == N
        assert await c.read("v", N * 4096, 4096) == block(N + 100)


def _slots(tmp: Path) -> tuple[Path, list]:  # type: ignore[type-arg]
    path = tmp / "se1" / "volumes" / "v" / "meta"
    raw = path.read_bytes()
    return path, [decode_slot(raw[i * SLOT_SIZE : (i + 1) * SLOT_SIZE]) for i in (0, 1)]


def _garble_slot(path: Path, index: int) -> None:
    with open(path, "r+b") as f:
        f.seek(index * SLOT_SIZE + 30)
        f.write(b"\xff" * 40)


async def test_torn_older_metadata_slot_is_ignored(tmp_path: Path) -> None:
    await _write_n(tmp_path, N)
    path, slots = _slots(tmp_path)
    newest = max((0, 1), key=lambda i: slots[i].generation)
    _garble_slot(path, 1 - newest)
    async with running_se(tmp_path) as se, client_for(se) as c:
        st = await c.volume_state("v")
        assert (st.applied_seq, st.epoch, st.size) == (N, 1, 4 * MiB)


async def test_torn_newest_metadata_slot_falls_back_and_log_reapplies(tmp_path: Path) -> None:
    meta = await _write_n(tmp_path, N, snapshot_meta_after=N - 1)
    assert meta is not None
    # crash while the slot for the last batch was being written: the log holds seq N
    (tmp_path / "se1" / "volumes" / "v" / "meta").write_bytes(meta)
    path, slots = _slots(tmp_path)
    newest = max((0, 1), key=lambda i: slots[i].generation)
    older = slots[1 - newest]
    assert older.applied_seq < N
    _garble_slot(path, newest)
    _forget_data_file(tmp_path)
    async with running_se(tmp_path) as se, client_for(se) as c:
        st = await c.volume_state("v")
        assert st.applied_seq == N and st.state == "up"
        for s in range(1, N + 1):
            assert await c.read("v", s * 4096, 4096) == block(s)


async def test_both_metadata_slots_torn_is_a_clear_error(tmp_path: Path) -> None:
    await _write_n(tmp_path, 2)
    path, _ = _slots(tmp_path)
    _garble_slot(path, 0)
    _garble_slot(path, 1)
    with pytest.raises(Exception, match="neither metadata slot is valid"):
        async with running_se(tmp_path):
            pass


def test_replay_log_wraps_evicts_and_rescans(tmp_path: Path) -> None:
    rl = ReplayLog(tmp_path / "l", 1 << 20)
    rl.open()
    for seq in range(1, 1001):
        rl.append([LogRecord(seq, 1, seq * 4096, 4096, KIND_WRITE, block(seq))])
    rl.sync()
    oldest, newest = rl.oldest_seq(), rl.newest_seq()
    assert newest == 1000 and 1000 - oldest < (1 << 20) // (4096 + ALIGN)
    assert rl.read_from(oldest - 1, 1 << 20) is None  # wrapped away
    got = rl.read_from(990, 1 << 20)
    assert got is not None and [r.seq for r in got] == list(range(990, 1001))
    assert got[0].data == block(990)
    rl.close()
    again = ReplayLog(tmp_path / "l", 1 << 20)
    records = again.open(oldest)  # recovered forward from a synced point inside the log
    assert (records[0].seq, records[-1].seq) == (oldest, 1000)
    again.append([LogRecord(1001, 1, 0, 0, 1, b"")])  # keeps going after a restart
    assert again.newest_seq() == 1001
    again.close()
    assert FILE_HEADER % ALIGN == 0


async def test_log_dir_can_be_elsewhere(tmp_path: Path) -> None:
    logs = tmp_path / "otherdisk"
    async with running_se(tmp_path, log_dir=logs) as se, client_for(se) as c:
        await c.open_volume("v", MiB)
        await c.write("v", 1, 1, 0, block(1))
    assert (logs / "v.log").exists()
    shutil.rmtree(logs)  # the log disk is lost: a clean stop synced the data file first
    async with running_se(tmp_path, log_dir=logs) as se, client_for(se) as c:
        st = await c.volume_state("v")
        assert (st.state, st.applied_seq) == ("up", 1)
        assert await c.read("v", 0, 4096) == block(1)


def test_log_scan_finds_records_past_holes_and_stale_laps(tmp_path: Path) -> None:
    """The start-up scan reads only the log's data extents and finds record magic with a C
    search: records at odd sizes, trims, a wrapped lap and garbage must scan as before."""
    path = tmp_path / "l"
    rl = ReplayLog(path, 2 << 20)
    rl.open()
    sizes = [1, 100, 511, 512, 4096, 70000, 0]
    for seq in range(1, 400):
        n = sizes[seq % len(sizes)]
        kind = KIND_WRITE if n else 2
        rl.append([LogRecord(seq, 1, 0, n or 4096, kind, block(seq, 70016)[:n])])
    rl.sync()
    want = [(e.seq, e.pos) for e in rl.entries]
    rl.close()
    with open(path, "r+b") as f:  # garbage that carries the magic at unaligned places
        f.seek(rl.size - 3000)
        f.write(b"OPRL" * 700)
    again = ReplayLog(path, 2 << 20)
    headers = again.open(want[0][0])
    assert [(e.seq, e.pos) for e in again.entries] == want
    assert [h.seq for h in headers] == [s for s, _ in want] and headers[-1].data == b""
    got = again.read_from(want[0][0], 1 << 30)
    assert got is not None
    for rec in got:
        n = sizes[rec.seq % len(sizes)]
        assert rec.data == block(rec.seq, 70016)[:n], rec.seq
    again.close()


async def test_se_start_is_fast_and_scsi_companions_get_a_small_log(tmp_path: Path) -> None:
    async with running_se(tmp_path) as se, client_for(se) as c:
        await c.open_volume("v", 4 * MiB)
        await c.open_volume("v.scsi", 256 << 10)
        await c.write("v", 1, 1, 0, block(1))
    assert (tmp_path / "se1" / "logs" / "v.scsi.log").stat().st_size == 4 * MiB
    assert (tmp_path / "se1" / "logs" / "v.log").stat().st_size == 256 * MiB
    loop = asyncio.get_running_loop()
    start = loop.time()
    async with running_se(tmp_path) as se, client_for(se) as c:
        took = loop.time() - start
        assert (await c.volume_state("v")).applied_seq == 1
        assert await c.read("v", 0, 4096) == block(1)
    assert took < 1.0, took  # was 1.2-2.2 s per mostly empty 256 MiB log
