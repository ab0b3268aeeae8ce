"""The torture checker on hand-made histories: what must pass and what must be flagged."""

from __future__ import annotations

from ophiura.torture import stamp
from ophiura.torture.checker import Read, Write, check, diverged_sectors, write_availability

W1 = stamp.write_id(1, 1)
W2 = stamp.write_id(1, 2)
W3 = stamp.write_id(2, 1)


def rd(
    label: str,
    start: float,
    end: float,
    value: int,
    lba: int = 0,
    count: int = 1,
    final: bool = False,
) -> Read:
    return Read(label, start, end, ((lba, count, value),), final)


def test_read_of_the_last_acknowledged_write_passes() -> None:
    v = check([Write(W1, 0, 8, 0, 1), Write(W2, 0, 8, 2, 3)], [rd("r", 4, 5, W2, 3)])
    assert v.ok and v.observations == 8 + 8 + 1


def test_read_older_than_an_acknowledged_write_is_stale() -> None:
    v = check([Write(W1, 0, 8, 0, 1), Write(W2, 0, 8, 2, 3)], [rd("r", 4, 5, W1, 3)])
    assert v.stale == 1 and v.lost == 0 and not v.ok
    assert "older than w1:2" in v.examples[0]


def test_initial_value_after_an_ack_is_stale() -> None:
    v = check([Write(W1, 0, 1, 0, 1)], [rd("r", 2, 3, stamp.INITIAL)])
    assert v.stale == 1


def test_initial_value_before_any_write_passes() -> None:
    assert check([Write(W1, 0, 1, 5, 6)], [rd("r", 0, 1, stamp.INITIAL)]).ok


def test_read_overlapping_a_write_may_return_either() -> None:
    writes = [Write(W1, 0, 1, 0, 1), Write(W2, 0, 1, 2, 5)]
    assert check(writes, [rd("old", 3, 4, W1), rd("new", 3, 4, W2)]).ok


def test_concurrent_writes_either_order() -> None:
    writes = [Write(W1, 0, 1, 0, 3), Write(W3, 0, 1, 1, 2)]
    assert check(writes, [rd("a", 4, 5, W1)]).ok
    assert check(writes, [rd("b", 4, 5, W3)]).ok


def test_failed_write_may_or_may_not_have_happened() -> None:
    writes = [Write(W1, 0, 1, 0, 1), Write(W2, 0, 1, 2, None)]
    assert check(writes, [rd("a", 10, 11, W1)]).ok
    assert check(writes, [rd("b", 10, 11, W2)]).ok


def test_going_back_after_seeing_an_unacknowledged_write_is_dirty_not_stale() -> None:
    """Allowed for a block device (issue 9's register): counted, not a failure."""
    writes = [Write(W1, 0, 1, 0, 1), Write(W2, 0, 1, 2, None)]
    v = check(writes, [rd("saw-new", 10, 11, W2), rd("went-back", 12, 13, W1)])
    assert (v.stale, v.dirty) == (0, 1) and v.ok and "went-back" in v.examples[0]


def test_going_back_past_an_acknowledged_write_a_read_saw_is_stale() -> None:
    writes = [Write(W1, 0, 1, 0, 1), Write(W2, 0, 1, 2, 5)]
    v = check(writes, [rd("saw-new", 6, 7, W2), rd("went-back", 8, 9, W1)])
    assert v.stale == 1 and not v.ok


def test_final_read_missing_an_acknowledged_write_is_lost() -> None:
    writes = [Write(W1, 0, 4, 0, 1), Write(W2, 0, 4, 2, 3)]
    v = check(writes, [Read("final", 10, 11, ((0, 2, W2), (2, 2, W1)), final=True)])
    assert v.lost == 2 and v.stale == 0


def test_final_read_of_zeros_after_acks_is_lost_per_sector() -> None:
    writes = [Write(W1, 0, 4, 0, 1)]
    reads = [
        Read("final-he", 10, 11, ((0, 4, stamp.INITIAL),), final=True),
        Read("final-disk", 12, 13, ((0, 4, stamp.INITIAL),), final=True),
    ]
    v = check(writes, reads)
    assert v.lost == 4  # sectors, counted once however many final reads saw it
    assert v.lost_by == {"final-he": 4, "final-disk": 4}


def test_garbled_and_phantom_values_are_corrupt() -> None:
    writes = [Write(W1, 0, 2, 0, 1), Write(W2, 8, 1, 20, 21)]
    v = check(
        writes,
        [
            rd("torn", 2, 3, stamp.GARBLED),
            rd("future", 2, 3, W2, lba=8),
            rd("elsewhere", 2, 3, W1, lba=5),
            rd("never", 2, 3, stamp.write_id(9, 9)),
        ],
    )
    assert v.corrupt == 4 and v.stale == 0


def test_stamp_round_trip_and_tear() -> None:
    data = stamp.payload(3, 7, 100, 3)
    assert stamp.decode_runs(data, 100) == [(100, 3, stamp.write_id(3, 7))]
    assert stamp.decode_runs(data, 101)[0][2] == stamp.GARBLED  # misplaced
    torn = data[:256] + stamp.payload(3, 8, 100, 1)[256:512] + data[512:]
    assert stamp.decode_runs(torn, 100)[0] == (100, 1, stamp.GARBLED)
    assert stamp.decode_runs(bytes(1024), 0) == [(0, 2, stamp.INITIAL)]


def test_diverged_counts_sectors() -> None:
    a = bytes(4096)
    b = bytearray(a)
    b[600] = 1
    b[3000] = 1
    n, ex = diverged_sectors({"a": a, "b": bytes(b), "c": a[:1024]})
    assert n == 2 and "lba 1" in ex[0]
    assert diverged_sectors({"a": a, "b": a[:512]}) == (0, [])


def test_write_availability() -> None:
    writes = [Write(W1, 0, 1, 0, 0.1), Write(W2, 0, 1, 0, 1.2), Write(W3, 0, 1, 0, None)]
    assert write_availability(writes, 0, 2, bucket=0.5) == 0.5


def test_final_read_undoing_an_unacknowledged_value_a_read_saw_is_dirty_not_lost() -> None:
    writes = [Write(W1, 0, 1, 0, 1), Write(W2, 0, 1, 2, None)]
    reads = [rd("saw-dirty", 3, 4, W2), rd("final", 10, 11, W1, final=True)]
    v = check(writes, reads)
    assert (v.stale, v.dirty, v.lost) == (0, 1, 0)
    assert "final" in v.examples[0] and "seen by saw-dirty" in v.examples[0]


def test_final_read_older_than_both_kinds_of_witness_is_lost() -> None:
    writes = [Write(W1, 0, 1, 0, 1), Write(W2, 0, 1, 2, 3), Write(W3, 0, 1, 4, None)]
    reads = [rd("saw", 5, 6, W3), rd("final", 10, 11, W1, final=True)]
    v = check(writes, reads)
    assert (v.stale, v.lost) == (0, 1)
    assert "older than w1:2 (acknowledged" in v.examples[0]
