"""Task management: ABORT TASK, ABORT TASK SET, CLEAR TASK SET (TAS 0 and 1), LOGICAL UNIT
RESET, target resets, nexus loss, and the results for tasks and LUNs that do not exist."""

from __future__ import annotations

import asyncio

import pytest

from ophiura.scsi.api import Response, Status, TaskAborted, TmfFunction, TmfResult
from ophiura.scsi.target import ScsiTarget

from . import cdbs
from .conftest import BlockingDevice, Initiator, MakeTarget, login


@pytest.fixture
def dev() -> BlockingDevice:
    return BlockingDevice(1 << 20)


@pytest.fixture
def blocking_target(make_target: MakeTarget, dev: BlockingDevice) -> ScsiTarget:
    return make_target({0: dev})


async def hold(target: ScsiTarget, ini: Initiator, dev: BlockingDevice, tag: int) -> asyncio.Future:
    dev.entered.clear()
    fut = asyncio.ensure_future(target.execute(ini.command(cdbs.read(10, 0, 1), tag=tag)))
    await dev.entered.wait()
    return fut


def set_tas(target: ScsiTarget) -> None:
    lu = target.logical_unit(0)
    lu.modes.current[0x0A][5] |= 0x40
    lu.modes._refresh()


async def test_abort_task(blocking_target: ScsiTarget, dev: BlockingDevice) -> None:
    a = await login(blocking_target, "a")
    held = await hold(blocking_target, a, dev, 7)
    other = await hold(blocking_target, a, dev, 8)
    tmf = blocking_target.task_management
    assert await tmf(a.nexus, TmfFunction.ABORT_TASK, 0, 7) == TmfResult.COMPLETE
    with pytest.raises(TaskAborted):
        await held
    assert await tmf(a.nexus, TmfFunction.ABORT_TASK, 0, 7) == TmfResult.TASK_DOES_NOT_EXIST
    assert await tmf(a.nexus, TmfFunction.ABORT_TASK, 3, 8) == TmfResult.LUN_DOES_NOT_EXIST
    dev.gate.set()
    assert (await other).status == Status.GOOD


async def test_abort_task_only_sees_its_own_nexus(
    blocking_target: ScsiTarget, dev: BlockingDevice
) -> None:
    a, b = await login(blocking_target, "a"), await login(blocking_target, "b")
    held = await hold(blocking_target, a, dev, 5)
    tmf = blocking_target.task_management
    assert await tmf(b.nexus, TmfFunction.ABORT_TASK, 0, 5) == TmfResult.TASK_DOES_NOT_EXIST
    dev.gate.set()
    assert (await held).status == Status.GOOD


async def test_abort_task_set(blocking_target: ScsiTarget, dev: BlockingDevice) -> None:
    a, b = await login(blocking_target, "a"), await login(blocking_target, "b")
    mine = [await hold(blocking_target, a, dev, t) for t in (1, 2)]
    theirs = await hold(blocking_target, b, dev, 1)
    tmf = blocking_target.task_management
    assert await tmf(a.nexus, TmfFunction.ABORT_TASK_SET, 0, None) == TmfResult.COMPLETE
    for fut in mine:
        with pytest.raises(TaskAborted):
            await fut
    dev.gate.set()
    assert (await theirs).status == Status.GOOD
    assert await b.clear_ua() == []


@pytest.mark.parametrize("tas", [False, True])
async def test_clear_task_set(blocking_target: ScsiTarget, dev: BlockingDevice, tas: bool) -> None:
    a, b = await login(blocking_target, "a"), await login(blocking_target, "b")
    if tas:
        set_tas(blocking_target)
    mine = await hold(blocking_target, a, dev, 1)
    theirs = await hold(blocking_target, b, dev, 1)
    tmf = blocking_target.task_management
    assert await tmf(a.nexus, TmfFunction.CLEAR_TASK_SET, 0, None) == TmfResult.COMPLETE
    with pytest.raises(TaskAborted):
        await mine
    if tas:
        rsp: Response = await theirs
        assert rsp.status == Status.TASK_ABORTED
        assert await b.clear_ua() == []
    else:
        with pytest.raises(TaskAborted):
            await theirs
        assert await b.clear_ua() == [(0x2F, 0x00)]
    assert await a.clear_ua() == []


async def test_lu_reset_aborts_everything(blocking_target: ScsiTarget, dev: BlockingDevice) -> None:
    a, b = await login(blocking_target, "a"), await login(blocking_target, "b")
    held = [await hold(blocking_target, ini, dev, 9) for ini in (a, b)]
    tmf = blocking_target.task_management
    assert await tmf(a.nexus, TmfFunction.LOGICAL_UNIT_RESET, 0, None) == TmfResult.COMPLETE
    for fut in held:
        with pytest.raises(TaskAborted):
            await fut
    assert not blocking_target.logical_unit(0).tasks.running
    assert await tmf(a.nexus, TmfFunction.LOGICAL_UNIT_RESET, 4, None) == (
        TmfResult.LUN_DOES_NOT_EXIST
    )


async def test_nexus_loss_aborts_its_commands(
    blocking_target: ScsiTarget, dev: BlockingDevice
) -> None:
    a = await login(blocking_target, "a")
    held = await hold(blocking_target, a, dev, 3)
    blocking_target.nexus_lost(a.nexus)
    with pytest.raises(TaskAborted):
        await held


async def test_transport_cancellation_is_not_an_abort(
    blocking_target: ScsiTarget, dev: BlockingDevice
) -> None:
    a = await login(blocking_target, "a")
    held = await hold(blocking_target, a, dev, 3)
    held.cancel()
    with pytest.raises(asyncio.CancelledError):
        await held
    assert not blocking_target.logical_unit(0).tasks.running


async def test_unsupported_functions(target: ScsiTarget, a: Initiator) -> None:
    tmf = target.task_management
    assert await tmf(a.nexus, TmfFunction.CLEAR_ACA, 0, None) == TmfResult.NOT_SUPPORTED
    assert await tmf(a.nexus, TmfFunction.TASK_REASSIGN, 0, 1) == (
        TmfResult.REASSIGNMENT_NOT_SUPPORTED
    )


async def test_report_supported_tmfs(a: Initiator) -> None:
    data = await a.good(cdbs.report_tmfs())
    assert data[0] == 0xDA  # ATS ATSS CTSS LURS TRS
    assert await a.sense(cdbs.report_tmfs(alloc=2)) == (5, 0x24, 0)
