"""Failure 3 (issue 9): a power cut mid-batch must not erase acknowledged log records.

A disk without flush ordering may persist records 106..110 of an unsynced batch and lose 105.
The start-up scan used to chain the log downwards from the newest record: it stopped at 106 and
the SE reported `data_synced_seq`, up to a log lap behind its acknowledged writes. These tests
build that disk state on the real files (a volume's `VolumeDisk`, no SE process), then open the
volume again as a restart does.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from ophiura.replication.se.disk import Op, VolumeDisk
from ophiura.replication.se.replay_log import ALIGN, LogRecord, ReplayLog
from ophiura.replication.wire.messages import KIND_WRITE

from .test_se_support import MiB, block

SIZE = 16 * MiB
BS = 4096


def _new(tmp: Path, log_size: int = MiB) -> VolumeDisk:
    disk = VolumeDisk("v", tmp / "v", tmp / "v.log", log_size)
    disk.open((SIZE, 512))
    return disk


def _reopen(tmp: Path, log_size: int = MiB) -> tuple[VolumeDisk, int]:
    disk = VolumeDisk("v", tmp / "v", tmp / "v.log", log_size)
    return disk, disk.open(None).applied


def _where(seq: int) -> int:
    return (seq % (SIZE // BS)) * BS


def _commit(disk: VolumeDisk, seqs: range) -> None:
    ops = [Op(KIND_WRITE, s, 1, _where(s), BS, block(s)) for s in seqs]
    disk.commit(ops, {"applied_seq": seqs[-1]})


def _crash(disk: VolumeDisk) -> None:
    """SIGKILL: the files stay as they are; no clean-stop sync or metadata write."""
    disk.log.close()
    os.close(disk.fd)
    disk.fd = -1
    assert disk.meta_file is not None
    disk.meta_file.close()
    disk.shutdown()


def _lose_record(disk: VolumeDisk, seq: int) -> None:
    """The disk never wrote record `seq`: its sectors hold what was there before (here: a
    torn header, which is what a half-written record looks like to the CRC)."""
    entry = next(e for e in disk.log.entries if e.seq == seq)
    os.pwrite(disk.log._fd, os.urandom(ALIGN), entry.pos)


def _forget_unsynced_data(tmp: Path, synced: int) -> None:
    """The data file's unsynced writes are lost too: keep only the blocks of seq <= synced
    (every test writes each block once)."""
    path = tmp / "v" / "data"
    raw = path.read_bytes()
    keep = {s: raw[_where(s) : _where(s) + BS] for s in range(1, synced + 1)}
    os.truncate(path, 0)
    os.truncate(path, SIZE)
    with open(path, "r+b") as f:
        for s, data in keep.items():
            f.seek(_where(s))
            f.write(data)


def _check_blocks(disk: VolumeDisk, upto: int, lost: range) -> None:
    for s in range(1, upto + 1):
        buf = bytearray(BS)
        disk.read_into(buf, _where(s))
        assert bytes(buf) == block(s), s
    for s in lost:
        buf = bytearray(BS)
        disk.read_into(buf, _where(s))
        assert bytes(buf) != block(s), f"seq {s} lies beyond the hole but was applied"


def test_a_hole_in_the_last_batch_keeps_every_acknowledged_record(tmp_path: Path) -> None:
    disk = _new(tmp_path)
    for s in range(1, 101, 10):  # acknowledged: each batch synced
        _commit(disk, range(s, s + 10))
    assert disk.meta.data_synced_seq == 0  # nothing of it is in the data file durably
    _commit(disk, range(101, 111))  # the batch the power cut interrupted ...
    _lose_record(disk, 105)  # ... after the disk wrote 101..104 and 106..110, not 105
    _crash(disk)
    _forget_unsynced_data(tmp_path, 0)

    disk, applied = _reopen(tmp_path)
    try:
        assert applied == 104  # was 0: every acknowledged record was cut off
        assert disk.log.discarded == 5
        assert [e.seq for e in disk.log.entries] == list(range(1, 105))
        _check_blocks(disk, 104, range(105, 111))
        # 106..110 are gone for good: never served to a peer ...
        got = disk.log.read_from(100, 1 << 30)
        assert got is not None and [r.seq for r in got] == list(range(100, 105))
        # ... and never resurrected once 105 is written again (same size, same place)
        _commit(disk, range(105, 106))
        _crash(disk)
        disk, applied = _reopen(tmp_path)
        assert applied == 105
        assert disk.log.newest_seq() == 105
    finally:
        disk.close(False)
        disk.shutdown()


@pytest.mark.parametrize("hole_after_wrap", [False, True], ids=["before-wrap", "after-wrap"])
def test_a_hole_in_a_batch_across_the_log_wrap(tmp_path: Path, hole_after_wrap: bool) -> None:
    """Many laps of a 1 MiB log; the interrupted batch straddles the end of the file."""
    disk = _new(tmp_path)
    seq = 0
    # fill until the next batch of 10 would wrap: the log head is near the file end
    while True:
        room = disk.log.size - disk.log._head
        if seq > 600 and 3 * (BS + ALIGN) < room < 7 * (BS + ALIGN):
            break
        _commit(disk, range(seq + 1, seq + 11))
        seq += 10
    acked = seq
    _commit(disk, range(acked + 1, acked + 11))
    first_after_wrap = next(e.seq for e in disk.log.entries if e.seq > acked and e.pos == 4096)
    assert acked + 2 < first_after_wrap < acked + 9
    hole = first_after_wrap + 1 if hole_after_wrap else first_after_wrap - 2
    synced = disk.meta.data_synced_seq
    assert 0 < synced < hole - 1  # the old scan would have fallen back to `synced`
    _lose_record(disk, hole)
    _crash(disk)
    _forget_unsynced_data(tmp_path, synced)

    disk, applied = _reopen(tmp_path)
    try:
        assert applied == hole - 1
        assert disk.log.newest_seq() == hole - 1
        assert disk.log.discarded == acked + 10 - hole
        _check_blocks(disk, hole - 1, range(hole + 1, acked + 11))
    finally:
        disk.close(False)
        disk.shutdown()


def test_replay_log_recovers_forward_from_the_synced_point(tmp_path: Path) -> None:
    """The log alone: the chain starts after `synced` and stops at the first hole; stale
    records of an older lap below it and valid records above the hole are not part of it."""
    path = tmp_path / "l"
    rl = ReplayLog(path, MiB)
    rl.open()
    for s in range(1, 301):  # about a lap and a quarter of 4 KiB records
        rl.append([LogRecord(s, 1, 0, BS, KIND_WRITE, block(s))])
        rl.sync()
    oldest = rl.oldest_seq()
    pos = {e.seq: e.pos for e in rl.entries}
    rl.close()
    with open(path, "r+b") as f:
        f.seek(pos[290])
        f.write(bytes(ALIGN))
    again = ReplayLog(path, MiB)
    headers = again.open(250)
    assert [h.seq for h in headers] == list(range(oldest, 290))
    assert again.discarded == 10
    again.close()
    # a synced point with nothing after it: the chain ends there, nothing is discarded
    third = ReplayLog(path, MiB)
    assert [h.seq for h in third.open(289)][-1] == 289
    assert third.discarded == 0
    third.close()


@pytest.mark.parametrize("then", ["nothing", "same-size", "smaller"])
def test_truncate_after_drops_records_for_good(tmp_path: Path, then: str) -> None:
    """An owner drops seqs above 15 and writes 16.. again under its ballot: the dropped
    records must not come back, even when a new record lands exactly where an old one was."""
    path = tmp_path / "l"
    rl = ReplayLog(path, MiB)
    rl.open()
    for s in range(1, 21):
        rl.append([LogRecord(s, 1, 0, BS, KIND_WRITE, block(s), he_id=1)])
    rl.sync()
    rl.truncate_after(15)
    assert rl.newest_seq() == 15
    if then != "nothing":
        n = BS if then == "same-size" else 100
        rl.append([LogRecord(16, 2, 0, n, KIND_WRITE, block(99)[:n], he_id=2)])
        rl.sync()
    rl.close()
    again = ReplayLog(path, MiB)
    headers = again.open(0)
    want = list(range(1, 16)) if then == "nothing" else list(range(1, 17))
    assert [h.seq for h in headers] == want
    assert again.discarded == 0  # nothing above the chain was left to discard
    if then != "nothing":
        assert (headers[-1].epoch, headers[-1].he_id) == (2, 2)
        again.append([LogRecord(17, 2, 0, BS, KIND_WRITE, block(17), he_id=2)])
        again.sync()
        again.close()
        third = ReplayLog(path, MiB)
        assert [h.seq for h in third.open(0)] == list(range(1, 18))
        third.close()
    else:
        again.close()


def test_during_a_recovery_the_chain_starts_after_upto(tmp_path: Path) -> None:
    """A replay recovery up to 500 reset the log; current writes 501.. are logged; a cut
    loses 510 of an unsynced batch. The restart must re-apply 501..509 and nothing beyond."""
    disk = _new(tmp_path)
    _commit(disk, range(1, 101))
    disk.commit([("call", disk.reset_log, None)], {})  # as se_recovery does, then the meta:
    recovery = {"kind": "replay", "upto": 500, "peer": ["a", "127.0.0.1", 1], "cursor": 100}
    disk.write_meta(recovery=recovery, applied_seq=100)
    synced = disk.meta.data_synced_seq
    assert synced == 100
    for s in range(501, 511, 5):
        disk.commit([Op(KIND_WRITE, q, 1, _where(q), BS, block(q)) for q in range(s, s + 5)], {})
    disk.commit([Op(KIND_WRITE, q, 1, _where(q), BS, block(q)) for q in range(511, 521)], {})
    _lose_record(disk, 513)
    _crash(disk)
    _forget_unsynced_data(tmp_path, synced)
    disk = VolumeDisk("v", tmp_path / "v", tmp_path / "v.log", MiB)
    try:
        loaded = disk.open(None)
        assert (loaded.applied, loaded.current_top) == (100, 512)  # was (100, 520)
        assert [e.seq for e in disk.log.entries] == list(range(501, 513))
        _check_blocks(disk, 100, range(513, 521))
        for s in range(501, 513):
            buf = bytearray(BS)
            disk.read_into(buf, _where(s))
            assert bytes(buf) == block(s), s
    finally:
        disk.close(False)
        disk.shutdown()
