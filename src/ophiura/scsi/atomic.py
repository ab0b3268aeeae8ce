"""COMPARE AND WRITE, ORWRITE and WRITE ATOMIC: writes that must be atomic.

COMPARE AND WRITE is how clustered filesystems and VMware ATS take on-disk locks, so it must be
atomic across all sessions: the range is owned through the LU's WriteGuard from before the read
until after the write, so no other write (from any nexus) lands in between. WRITE ATOMIC(16)
owns its range the same way, so no overlapping write from any nexus interleaves with it. Reads
are not held back (the guard tracks writers only), and a power loss can still tear a write
larger than the backing filesystem's block: the atomicity is between commands.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ophiura.scsi.api import Command, Response
from ophiura.scsi.logical_unit import MAX_COMPARE_AND_WRITE_BLOCKS, LogicalUnit
from ophiura.scsi.sbc import data_blocks, first_difference
from ophiura.scsi.sense import invalid_cdb, miscompare

if TYPE_CHECKING:
    from ophiura.scsi.target import ScsiTarget


async def compare_and_write(t: ScsiTarget, lu: LogicalUnit, cmd: Command) -> Response:
    c = cmd.cdb
    if c[1] & 0xE0:
        raise invalid_cdb(1, 7)
    lba = int.from_bytes(c[2:10])
    blocks = c[13]
    bs = lu.block_size
    lu.check_ready()
    lu.check_range(lba, blocks)
    if blocks > MAX_COMPARE_AND_WRITE_BLOCKS:
        raise invalid_cdb(13)
    lu.check_writable()
    spdtl = 2 * blocks * bs
    if len(cmd.data_out) != spdtl:
        # The Data-Out buffer must hold exactly the verify and the write data (SBC-3 5.2).
        raise invalid_cdb(13)
    if blocks == 0:
        return Response()
    data = memoryview(cmd.data_out)
    verify, new = data[: blocks * bs], data[blocks * bs :]
    fua = bool(c[1] & 0x08)
    rng = await lu.guard.begin_atomic(lba, lba + blocks)
    try:
        current = await lu.read(lba, blocks)
        if current != verify:
            # INFORMATION: offset in the Data-Out buffer of the first byte that differed.
            raise miscompare(first_difference(verify, current))
        await lu.write_locked(lba, new, fua)
    finally:
        lu.guard.end_atomic(rng)
    return Response(data_out_length=spdtl)


async def orwrite16(t: ScsiTarget, lu: LogicalUnit, cmd: Command) -> Response:
    """ORWRITE(16): OR the Data-Out into the blocks (SBC-3 5.9), atomically like CAW."""
    c = cmd.cdb
    if c[1] & 0xE0:
        raise invalid_cdb(1, 7)
    lba = int.from_bytes(c[2:10])
    blocks = int.from_bytes(c[10:14])
    lu.check_ready()
    lu.check_range(lba, blocks)
    if blocks > lu.max_transfer_blocks:
        raise invalid_cdb(10)
    lu.check_writable()
    bs = lu.block_size
    spdtl = blocks * bs
    count = min(len(cmd.data_out), spdtl) // bs
    if count == 0:
        return Response(data_out_length=spdtl)
    size = count * bs
    mask = int.from_bytes(cmd.data_out[:size])
    rng = await lu.guard.begin_atomic(lba, lba + count)
    try:
        current = int.from_bytes(await lu.read(lba, count))
        await lu.write_locked(lba, (current | mask).to_bytes(size), bool(c[1] & 0x08))
    finally:
        lu.guard.end_atomic(rng)
    return Response(data_out_length=spdtl)


async def write_atomic16(t: ScsiTarget, lu: LogicalUnit, cmd: Command) -> Response:
    """WRITE ATOMIC(16) (SBC-4 5.48): no alignment or granularity limits, no atomic boundary."""
    c = cmd.cdb
    if c[1] & 0xE0:  # WRPROTECT: no protection information
        raise invalid_cdb(1, 7)
    if c[10] or c[11]:  # ATOMIC BOUNDARY: MAXIMUM ATOMIC BOUNDARY SIZE is 0
        raise invalid_cdb(10)
    lba = int.from_bytes(c[2:10])
    blocks = int.from_bytes(c[12:14])
    lu.check_ready()
    lu.check_range(lba, blocks)
    if blocks > lu.max_atomic_blocks:
        raise invalid_cdb(12)
    lu.check_writable()
    spdtl = blocks * lu.block_size
    # Short Data-Out (EDTL < SPDTL): the whole blocks that arrived, as for WRITE.
    data = data_blocks(lu, cmd, blocks)
    if not len(data):
        return Response(data_out_length=spdtl)
    rng = await lu.guard.begin_atomic(lba, lba + len(data) // lu.block_size)
    try:
        await lu.write_locked(lba, data, bool(c[1] & 0x08))
    finally:
        lu.guard.end_atomic(rng)
    return Response(data_out_length=spdtl)
