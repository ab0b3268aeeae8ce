"""SPC-4 primary commands that need no state of their own: TEST UNIT READY, REQUEST SENSE,
INQUIRY, REPORT LUNS, and the two service-action opcodes that fan out (9Eh, A3h)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ophiura.scsi.api import Command, Response
from ophiura.scsi.constants import Asc, MaintenanceIn, SenseKey, ServiceActionIn
from ophiura.scsi.inquiry import inquiry as inquiry_data
from ophiura.scsi.logical_unit import LogicalUnit
from ophiura.scsi.provisioning import get_lba_status
from ophiura.scsi.report_opcodes import report_supported_opcodes, report_supported_tmfs
from ophiura.scsi.sbc_control import read_capacity16
from ophiura.scsi.sense import CheckCondition, encode_sense, invalid_cdb, invalid_opcode

if TYPE_CHECKING:
    from ophiura.scsi.target import ScsiTarget


async def test_unit_ready(t: ScsiTarget, lu: LogicalUnit, cmd: Command) -> Response:
    lu.check_ready()
    return Response()


async def request_sense(t: ScsiTarget, lu: LogicalUnit, cmd: Command) -> Response:
    """Report a pending unit attention (and clear it), else NOT READY or NO SENSE."""
    c = cmd.cdb
    descriptor = bool(c[1] & 0x01)
    alloc = c[4]
    condition = lu.ua.take(cmd.nexus)
    if condition is not None:
        data = encode_sense(SenseKey.UNIT_ATTENTION, *condition, descriptor=descriptor)
    elif lu.stopped:
        data = encode_sense(SenseKey.NOT_READY, *Asc.NOT_READY_INIT_REQUIRED, descriptor=descriptor)
    else:
        data = encode_sense(SenseKey.NO_SENSE, *Asc.NO_ADDITIONAL_SENSE, descriptor=descriptor)
    return Response(data_in=data[:alloc])


async def inquiry(t: ScsiTarget, lu: LogicalUnit, cmd: Command) -> Response:
    return Response(data_in=inquiry_data(lu, t.info, cmd.nexus, cmd.cdb))


def report_luns_data(luns: list[int], cdb: bytes) -> bytes:
    select = cdb[2]
    alloc = int.from_bytes(cdb[6:10])
    if select not in (0x00, 0x01, 0x02, 0x10, 0x11, 0x12):
        raise invalid_cdb(2)
    if alloc < 16:
        raise invalid_cdb(6)
    entries = bytearray()
    if select != 0x01:  # 01h: well known LUs only; we have none
        for lun in sorted(luns):
            if lun < 256:
                entries += bytes((0x00, lun)) + bytes(6)  # peripheral device addressing
            else:
                entries += bytes((0x40 | (lun >> 8) & 0x3F, lun & 0xFF)) + bytes(6)  # flat
    data = len(entries).to_bytes(4) + bytes(4) + bytes(entries)
    return data[:alloc]


async def report_luns(t: ScsiTarget, lu: LogicalUnit, cmd: Command) -> Response:
    return Response(data_in=report_luns_data(t.luns(), cmd.cdb))


async def service_action_in(t: ScsiTarget, lu: LogicalUnit, cmd: Command) -> Response:
    sa = cmd.cdb[1] & 0x1F
    if sa == ServiceActionIn.READ_CAPACITY_16:
        return await read_capacity16(t, lu, cmd)
    if sa == ServiceActionIn.GET_LBA_STATUS:
        return await get_lba_status(t, lu, cmd)
    raise invalid_opcode()


async def maintenance_in(t: ScsiTarget, lu: LogicalUnit, cmd: Command) -> Response:
    sa = cmd.cdb[1] & 0x1F
    if sa == MaintenanceIn.REPORT_SUPPORTED_OPCODES:
        return await report_supported_opcodes(t, lu, cmd)
    if sa == MaintenanceIn.REPORT_SUPPORTED_TMFS:
        return await report_supported_tmfs(t, lu, cmd)
    raise invalid_opcode()


def no_such_lun() -> CheckCondition:
    return CheckCondition(SenseKey.ILLEGAL_REQUEST, Asc.LOGICAL_UNIT_NOT_SUPPORTED)
