"""REPORT SUPPORTED OPERATION CODES and REPORT SUPPORTED TASK MANAGEMENT FUNCTIONS (SPC-4
6.35, 6.36): generated from the same table that dispatches commands (opcodes.py)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ophiura.scsi.api import Command, Response
from ophiura.scsi.logical_unit import LogicalUnit
from ophiura.scsi.opcodes import SERVICE_ACTION_OPCODES, CommandInfo, find
from ophiura.scsi.sense import invalid_cdb

if TYPE_CHECKING:
    from ophiura.scsi.target import ScsiTarget

SUPPORT_NOT_SUPPORTED = 0b001
SUPPORT_STANDARD = 0b011


def _timeouts(info: CommandInfo) -> bytes:
    """Command timeouts descriptor: nominal unspecified, recommended in seconds."""
    return bytes((0x00, 0x0A, 0x00, 0x00)) + bytes(4) + info.timeout.to_bytes(4)


def _all_commands(commands: tuple[CommandInfo, ...], rctd: bool) -> bytes:
    out = bytearray()
    for info in commands:
        has_sa = info.service_action is not None
        flags = (0x02 if rctd else 0) | (0x01 if has_sa else 0)
        out += bytes((info.opcode, 0)) + (info.service_action or 0).to_bytes(2)
        out += bytes((0, flags)) + info.cdb_length.to_bytes(2)
        if rctd:
            out += _timeouts(info)
    return len(out).to_bytes(4) + bytes(out)


def _one_command(info: CommandInfo | None, rctd: bool) -> bytes:
    if info is None:
        return bytes((0, SUPPORT_NOT_SUPPORTED, 0, 0))
    head = bytes((0, (0x80 if rctd else 0) | SUPPORT_STANDARD)) + info.cdb_length.to_bytes(2)
    return head + info.usage + (_timeouts(info) if rctd else b"")


async def report_supported_opcodes(t: ScsiTarget, lu: LogicalUnit, cmd: Command) -> Response:
    c = cmd.cdb
    rctd = bool(c[2] & 0x80)
    option = c[2] & 0x07
    opcode = c[3]
    sa = int.from_bytes(c[4:6])
    alloc = int.from_bytes(c[6:10])
    if option == 0:
        data = _all_commands(lu.commands, rctd)
    elif option == 1:
        if opcode in SERVICE_ACTION_OPCODES:
            raise invalid_cdb(2, 2)  # this opcode needs a service action: use option 2
        data = _one_command(find(lu.commands, opcode, None), rctd)
    elif option == 2:
        if opcode not in SERVICE_ACTION_OPCODES:
            raise invalid_cdb(2, 2)
        data = _one_command(find(lu.commands, opcode, sa), rctd)
    elif option == 3:
        key = sa if opcode in SERVICE_ACTION_OPCODES else None
        data = _one_command(find(lu.commands, opcode, key), rctd)
    else:
        raise invalid_cdb(2, 2)
    return Response(data_in=data[:alloc])


async def report_supported_tmfs(t: ScsiTarget, lu: LogicalUnit, cmd: Command) -> Response:
    c = cmd.cdb
    alloc = int.from_bytes(c[6:10])
    if alloc < 4:
        raise invalid_cdb(6)
    # ABORT TASK, ABORT TASK SET, CLEAR TASK SET, LOGICAL UNIT RESET, TARGET RESET.
    flags = 0x80 | 0x40 | 0x10 | 0x08 | 0x02
    # REPD asks for the extended format: 16 bytes, ADDITIONAL LENGTH 0Ch.
    repd = bool(c[2] & 0x80)
    data = bytes((flags, 0, 0, 0x0C if repd else 0)) + bytes(12 if repd else 0)
    return Response(data_in=data[:alloc])
