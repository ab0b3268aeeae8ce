"""MODE SENSE and MODE SELECT (6 and 10): headers, block descriptors, and the 2A/01 rule.

The pages themselves live in modepages.py. A MODE SELECT that changes anything raises MODE
PARAMETERS CHANGED on every *other* I_T nexus of the LU (SPC-4 5.14), because the parameters are
shared by all hosts (HA profile 4.8).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ophiura.scsi.api import Command, Response
from ophiura.scsi.constants import Asc, Op
from ophiura.scsi.logical_unit import LogicalUnit
from ophiura.scsi.sense import invalid_param, param_list_length_error

if TYPE_CHECKING:
    from ophiura.scsi.target import ScsiTarget


def _device_specific(lu: LogicalUnit) -> int:
    return (0x80 if lu.write_protected else 0) | 0x10  # WP, DPOFUA


def _block_descriptor(lu: LogicalUnit, long_lba: bool) -> bytes:
    if long_lba:
        return lu.num_blocks.to_bytes(8) + bytes(4) + lu.block_size.to_bytes(4)
    return min(lu.num_blocks, 0xFFFFFFFF).to_bytes(4) + b"\x00" + lu.block_size.to_bytes(3)


async def mode_sense(t: ScsiTarget, lu: LogicalUnit, cmd: Command) -> Response:
    c = cmd.cdb
    six = c[0] == Op.MODE_SENSE_6
    dbd = bool(c[1] & 0x08)
    long_lba = not six and bool(c[1] & 0x10)
    pc = c[2] >> 6
    pages = lu.modes.pages(pc, c[2] & 0x3F, c[3])
    desc = b"" if dbd else _block_descriptor(lu, long_lba)
    medium, dsp = 0, _device_specific(lu)
    if six:
        alloc = c[4]
        body = bytes((medium, dsp, len(desc))) + desc + pages
        data = bytes((len(body),)) + body
    else:
        alloc = (c[7] << 8) | c[8]
        body = bytes((medium, dsp, 0x01 if desc and long_lba else 0, 0)) + len(desc).to_bytes(2)
        body += desc + pages
        data = len(body).to_bytes(2) + body
    return Response(data_in=data[:alloc])


async def mode_select(t: ScsiTarget, lu: LogicalUnit, cmd: Command) -> Response:
    c = cmd.cdb
    six = c[0] == Op.MODE_SELECT_6
    save = bool(c[1] & 0x01)
    length = c[4] if six else (c[7] << 8) | c[8]
    if length == 0:
        return Response()
    params = bytes(cmd.data_out[:length])
    header = 4 if six else 8
    if len(params) < header:
        raise param_list_length_error()
    bd_len = params[3] if six else int.from_bytes(params[6:8])
    long_lba = not six and bool(params[4] & 0x01)
    if bd_len:
        size = 16 if long_lba else 8
        if bd_len != size:
            raise invalid_param(3 if six else 6)
        if len(params) < header + bd_len:
            raise param_list_length_error()
        desc = params[header : header + bd_len]
        blocks = int.from_bytes(desc[0:8] if long_lba else desc[0:4])
        block_len = int.from_bytes(desc[12:16] if long_lba else desc[5:8])
        if block_len != lu.block_size:
            raise invalid_param(header + (12 if long_lba else 5))
        if blocks not in (0, lu.num_blocks, min(lu.num_blocks, 0xFFFFFFFF)):
            raise invalid_param(header)
    offset = header + bd_len
    changed = lu.modes.select(params[offset:], offset, save)
    if changed:
        others = [n for n in t.nexuses() if n != cmd.nexus]
        lu.ua.establish_all(others, Asc.MODE_PARAMETERS_CHANGED)
    return Response(data_out_length=length)
