"""SBC-3 commands about the medium rather than its data: READ CAPACITY, START STOP UNIT,
PREVENT ALLOW MEDIUM REMOVAL, READ DEFECT DATA."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ophiura.scsi.api import Command, Response
from ophiura.scsi.logical_unit import LogicalUnit
from ophiura.scsi.sense import invalid_cdb

if TYPE_CHECKING:
    from ophiura.scsi.target import ScsiTarget

# POWER CONDITION values START STOP UNIT accepts (SBC-3 table 71); all but 0 are no-ops here.
_POWER_CONDITIONS = frozenset((0x0, 0x1, 0x2, 0x3, 0x7, 0xA, 0xB))


async def read_capacity10(t: ScsiTarget, lu: LogicalUnit, cmd: Command) -> Response:
    c = cmd.cdb
    if not (c[8] & 0x01) and int.from_bytes(c[2:6]):  # LBA without PMI
        raise invalid_cdb(2)
    last = lu.num_blocks - 1
    data = min(last, 0xFFFFFFFF).to_bytes(4) + lu.block_size.to_bytes(4)
    return Response(data_in=data)


async def read_capacity16(t: ScsiTarget, lu: LogicalUnit, cmd: Command) -> Response:
    c = cmd.cdb
    alloc = int.from_bytes(c[10:14])
    if not (c[14] & 0x01) and int.from_bytes(c[2:10]):
        raise invalid_cdb(2)
    data = bytearray(32)
    data[0:8] = (lu.num_blocks - 1).to_bytes(8)
    data[8:12] = lu.block_size.to_bytes(4)
    data[13] = lu.lbppbe  # LOGICAL BLOCKS PER PHYSICAL BLOCK EXPONENT; lowest aligned LBA 0
    if lu.thin:
        data[14] = 0x80 | 0x40  # LBPME, LBPRZ
    return Response(data_in=bytes(data[:alloc]))


async def start_stop_unit(t: ScsiTarget, lu: LogicalUnit, cmd: Command) -> Response:
    c = cmd.cdb
    power_condition = c[4] >> 4
    if power_condition not in _POWER_CONDITIONS:
        raise invalid_cdb(4, 7)
    if power_condition:
        return Response()  # power conditions are not modelled; START is ignored (SBC-3 5.25)
    if c[4] & 0x01:
        lu.stopped = False
        return Response()
    # Stop: afterwards media access gets NOT READY, INITIALIZING COMMAND REQUIRED.
    if not (c[4] & 0x04):  # NO_FLUSH=0: write the cache back first
        await lu.flush()
    lu.stopped = True
    return Response()


async def prevent_allow(t: ScsiTarget, lu: LogicalUnit, cmd: Command) -> Response:
    # The medium is not removable (RMB=0), so there is nothing to lock; PREVENT values 10b and
    # 11b are obsolete (SBC-3) and refused.
    if cmd.cdb[4] & 0x02:
        raise invalid_cdb(4, 1)
    return Response()


async def read_defect_data10(t: ScsiTarget, lu: LogicalUnit, cmd: Command) -> Response:
    c = cmd.cdb
    alloc = (c[7] << 8) | c[8]
    # An empty defect list: PLISTV/GLISTV echo what was asked, list length 0.
    return Response(data_in=bytes((0, c[2] & 0x1F, 0, 0))[:alloc])


async def read_defect_data12(t: ScsiTarget, lu: LogicalUnit, cmd: Command) -> Response:
    c = cmd.cdb
    alloc = int.from_bytes(c[6:10])
    return Response(data_in=bytes((0, c[1] & 0x1F, 0, 0, 0, 0, 0, 0))[:alloc])
