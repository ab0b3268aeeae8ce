"""SPC-2 RESERVE / RELEASE (6 and 10): holder semantics, third-party fields, and everything that
clears them (holder's RELEASE, LU reset, target resets, I_T nexus loss)."""

from __future__ import annotations

import pytest

from ophiura.scsi.api import Status, TmfFunction
from ophiura.scsi.constants import PrOut
from ophiura.scsi.target import ScsiTarget

from . import cdbs
from .conftest import Initiator, login

CONFLICT = Status.RESERVATION_CONFLICT


@pytest.mark.parametrize(("rsv", "rel"), [(6, 6), (10, 10), (6, 10), (10, 6)])
async def test_reserve_release(a: Initiator, b: Initiator, rsv: int, rel: int) -> None:
    await a.good(cdbs.reserve(rsv))
    await a.good(cdbs.reserve(rsv))  # the holder may reserve again
    assert await b.status(cdbs.reserve(rsv)) == CONFLICT
    await b.good(cdbs.release(rel))  # a non-holder's RELEASE is a no-op (SPC-2)
    assert await b.status(cdbs.mode_sense6()) == CONFLICT
    await a.good(cdbs.mode_sense6())
    assert await b.status(cdbs.reserve(rsv)) == CONFLICT
    await a.good(cdbs.release(rel))
    await b.good(cdbs.reserve(rsv))
    await b.good(cdbs.release(rel))


@pytest.mark.parametrize(
    ("size", "byte1", "bit"),
    [(6, 0x10, 4), (6, 0x01, 0), (10, 0x10, 4), (10, 0x12, 4), (10, 0x02, 1)],
)
async def test_third_party_reservations_are_refused(
    a: Initiator, size: int, byte1: int, bit: int
) -> None:
    for cdb in (cdbs.reserve(size, byte1), cdbs.release(size, byte1)):
        rsp = await a.run(cdb)
        assert rsp.status == Status.CHECK_CONDITION and rsp.sense[12:14] == b"\x24\x00"
        assert rsp.sense[15] == 0xC8 | bit and rsp.sense[16:18] == b"\x00\x01"


async def test_reserve_conflicts_with_persistent_registrations(a: Initiator, b: Initiator) -> None:
    await b.good(cdbs.pr_out(PrOut.REGISTER_AND_IGNORE), cdbs.pr_params(0, 1))
    assert await a.status(cdbs.reserve(6)) == CONFLICT
    assert await a.status(cdbs.reserve(10)) == CONFLICT
    assert await b.status(cdbs.reserve(6)) == CONFLICT
    assert await a.status(cdbs.release(6)) == CONFLICT


async def test_persistent_reserve_conflicts_with_spc2_reservation(
    a: Initiator, b: Initiator
) -> None:
    await a.good(cdbs.reserve(6))
    assert await b.status(cdbs.pr_out(PrOut.REGISTER), cdbs.pr_params(0, 1)) == CONFLICT
    assert await b.status(cdbs.pr_in(0)) == CONFLICT
    # SPC-3 5.5.1: "regardless of initiator", the holder included.
    assert await a.status(cdbs.pr_in(0)) == CONFLICT
    await a.good(cdbs.release(6))
    await b.good(cdbs.pr_in(0))


@pytest.mark.parametrize(
    "function",
    [
        TmfFunction.LOGICAL_UNIT_RESET,
        TmfFunction.TARGET_WARM_RESET,
        TmfFunction.TARGET_COLD_RESET,
    ],
)
async def test_resets_release(
    target: ScsiTarget, a: Initiator, b: Initiator, function: TmfFunction
) -> None:
    await a.good(cdbs.reserve(6))
    assert await target.task_management(a.nexus, function, 0, None) == 0
    await b.clear_ua()
    await b.good(cdbs.reserve(6))


async def test_nexus_loss_releases(target: ScsiTarget, a: Initiator, b: Initiator) -> None:
    await a.good(cdbs.reserve(10))
    target.nexus_lost(a.nexus)
    await b.good(cdbs.reserve(10))
    # The lost nexus comes back: it hears about it, and no longer holds anything.
    target.nexus_added(a.nexus)
    assert await a.clear_ua() == [(0x29, 0x07)]
    assert await a.status(cdbs.reserve(6)) == CONFLICT


async def test_reservation_is_per_nexus_not_per_initiator(target: ScsiTarget) -> None:
    a1 = await login(target, "alpha", isid=1)
    a2 = await login(target, "alpha", isid=2)  # same initiator name, other session
    await a1.good(cdbs.reserve(6))
    assert await a2.status(cdbs.reserve(6)) == CONFLICT
