"""PERSISTENT RESERVE IN / OUT: registration, reservation of all six types, PRgeneration,
RELEASE / CLEAR / PREEMPT / PREEMPT AND ABORT / REGISTER AND MOVE, READ FULL STATUS, APTPL."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from ophiura.scsi.api import Status, TaskAborted
from ophiura.scsi.constants import PrIn, PrOut, PrType
from ophiura.scsi.pr_state import PrStateError
from ophiura.scsi.target import ScsiTarget

from . import cdbs
from .conftest import BS, TARGET, BlockingDevice, Initiator, MakeTarget, login

CONFLICT = Status.RESERVATION_CONFLICT
ILLEGAL = 5


async def register(ini: Initiator, key: int, **kw: bool) -> None:
    params = cdbs.pr_params(0, key, **kw)
    await ini.good(cdbs.pr_out(PrOut.REGISTER_AND_IGNORE), params)


async def reserve(ini: Initiator, key: int, pr_type: int) -> int:
    return await ini.status(cdbs.pr_out(PrOut.RESERVE, pr_type), cdbs.pr_params(key))


async def read_keys(ini: Initiator) -> tuple[int, list[int]]:
    data = await ini.good(cdbs.pr_in(PrIn.READ_KEYS))
    n = int.from_bytes(data[4:8]) // 8
    keys = [int.from_bytes(data[8 + 8 * i : 16 + 8 * i]) for i in range(n)]
    return int.from_bytes(data[0:4]), keys


async def read_reservation(ini: Initiator) -> tuple[int, int, int] | None:
    data = await ini.good(cdbs.pr_in(PrIn.READ_RESERVATION))
    if int.from_bytes(data[4:8]) == 0:
        return None
    return int.from_bytes(data[0:4]), int.from_bytes(data[8:16]), data[21]


async def test_register_and_read_keys(a: Initiator, b: Initiator) -> None:
    assert await read_keys(a) == (0, [])
    await register(a, 0xA1)
    await register(b, 0xB1)
    assert await read_keys(b) == (2, [0xA1, 0xB1])
    # REGISTER from a registered nexus must present its current key.
    assert await a.status(cdbs.pr_out(PrOut.REGISTER), cdbs.pr_params(0, 0xA2)) == CONFLICT
    await a.good(cdbs.pr_out(PrOut.REGISTER), cdbs.pr_params(0xA1, 0xA2))
    assert await read_keys(a) == (3, [0xA2, 0xB1])
    # Unregister.
    await a.good(cdbs.pr_out(PrOut.REGISTER), cdbs.pr_params(0xA2, 0))
    assert await read_keys(a) == (4, [0xB1])
    # REGISTER from an unregistered nexus with a non-zero reservation key conflicts.
    assert await a.status(cdbs.pr_out(PrOut.REGISTER), cdbs.pr_params(5, 6)) == CONFLICT
    # Unregistering when not registered is GOOD and changes nothing (no new generation).
    await a.good(cdbs.pr_out(PrOut.REGISTER), cdbs.pr_params(0, 0))
    assert await read_keys(a) == (4, [0xB1])


async def test_read_keys_truncated_keeps_additional_length(a: Initiator) -> None:
    await register(a, 7)
    data = await a.good(cdbs.pr_in(PrIn.READ_KEYS, alloc=8))
    assert len(data) == 8 and int.from_bytes(data[4:8]) == 8


@pytest.mark.parametrize("pr_type", list(PrType))
async def test_reserve_and_release_each_type(a: Initiator, b: Initiator, pr_type: PrType) -> None:
    await register(a, 0xA)
    await register(b, 0xB)
    gen = (await read_keys(a))[0]
    assert await reserve(a, 0xA, pr_type) == Status.GOOD
    expected_key = 0 if pr_type.all_registrants else 0xA
    assert await read_reservation(b) == (gen, expected_key, pr_type)
    assert await reserve(a, 0xA, pr_type) == Status.GOOD  # same type again: no-op
    other = (
        PrType.EXCLUSIVE_ACCESS if pr_type != PrType.EXCLUSIVE_ACCESS else PrType.WRITE_EXCLUSIVE
    )
    assert await reserve(a, 0xA, other) == CONFLICT
    if not pr_type.all_registrants:
        assert await reserve(b, 0xB, pr_type) == CONFLICT
        # RELEASE by a registered non-holder is GOOD and releases nothing.
        await b.good(cdbs.pr_out(PrOut.RELEASE, pr_type), cdbs.pr_params(0xB))
        assert await read_reservation(a) is not None
    # Wrong type on release by the holder: INVALID RELEASE OF PERSISTENT RESERVATION.
    assert await a.sense(cdbs.pr_out(PrOut.RELEASE, other), cdbs.pr_params(0xA)) == (
        ILLEGAL,
        0x26,
        0x04,
    )
    await a.good(cdbs.pr_out(PrOut.RELEASE, pr_type), cdbs.pr_params(0xA))
    assert await read_reservation(a) is None
    assert (await read_keys(a))[0] == gen  # RESERVE and RELEASE do not bump PRgeneration
    released_ua = pr_type not in (PrType.WRITE_EXCLUSIVE, PrType.EXCLUSIVE_ACCESS)
    assert await b.clear_ua() == ([(0x2A, 0x04)] if released_ua else [])


async def test_reserve_requires_registration_and_key(a: Initiator, b: Initiator) -> None:
    assert await reserve(a, 0, PrType.WRITE_EXCLUSIVE) == CONFLICT
    await register(a, 1)
    assert await reserve(a, 2, PrType.WRITE_EXCLUSIVE) == CONFLICT
    assert await a.sense(cdbs.pr_out(PrOut.RESERVE, 2), cdbs.pr_params(1)) == (ILLEGAL, 0x24, 0)
    rsp = await a.run(cdbs.pr_out(PrOut.RESERVE, 1, scope=1), cdbs.pr_params(1))
    assert rsp.status == Status.CHECK_CONDITION
    assert await b.status(cdbs.pr_out(PrOut.RELEASE, 1), cdbs.pr_params(0)) == CONFLICT
    assert await b.status(cdbs.pr_out(PrOut.CLEAR), cdbs.pr_params(0)) == CONFLICT


async def test_parameter_list_checks(a: Initiator) -> None:
    params = cdbs.pr_params(0, 1)
    assert await a.sense(cdbs.pr_out(PrOut.REGISTER, length=20), params[:20]) == (ILLEGAL, 0x1A, 0)
    spec = cdbs.pr_params(0, 1, spec_i_pt=True)
    assert await a.sense(cdbs.pr_out(PrOut.REGISTER), spec) == (ILLEGAL, 0x26, 0)
    # No state dir: APTPL cannot be honoured.
    aptpl = cdbs.pr_params(0, 1, aptpl=True)
    assert await a.sense(cdbs.pr_out(PrOut.REGISTER), aptpl) == (ILLEGAL, 0x26, 0)
    assert await a.sense(cdbs.pr_out(0x1F), params) == (ILLEGAL, 0x24, 0)


async def test_unregistering_holder_releases(a: Initiator, b: Initiator) -> None:
    await register(a, 1)
    await register(b, 2)
    assert await reserve(a, 1, PrType.WRITE_EXCLUSIVE_REGISTRANTS_ONLY) == Status.GOOD
    await a.good(cdbs.pr_out(PrOut.REGISTER), cdbs.pr_params(1, 0))
    assert await read_reservation(a) is None
    assert await b.clear_ua() == [(0x2A, 0x04)]


async def test_all_registrants_reservation_outlives_its_creator(a: Initiator, b: Initiator) -> None:
    await register(a, 1)
    await register(b, 2)
    assert await reserve(a, 1, PrType.EXCLUSIVE_ACCESS_ALL_REGISTRANTS) == Status.GOOD
    await a.good(cdbs.pr_out(PrOut.REGISTER), cdbs.pr_params(1, 0))
    assert (await read_reservation(b))[2] == PrType.EXCLUSIVE_ACCESS_ALL_REGISTRANTS
    await b.good(cdbs.pr_out(PrOut.REGISTER), cdbs.pr_params(2, 0))
    assert await read_reservation(b) is None


async def test_clear(target: ScsiTarget, a: Initiator, b: Initiator) -> None:
    await register(a, 1)
    await register(b, 2)
    await reserve(a, 1, PrType.EXCLUSIVE_ACCESS)
    gen = (await read_keys(a))[0]
    await b.good(cdbs.pr_out(PrOut.CLEAR), cdbs.pr_params(2))
    assert await read_keys(b) == (gen + 1, [])
    assert await read_reservation(b) is None
    assert await a.clear_ua() == [(0x2A, 0x03)]
    assert await b.clear_ua() == []


async def test_preempt_registration_only(a: Initiator, b: Initiator) -> None:
    await register(a, 0x11)
    await register(b, 0x22)
    gen = (await read_keys(a))[0]
    await b.good(cdbs.pr_out(PrOut.PREEMPT, PrType.EXCLUSIVE_ACCESS), cdbs.pr_params(0x22, 0x11))
    assert await read_keys(b) == (gen + 1, [0x22])
    assert await read_reservation(b) is None
    assert await a.clear_ua() == [(0x2A, 0x05)]
    # Preempting a key nobody holds conflicts; a zero key without reservation is invalid.
    pe = cdbs.pr_out(PrOut.PREEMPT, PrType.EXCLUSIVE_ACCESS)
    assert await b.status(pe, cdbs.pr_params(0x22, 0x99)) == CONFLICT
    assert await b.sense(pe, cdbs.pr_params(0x22, 0)) == (ILLEGAL, 0x26, 0)


async def test_preempt_reservation(target: ScsiTarget, a: Initiator, b: Initiator) -> None:
    c = await login(target, "gamma")
    await register(a, 0x11)
    await register(b, 0x22)
    await register(c, 0x33)
    await reserve(a, 0x11, PrType.WRITE_EXCLUSIVE)
    await b.good(
        cdbs.pr_out(PrOut.PREEMPT, PrType.EXCLUSIVE_ACCESS_REGISTRANTS_ONLY),
        cdbs.pr_params(0x22, 0x11),
    )
    _, key, rtype = await read_reservation(b)
    assert (key, rtype) == (0x22, PrType.EXCLUSIVE_ACCESS_REGISTRANTS_ONLY)
    assert (await read_keys(b))[1] == [0x22, 0x33]
    assert await a.clear_ua() == [(0x2A, 0x05)]
    assert await c.clear_ua() == [(0x2A, 0x04)]  # type changed: RESERVATIONS RELEASED
    assert await a.status(cdbs.read(10, 0, 1)) == CONFLICT
    assert await c.status(cdbs.read(10, 0, 1)) == Status.GOOD


async def test_preempt_all_registrants_with_zero_key(a: Initiator, b: Initiator) -> None:
    await register(a, 1)
    await register(b, 2)
    await reserve(a, 1, PrType.WRITE_EXCLUSIVE_ALL_REGISTRANTS)
    await b.good(cdbs.pr_out(PrOut.PREEMPT, PrType.WRITE_EXCLUSIVE), cdbs.pr_params(2, 0))
    assert (await read_keys(b))[1] == [2]
    assert (await read_reservation(b))[1:] == (2, PrType.WRITE_EXCLUSIVE)


async def test_preempt_and_abort_aborts_the_preempted_nexus_commands(
    make_target: MakeTarget,
) -> None:
    dev = BlockingDevice(1 << 20)
    target = make_target({0: dev})
    a, b = await login(target, "alpha"), await login(target, "beta")
    await register(a, 0xA)
    await register(b, 0xB)
    await reserve(a, 0xA, PrType.WRITE_EXCLUSIVE)
    held = asyncio.ensure_future(target.execute(a.command(cdbs.read(10, 0, 1))))
    await dev.entered.wait()
    pa = cdbs.pr_out(PrOut.PREEMPT_AND_ABORT, PrType.EXCLUSIVE_ACCESS)
    await b.good(pa, cdbs.pr_params(0xB, 0xA))
    with pytest.raises(TaskAborted):
        await held
    assert not target.logical_unit(0).tasks.running
    assert await a.clear_ua() == [(0x2A, 0x05)]
    assert (await read_reservation(b))[1:] == (0xB, PrType.EXCLUSIVE_ACCESS)
    dev.gate.set()


async def test_preempt_and_abort_with_tas_reports_task_aborted(make_target: MakeTarget) -> None:
    dev = BlockingDevice(1 << 20)
    target = make_target({0: dev})
    a, b = await login(target, "alpha"), await login(target, "beta")
    target.logical_unit(0).modes.current[0x0A][5] |= 0x40  # TAS=1
    target.logical_unit(0).modes._refresh()
    await register(a, 0xA)
    await register(b, 0xB)
    held = asyncio.ensure_future(target.execute(a.command(cdbs.read(10, 0, 1))))
    await dev.entered.wait()
    pa = cdbs.pr_out(PrOut.PREEMPT_AND_ABORT, PrType.EXCLUSIVE_ACCESS)
    await b.good(pa, cdbs.pr_params(0xB, 0xA))
    assert (await held).status == Status.TASK_ABORTED


async def test_register_and_move(target: ScsiTarget) -> None:
    a = await login(target, "alpha", port=1)
    b = await login(target, "beta", port=2)
    await register(a, 0xA)
    await reserve(a, 0xA, PrType.WRITE_EXCLUSIVE)
    gen = (await read_keys(a))[0]
    params = cdbs.register_and_move_params(0xA, 0xB, 2, b.nexus.initiator_port, unreg=True)
    await a.good(cdbs.pr_out(PrOut.REGISTER_AND_MOVE, length=len(params)), params)
    assert await read_keys(a) == (gen + 1, [0xB])
    assert (await read_reservation(a))[1:] == (0xB, PrType.WRITE_EXCLUSIVE)
    assert await b.status(cdbs.write(10, 0, 1), bytes(BS)) == Status.GOOD
    assert await a.status(cdbs.write(10, 0, 1), bytes(BS)) == CONFLICT


async def test_register_and_move_errors(target: ScsiTarget) -> None:
    a = await login(target, "alpha", port=1)
    b = await login(target, "beta", port=2)
    await register(a, 0xA)
    ok = cdbs.register_and_move_params(0xA, 0xB, 2, b.nexus.initiator_port)
    rm = cdbs.pr_out(PrOut.REGISTER_AND_MOVE, length=len(ok))
    assert await a.status(rm, ok) == CONFLICT  # not the holder
    await reserve(a, 0xA, PrType.WRITE_EXCLUSIVE)
    bad_port = cdbs.register_and_move_params(0xA, 0xB, 9, b.nexus.initiator_port)
    assert await a.sense(rm, bad_port) == (ILLEGAL, 0x26, 0)
    to_self = cdbs.register_and_move_params(0xA, 0xB, 1, a.nexus.initiator_port)
    assert await a.sense(cdbs.pr_out(7, length=len(to_self)), to_self) == (ILLEGAL, 0x26, 0)
    zero = cdbs.register_and_move_params(0xA, 0, 2, b.nexus.initiator_port)
    assert await a.sense(rm, zero) == (ILLEGAL, 0x26, 0)
    assert await a.sense(cdbs.pr_out(7, length=len(ok) + 4), ok + bytes(4)) == (ILLEGAL, 0x1A, 0)


async def test_read_full_status(target: ScsiTarget) -> None:
    a = await login(target, "alpha", isid=0x23D000000001, port=1)
    b = await login(target, "beta", port=2)
    await register(a, 0xA)
    await register(b, 0xB, all_tg_pt=True)
    await reserve(a, 0xA, PrType.EXCLUSIVE_ACCESS)
    data = await a.good(cdbs.pr_in(PrIn.READ_FULL_STATUS))
    gen, length = int.from_bytes(data[0:4]), int.from_bytes(data[4:8])
    assert gen == 2 and length == len(data) - 8
    descs, pos = [], 8
    while pos < len(data):
        key = int.from_bytes(data[pos : pos + 8])
        flags, scope_type = data[pos + 12], data[pos + 13]
        rtpi = int.from_bytes(data[pos + 18 : pos + 20])
        tid_len = int.from_bytes(data[pos + 20 : pos + 24])
        tid = data[pos + 24 : pos + 24 + tid_len]
        descs.append((key, flags, scope_type, rtpi, tid))
        pos += 24 + tid_len
    (ka, fa, sa, ra, tida), (kb, fb, sb, rb, tidb) = descs
    assert (ka, fa, sa, ra) == (0xA, 0x01, PrType.EXCLUSIVE_ACCESS, 1)  # R_HOLDER
    assert (kb, fb, sb, rb) == (0xB, 0x02, 0, 2)  # ALL_TG_PT
    for tid, ini in ((tida, a), (tidb, b)):
        assert tid[0] == 0x45  # format 01b, iSCSI
        assert len(tid) % 4 == 0 and int.from_bytes(tid[2:4]) == len(tid) - 4
        name = tid[4:].rstrip(b"\x00").decode()
        assert name == ini.nexus.initiator_port.lower()
        assert ",i,0x" in name
    assert b",i,0x23d000000001" in tida


async def test_all_tg_pt_registration_covers_every_target_port(target: ScsiTarget) -> None:
    a1 = await login(target, "alpha", port=1)
    a2 = await login(target, "alpha", port=2)  # same initiator port, other target port
    await register(a1, 0xA, all_tg_pt=True)
    await reserve(a2, 0xA, PrType.WRITE_EXCLUSIVE)  # a2 is registered too
    assert await a1.status(cdbs.write(10, 0, 1), bytes(BS)) == Status.GOOD


async def test_report_capabilities(make_target: MakeTarget, tmp_path: Path) -> None:
    a = await login(make_target(), "alpha")
    data = await a.good(cdbs.pr_in(PrIn.REPORT_CAPABILITIES))
    assert int.from_bytes(data[0:2]) == 8
    assert data[2] == 0x04  # ATP_C only (no SIP_C, no PTPL_C without a state dir)
    assert data[3] & 0x80 and (data[3] >> 4) & 7 <= 5
    assert int.from_bytes(data[4:6]) == 0xEA01
    b = await login(make_target(state_dir=tmp_path / "s"), "alpha")
    caps = await b.good(cdbs.pr_in(PrIn.REPORT_CAPABILITIES))
    assert caps[2] & 0x01 and not caps[3] & 0x01
    await register(b, 1, aptpl=True)
    assert (await b.good(cdbs.pr_in(PrIn.REPORT_CAPABILITIES)))[3] & 0x01  # PTPL_A


async def test_aptpl_state_survives_a_new_target(make_target: MakeTarget, tmp_path: Path) -> None:
    state = tmp_path / "state"
    t1 = make_target(state_dir=state)
    a, b = await login(t1, "alpha"), await login(t1, "beta")
    await register(a, 0xA, aptpl=True)
    await register(b, 0xB, aptpl=True)
    await reserve(a, 0xA, PrType.WRITE_EXCLUSIVE_REGISTRANTS_ONLY)
    saved = json.loads((state / "lun0.pr.json").read_text())
    assert saved["aptpl"] and saved["reservation"]["type"] == 5
    assert not list(state.glob("*.tmp"))

    t2 = make_target(state_dir=state)  # a restart (or kill -9: the file was complete already)
    a2, b2 = await login(t2, "alpha"), await login(t2, "beta")
    c2 = await login(t2, "gamma")
    assert await read_keys(a2) == (2, [0xA, 0xB])
    assert await read_reservation(b2) == (2, 0xA, PrType.WRITE_EXCLUSIVE_REGISTRANTS_ONLY)
    assert await c2.status(cdbs.write(10, 0, 1), bytes(BS)) == CONFLICT
    assert await b2.status(cdbs.write(10, 0, 1), bytes(BS)) == Status.GOOD


async def test_no_restore_without_aptpl(make_target: MakeTarget, tmp_path: Path) -> None:
    state = tmp_path / "state"
    t1 = make_target(state_dir=state)
    a = await login(t1, "alpha")
    await register(a, 0xA, aptpl=True)
    await register(a, 0xA)  # REGISTER AND IGNORE with APTPL=0: the file goes away
    assert not (state / "lun0.pr.json").exists()
    await reserve(a, 0xA, PrType.WRITE_EXCLUSIVE)
    a2 = await login(make_target(state_dir=state), "alpha")
    assert await read_keys(a2) == (0, [])
    assert await read_reservation(a2) is None


async def test_corrupt_aptpl_file_refuses_to_start(make_target: MakeTarget, tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    (state / "lun0.pr.json").write_text("{not json")
    with pytest.raises(PrStateError):
        make_target(state_dir=state)


async def test_cold_reset_drops_non_aptpl_reservations(a: Initiator, target: ScsiTarget) -> None:
    from ophiura.scsi.api import TmfFunction

    await register(a, 1)
    await target.task_management(a.nexus, TmfFunction.TARGET_COLD_RESET, 0, None)
    await a.clear_ua()
    assert await read_keys(a) == (0, [])
    await register(a, 1)
    await target.task_management(a.nexus, TmfFunction.TARGET_WARM_RESET, 0, None)
    await a.clear_ua()
    assert (await read_keys(a))[1] == [1]  # a warm reset keeps them (SPC-4 5.12.4)


def test_transport_ids_are_lower_case_and_padded() -> None:
    from ophiura.scsi.identity import iscsi_transport_id, parse_iscsi_transport_id

    tid = iscsi_transport_id(f"{TARGET}:x,i,0x123".lower())
    assert len(tid) % 4 == 0
    assert parse_iscsi_transport_id(tid) == (f"{TARGET}:x,i,0x123".lower(), len(tid))


async def test_aptpl_write_failure_changes_nothing(
    make_target: MakeTarget, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """GOOD is only sent once the state is on disk: if saving fails, the command fails and
    the in-memory state stays as it was."""
    from ophiura.scsi import pr_state

    target = make_target(state_dir=tmp_path / "s")
    a, b = await login(target, "alpha"), await login(target, "beta")
    await register(a, 0xA, aptpl=True)

    def broken(path: Path, state: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(pr_state, "save", broken)
    rsp = await b.run(cdbs.pr_out(PrOut.REGISTER_AND_IGNORE), cdbs.pr_params(0, 0xB, aptpl=True))
    assert rsp.status == Status.CHECK_CONDITION and rsp.sense[2] == 4
    assert await read_keys(a) == (1, [0xA])


async def test_leftover_temp_file_from_a_crash_is_ignored(
    make_target: MakeTarget, tmp_path: Path
) -> None:
    state = tmp_path / "s"
    a = await login(make_target(state_dir=state), "alpha")
    await register(a, 0xA, aptpl=True)
    (state / "lun0.pr.json.tmp").write_text('{"half": ')  # killed -9 in the middle of a save
    a2 = await login(make_target(state_dir=state), "alpha")
    assert await read_keys(a2) == (1, [0xA])
