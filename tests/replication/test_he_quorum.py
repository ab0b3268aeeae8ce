"""Quorum arithmetic, the 2Q <= N warning, ack watermarks and the quorum waiter."""

from __future__ import annotations

import asyncio

import pytest

from ophiura.block.device import ReadOnlyError
from ophiura.replication.he.quorum import (
    AckTracker,
    Fenced,
    QuorumLost,
    QuorumWaiter,
    config_warning,
    majority,
    takeover_quorum,
)


@pytest.mark.parametrize(
    ("n", "q", "maj", "take", "warns"),
    [
        (1, 1, 1, 1, False),
        (2, 1, 2, 2, True),
        (2, 2, 2, 2, False),
        (3, 1, 2, 2, True),
        (3, 2, 2, 2, False),
        (3, 3, 2, 3, False),
        (4, 2, 3, 3, True),
        (5, 3, 3, 3, False),
    ],
)
def test_quorum_table(n: int, q: int, maj: int, take: int, warns: bool) -> None:
    assert majority(n) == maj
    assert takeover_quorum(n, q) == take
    assert (config_warning(n, q) is not None) is warns


def test_bad_quorum() -> None:
    with pytest.raises(ValueError):
        config_warning(3, 4)
    with pytest.raises(ValueError):
        config_warning(3, 0)


def test_ack_tracker_out_of_order() -> None:
    t = AckTracker(10)
    t.ack(12)
    t.ack(13)
    assert t.contiguous == 10 and t.highest == 13 and t.pending == 2
    t.ack(11)
    assert t.contiguous == 13 and t.pending == 0
    t.ack(5)
    assert t.contiguous == 13
    t.ack(20)
    t.raise_to(18)
    assert t.contiguous == 18
    t.ack(19)
    assert t.contiguous == 20


async def test_waiter_resolves_at_q_not_n() -> None:
    w = QuorumWaiter(1, need=2, outstanding=3)
    w.ack()
    assert not w.future.done()
    w.ack()
    assert w.future.done() and w.future.exception() is None


async def test_waiter_fails_when_quorum_impossible() -> None:
    w = QuorumWaiter(7, need=2, outstanding=3)
    w.nack("a: down")
    assert not w.future.done()
    w.nack("b: down")
    with pytest.raises(QuorumLost) as info:
        await w.future
    assert isinstance(info.value, ReadOnlyError)
    assert "seq 7" in str(info.value)


async def test_waiter_with_too_few_counting_fails_at_once() -> None:
    w = QuorumWaiter(1, need=2, outstanding=1)
    with pytest.raises(QuorumLost):
        await asyncio.wait_for(w.future, 1)


async def test_waiter_fenced() -> None:
    w = QuorumWaiter(3, need=2, outstanding=3)
    w.ack()
    w.fence("SE a holds epoch 5")
    with pytest.raises(Fenced):
        await w.future
