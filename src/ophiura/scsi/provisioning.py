"""Logical block provisioning: WRITE SAME (with UNMAP, NDOB), UNMAP and GET LBA STATUS.

A thin LU (BlockDevice.thin) really deallocates: UNMAP and WRITE SAME with the UNMAP bit punch
holes, and unmapped blocks read back as zeros (LBPRZ=1). A thick LU does not offer UNMAP at all
(it is not in its command table, so it gets INVALID COMMAND OPERATION CODE) and refuses the
UNMAP bit of WRITE SAME, which is what libiscsi's *_vpd tests expect when LBPME=0.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ophiura.block.device import BlockDeviceError
from ophiura.scsi.api import Command, Response
from ophiura.scsi.logical_unit import (
    MAX_UNMAP_BLOCKS,
    MAX_UNMAP_DESCRIPTORS,
    MAX_WRITE_SAME_BLOCKS,
    WRITE_SAME_CHUNK_BYTES,
    LogicalUnit,
    backend_error,
)
from ophiura.scsi.sense import invalid_cdb, invalid_param, param_list_length_error

if TYPE_CHECKING:
    from ophiura.scsi.target import ScsiTarget

# GET LBA STATUS looks at most this many blocks per command (a memory backend walks blocks).
LBA_STATUS_SCAN_BLOCKS = 1 << 16


async def _write_same(
    lu: LogicalUnit, cmd: Command, lba: int, blocks: int, ndob: bool, tl_byte: int
) -> Response:
    """WRITE SAME (SBC-3 5.41, 5.42). NUMBER OF LOGICAL BLOCKS 0 (WSNZ=0) means every block
    from LBA to the last one; that count is then held to MAXIMUM WRITE SAME LENGTH like any
    other. On a thin LU the UNMAP bit deallocates the range whatever the Data-Out holds (SBC-3:
    LBPRZ=1, so it then reads back as zeros), with one discard call for the whole range."""
    flags = cmd.cdb[1]
    if flags & 0xE0:
        raise invalid_cdb(1, 7)
    if flags & 0x10:  # ANCHOR: ANC_SUP=0
        raise invalid_cdb(1, 4)
    lu.check_ready()
    lu.check_range(lba, blocks)
    lu.check_writable()
    bs = lu.block_size
    spdtl = 0 if ndob else bs
    if not ndob and len(cmd.data_out) != bs:
        raise invalid_cdb(tl_byte)  # Data-Out must be exactly one logical block
    if blocks == 0:
        blocks = lu.num_blocks - lba  # check_range made sure lba is on the medium
    if blocks > MAX_WRITE_SAME_BLOCKS:
        raise invalid_cdb(tl_byte)
    unmap = bool(flags & 0x08)
    if unmap and not lu.thin:
        raise invalid_cdb(1, 3)
    if unmap:
        await lu.discard(lba, blocks)
        return Response(data_out_length=spdtl)
    pattern = bytes(bs) if ndob else bytes(cmd.data_out)
    if pattern.count(0) == bs:
        await lu.write_zeroes(lba, blocks)
        return Response(data_out_length=spdtl)
    # A pattern: written in chunks of at most WRITE_SAME_CHUNK_BYTES, one buffer reused.
    per_chunk = max(1, WRITE_SAME_CHUNK_BYTES // bs)
    chunk = pattern * min(per_chunk, blocks)
    done = 0
    while done < blocks:
        n = min(per_chunk, blocks - done)
        await lu.write(lba + done, memoryview(chunk)[: n * bs], False)
        done += n
    return Response(data_out_length=spdtl)


async def write_same10(t: ScsiTarget, lu: LogicalUnit, cmd: Command) -> Response:
    c = cmd.cdb
    return await _write_same(lu, cmd, int.from_bytes(c[2:6]), (c[7] << 8) | c[8], False, 7)


async def write_same16(t: ScsiTarget, lu: LogicalUnit, cmd: Command) -> Response:
    c = cmd.cdb
    lba, blocks = int.from_bytes(c[2:10]), int.from_bytes(c[10:14])
    return await _write_same(lu, cmd, lba, blocks, bool(c[1] & 0x01), 10)


async def unmap(t: ScsiTarget, lu: LogicalUnit, cmd: Command) -> Response:
    """UNMAP (SBC-3 5.28): validate the whole block descriptor list, then deallocate."""
    c = cmd.cdb
    if c[1] & 0x01:  # ANCHOR
        raise invalid_cdb(1, 0)
    length = (c[7] << 8) | c[8]
    if length == 0:
        return Response()
    if length < 8:
        raise param_list_length_error()
    params = bytes(cmd.data_out[:length])
    if len(params) < 8:
        raise param_list_length_error()
    lu.check_ready()
    lu.check_writable()
    bd_len = int.from_bytes(params[2:4])
    if bd_len % 16:
        raise invalid_param(2)
    bd_len = min(bd_len, (len(params) - 8) // 16 * 16)
    if bd_len // 16 > MAX_UNMAP_DESCRIPTORS:
        raise invalid_param(2)
    ranges = []
    for off in range(8, 8 + bd_len, 16):
        lba = int.from_bytes(params[off : off + 8])
        count = int.from_bytes(params[off + 8 : off + 12])
        if count > MAX_UNMAP_BLOCKS:
            raise invalid_param(off + 8)
        if lba + count > lu.num_blocks:
            lu.check_range(lba, count)  # raises LBA OUT OF RANGE
        if count:
            ranges.append((lba, count))
    for lba, count in ranges:
        await lu.discard(lba, count)
    return Response(data_out_length=length)


async def get_lba_status(t: ScsiTarget, lu: LogicalUnit, cmd: Command) -> Response:
    """GET LBA STATUS (SBC-3 5.6): mapped / deallocated runs from BlockDevice.extents()."""
    c = cmd.cdb
    start = int.from_bytes(c[2:10])
    alloc = int.from_bytes(c[10:14])
    lu.check_ready()
    if start >= lu.num_blocks:
        lu.check_range(start, 1)
    bs = lu.block_size
    span = min(lu.num_blocks - start, LBA_STATUS_SCAN_BLOCKS)
    try:
        extents = await lu.device.extents(start * bs, span * bs)
    except BlockDeviceError as exc:
        raise backend_error(exc, writing=False, lba=start) from exc
    room = max(1, (alloc - 8) // 16)
    out = bytearray()
    for ext in extents:
        lba, count = ext.offset // bs, ext.length // bs
        status = 0 if ext.mapped else 1
        while count and len(out) // 16 < room:
            n = min(count, 0xFFFFFFFF)
            out += lba.to_bytes(8) + n.to_bytes(4) + bytes((status, 0, 0, 0))
            lba += n
            count -= n
        if len(out) // 16 >= room:
            break
    data = (len(out) + 4).to_bytes(4) + bytes(4) + bytes(out)
    return Response(data_in=data[:alloc])
