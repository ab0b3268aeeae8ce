"""Write queue: bytes bound, eviction only after every live SE acked, quick-recovery ranges."""

from __future__ import annotations

import pytest

from ophiura.replication.he.write_queue import (
    ENTRY_OVERHEAD,
    BlockSeqMap,
    OpKind,
    WriteOp,
    WriteQueue,
    WriteQueueError,
)


def op(seq: int, n: int = 4096, offset: int = 0) -> WriteOp:
    return WriteOp(seq, OpKind.WRITE, offset, n, bytes(n))


def filled(count: int, capacity: int = 10 * (4096 + ENTRY_OVERHEAD)) -> WriteQueue:
    q = WriteQueue(capacity)
    for s in range(1, count + 1):
        q.append(op(s))
    return q


def test_bytes_bound_and_fits() -> None:
    q = filled(10)
    assert q.used == q.capacity
    assert not q.fits(op(11).cost)
    with pytest.raises(WriteQueueError):
        q.append(op(11))


def test_sequence_must_be_contiguous() -> None:
    q = WriteQueue(1 << 20)
    q.append(op(1))
    with pytest.raises(WriteQueueError):
        q.append(op(3))


def test_oversize_entry_fits_only_empty_queue() -> None:
    q = WriteQueue(8192)
    big = op(1, 16384)
    assert q.fits(big.cost)
    q.append(big)
    assert not q.fits(op(2, 512).cost)


@pytest.mark.parametrize(
    ("watermarks", "evicted", "blockers"),
    [
        ({"a": 10, "b": 10, "c": 10}, 10, []),
        ({"a": 10, "b": 3, "c": 10}, 3, ["b"]),
        ({"a": 0, "b": 10}, 0, ["a"]),
        ({"a": 5}, 5, ["a"]),
        ({"a": 0}, 0, ["a"]),
    ],
)
def test_eviction_needs_every_live_se(
    watermarks: dict[str, int], evicted: int, blockers: list[str]
) -> None:
    q = filled(10)
    out = q.evict(min(watermarks.values()))
    assert [o.seq for o in out] == list(range(1, evicted + 1))
    assert q.first_seq == evicted + 1
    assert q.evicted_upto == evicted
    assert q.blockers(watermarks) == blockers


@pytest.mark.parametrize(
    ("after", "covers", "seqs"),
    [(0, True, list(range(1, 11))), (7, True, [8, 9, 10]), (10, True, []), (11, False, None)],
)
def test_since_for_quick_recovery(after: int, covers: bool, seqs: list[int] | None) -> None:
    q = filled(10)
    assert q.covers(after) is covers
    if seqs is not None:
        assert [o.seq for o in q.since(after)] == seqs


def test_since_after_eviction() -> None:
    q = filled(10)
    q.evict(4)
    assert not q.covers(2)
    assert q.covers(4)
    assert [o.seq for o in q.since(4, upto=6)] == [5, 6]
    with pytest.raises(WriteQueueError):
        q.since(2)


def test_trims_cost_overhead() -> None:
    q = WriteQueue(4096)
    n = 0
    while q.fits(ENTRY_OVERHEAD):
        n += 1
        q.append(WriteOp(n, OpKind.TRIM, 0, 1 << 30))
    assert n == 4096 // ENTRY_OVERHEAD


def test_block_seq_map_routes_and_forgets() -> None:
    m = BlockSeqMap(chunk=65536)
    m.record(0, 4096, 5)
    m.record(65536, 131072, 7)
    m.record(0, 512, 3)  # an older ack never lowers the requirement
    assert m.required(0, 512) == 5
    assert m.required(60000 // 512 * 512, 8192) == 7
    assert m.required(10 << 20, 4096) == 0
    m.forget([op(5, 4096, 0)])
    assert m.required(0, 512) == 0
    m.forget([op(6, 4096, 65536)])  # the chunk holds seq 7: kept
    assert m.required(65536, 512) == 7
