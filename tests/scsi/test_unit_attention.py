"""Unit attention routing: each condition reaches exactly the right I_T nexuses, once each,
highest priority first."""

from __future__ import annotations

from ophiura.block.memory import MemoryBlockDevice
from ophiura.scsi.api import Status, TmfFunction
from ophiura.scsi.constants import PrOut, PrType
from ophiura.scsi.target import ScsiTarget
from ophiura.scsi.unit_attention import MAX_PENDING, UnitAttentions

from . import cdbs
from .conftest import BLOCKS, BS, Initiator, MakeTarget, login, nexus


async def test_new_nexus_sees_power_on_on_every_lun(make_target: MakeTarget) -> None:
    target = make_target({0: MemoryBlockDevice(1 << 20), 1: MemoryBlockDevice(1 << 20)})
    ini = Initiator(target, nexus("x"))
    target.nexus_added(ini.nexus)
    for lun in (0, 1):
        rsp = await ini.run(cdbs.read(10, 0, 1), lun=lun)
        assert rsp.status == Status.CHECK_CONDITION and rsp.sense[12:14] == b"\x29\x00"
        assert (await ini.run(cdbs.read(10, 0, 1), lun=lun)).status == Status.GOOD


async def test_nexus_added_again_replaces_older_conditions(target: ScsiTarget) -> None:
    ini = await login(target, "x")
    target.logical_unit(0).ua.establish(ini.nexus, (0x2A, 0x01))
    target.nexus_added(ini.nexus)
    assert await ini.clear_ua() == [(0x29, 0x00)]


async def test_lu_reset_reaches_every_nexus_once(target: ScsiTarget) -> None:
    inis = [await login(target, n) for n in ("a", "b", "c")]
    await target.task_management(inis[0].nexus, TmfFunction.LOGICAL_UNIT_RESET, 0, None)
    for ini in inis:
        assert await ini.clear_ua() == [(0x29, 0x03)]


async def test_target_resets(target: ScsiTarget, a: Initiator, b: Initiator) -> None:
    await target.task_management(a.nexus, TmfFunction.TARGET_WARM_RESET, 0, None)
    assert await b.clear_ua() == [(0x29, 0x02)]
    assert await a.clear_ua() == [(0x29, 0x02)]
    await target.task_management(a.nexus, TmfFunction.TARGET_COLD_RESET, 0, None)
    assert await b.clear_ua() == [(0x29, 0x01)]


async def test_preemption_conditions_reach_only_the_preempted(target: ScsiTarget) -> None:
    a, b, c, d = [await login(target, n) for n in ("a", "b", "c", "d")]
    for ini, key in ((a, 1), (b, 2), (c, 3)):
        await ini.good(cdbs.pr_out(PrOut.REGISTER_AND_IGNORE), cdbs.pr_params(0, key))
    await a.good(cdbs.pr_out(PrOut.RESERVE, PrType.WRITE_EXCLUSIVE), cdbs.pr_params(1))
    await b.good(cdbs.pr_out(PrOut.PREEMPT, PrType.WRITE_EXCLUSIVE), cdbs.pr_params(2, 1))
    assert await a.clear_ua() == [(0x2A, 0x05)]
    assert await b.clear_ua() == []
    assert await c.clear_ua() == []  # same type: nothing released for c
    assert await d.clear_ua() == []  # never registered


async def test_registration_ua_reaches_all_target_ports_of_all_tg_pt(target: ScsiTarget) -> None:
    a1 = await login(target, "alpha", port=1)
    a2 = await login(target, "alpha", port=2)
    b = await login(target, "beta")
    await a1.good(cdbs.pr_out(PrOut.REGISTER_AND_IGNORE), cdbs.pr_params(0, 1, all_tg_pt=True))
    await b.good(cdbs.pr_out(PrOut.REGISTER_AND_IGNORE), cdbs.pr_params(0, 2))
    await b.good(cdbs.pr_out(PrOut.PREEMPT, PrType.WRITE_EXCLUSIVE), cdbs.pr_params(2, 1))
    assert await a1.clear_ua() == [(0x2A, 0x05)]
    assert await a2.clear_ua() == [(0x2A, 0x05)]


async def test_capacity_change(target: ScsiTarget, a: Initiator, b: Initiator) -> None:
    dev = target.logical_unit(0).device
    dev._size = 2 * BLOCKS * BS  # the backend grew
    target.capacity_changed(0)
    assert await a.clear_ua() == [(0x2A, 0x09)]
    assert await b.clear_ua() == [(0x2A, 0x09)]
    data = await a.good(cdbs.read_capacity16())
    assert int.from_bytes(data[0:8]) == 2 * BLOCKS - 1
    target.capacity_changed(0)  # no change: no unit attention
    assert await a.clear_ua() == []


async def test_reservation_conflict_does_not_consume_ua_order(target: ScsiTarget) -> None:
    """A pending UA is reported before a reservation conflict (SAM-5 order of checks)."""
    a, b = await login(target, "a"), await login(target, "b")
    await a.good(cdbs.reserve(6))
    target.logical_unit(0).ua.establish(b.nexus, (0x2A, 0x01))
    assert await b.sense(cdbs.read(10, 0, 1)) == (6, 0x2A, 0x01)
    assert await b.status(cdbs.read(10, 0, 1)) == Status.RESERVATION_CONFLICT


def test_priority_dedup_and_bound() -> None:
    ua = UnitAttentions()
    n = nexus("q")
    ua.establish(n, (0x2A, 0x01))
    ua.establish(n, (0x2A, 0x01))
    ua.establish(n, (0x2F, 0x00))
    ua.establish(n, (0x29, 0x00))
    ua.establish(n, (0x29, 0x03))
    assert [ua.take(n) for _ in range(4)] == [(0x29, 0x03), (0x2F, 0x00), (0x2A, 0x01), None]
    for i in range(MAX_PENDING + 5):
        ua.establish(n, (0x3F, i))
    ua.establish(n, (0x29, 0x00))
    assert len(ua.pending[n]) == MAX_PENDING and ua.peek(n) == (0x29, 0x00)
