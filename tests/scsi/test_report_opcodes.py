"""REPORT SUPPORTED OPERATION CODES: all commands, one command, service actions, RCTD."""

from __future__ import annotations

from ophiura.scsi.constants import Op
from ophiura.scsi.opcodes import COMMANDS
from ophiura.scsi.target import DISPATCH, ScsiTarget

from . import cdbs
from .conftest import Initiator, login

BAD_CDB = (5, 0x24, 0)


def descriptors(data: bytes) -> list[tuple[int, int, bool, bool, int, bytes]]:
    out, pos, end = [], 4, 4 + int.from_bytes(data[0:4])
    while pos < end:
        op, sa = data[pos], int.from_bytes(data[pos + 2 : pos + 4])
        ctdp, servactv = bool(data[pos + 5] & 2), bool(data[pos + 5] & 1)
        length = int.from_bytes(data[pos + 6 : pos + 8])
        timeouts = data[pos + 8 : pos + 20] if ctdp else b""
        out.append((op, sa, ctdp, servactv, length, timeouts))
        pos += 20 if ctdp else 8
    return out


async def test_all_commands(a: Initiator) -> None:
    listed = descriptors(await a.good(cdbs.report_opcodes()))
    ops = {d[0] for d in listed}
    assert ops == {c.opcode for c in COMMANDS if not c.thin_only}
    assert ops <= set(DISPATCH)  # everything reported is dispatched
    assert Op.UNMAP not in ops
    for _, sa, ctdp, servactv, _, _ in listed:
        assert not ctdp
        assert servactv or sa == 0
    assert (Op.PERSISTENT_RESERVE_OUT, 7) in {(d[0], d[1]) for d in listed}


async def test_all_commands_with_timeouts(a: Initiator) -> None:
    for *_, ctdp, _, _, timeouts in descriptors(await a.good(cdbs.report_opcodes(rctd=True))):
        assert ctdp and int.from_bytes(timeouts[0:2]) == 0x0A


async def test_thin_lists_unmap(thin_target: ScsiTarget) -> None:
    a = await login(thin_target, "a")
    assert Op.UNMAP in {d[0] for d in descriptors(await a.good(cdbs.report_opcodes()))}


async def test_one_command(a: Initiator) -> None:
    data = await a.good(cdbs.report_opcodes(1, Op.WRITE_10))
    assert data[1] & 0x07 == 3 and int.from_bytes(data[2:4]) == 10
    usage = data[4:14]
    assert usage[0] == Op.WRITE_10 and usage[1] & 0x18 == 0x18  # DPO, FUA
    data = await a.good(cdbs.report_opcodes(1, Op.WRITE_10, rctd=True))
    assert data[1] & 0x80 and int.from_bytes(data[14:16]) == 0x0A
    data = await a.good(cdbs.report_opcodes(1, 0x04))
    assert data[1] & 0x07 == 1  # not supported
    assert await a.sense(cdbs.report_opcodes(1, Op.PERSISTENT_RESERVE_IN)) == BAD_CDB
    assert await a.sense(cdbs.report_opcodes(2, Op.WRITE_10)) == BAD_CDB
    assert await a.sense(cdbs.report_opcodes(5)) == BAD_CDB


async def test_one_command_with_service_action(a: Initiator) -> None:
    data = await a.good(cdbs.report_opcodes(2, Op.SERVICE_ACTION_IN_16, 0x10))
    assert data[1] & 0x07 == 3 and data[4:6] == bytes((Op.SERVICE_ACTION_IN_16, 0x10))
    data = await a.good(cdbs.report_opcodes(2, Op.PERSISTENT_RESERVE_IN, 9))
    assert data[1] & 0x07 == 1
    data = await a.good(cdbs.report_opcodes(3, Op.READ_16))
    assert data[1] & 0x07 == 3


async def test_every_listed_command_reports_its_usage(a: Initiator) -> None:
    for op, sa, _, servactv, length, _ in descriptors(await a.good(cdbs.report_opcodes())):
        option = 2 if servactv else 1
        data = await a.good(cdbs.report_opcodes(option, op, sa))
        assert int.from_bytes(data[2:4]) == length and data[4] == op


async def test_allocation_length_truncates(a: Initiator) -> None:
    assert len(await a.good(cdbs.report_opcodes(alloc=16))) == 16
