"""SBC-3 data path: READ, WRITE, WRITE AND VERIFY, VERIFY, PRE-FETCH, SYNCHRONIZE CACHE.

The hot path. Each handler decodes its CDB with a few slices, checks what SBC-3 requires, and
makes one BlockDevice call through the LogicalUnit helpers. No logging, no extra awaits, no
copies of the data unless the CDB describes less than the initiator sent (a memoryview slice).

Data-Out shorter than the CDB describes (iSCSI EDTL < SPDTL) writes only the whole blocks that
arrived and still reports GOOD; the transport reports the residual (libiscsi WRITE*.Residuals).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ophiura.scsi.api import Command, Response, Status
from ophiura.scsi.logical_unit import LogicalUnit
from ophiura.scsi.sense import invalid_cdb, miscompare

if TYPE_CHECKING:
    from ophiura.scsi.target import ScsiTarget


def first_difference(a: bytes | bytearray | memoryview, b: bytes | bytearray | memoryview) -> int:
    """Offset of the first byte where a and b differ (they are known to differ)."""
    a, b = memoryview(a), memoryview(b)
    lo, hi = 0, min(len(a), len(b))
    while hi - lo > 64:  # bisect with C-speed slice comparisons
        mid = (lo + hi) // 2
        if a[lo:mid] != b[lo:mid]:
            hi = mid
        else:
            lo = mid
    for i in range(lo, hi):
        if a[i] != b[i]:
            return i
    return hi


# -- READ -----------------------------------------------------------------------------------


async def _read(lu: LogicalUnit, cmd: Command, lba: int, blocks: int, tl_byte: int) -> Response:
    lu.check_ready()
    lu.check_range(lba, blocks)
    if blocks > lu.max_transfer_blocks:
        raise invalid_cdb(tl_byte)
    if blocks == 0:
        return Response()
    return Response(data_in=await lu.read(lba, blocks))


async def read6(t: ScsiTarget, lu: LogicalUnit, cmd: Command) -> Response:
    c = cmd.cdb
    return await _read(lu, cmd, ((c[1] & 0x1F) << 16) | (c[2] << 8) | c[3], c[4] or 256, 4)


async def read10(t: ScsiTarget, lu: LogicalUnit, cmd: Command) -> Response:
    c = cmd.cdb
    if c[1] & 0xE0:
        raise invalid_cdb(1, 7)
    return await _read(lu, cmd, int.from_bytes(c[2:6]), (c[7] << 8) | c[8], 7)


async def read12(t: ScsiTarget, lu: LogicalUnit, cmd: Command) -> Response:
    c = cmd.cdb
    if c[1] & 0xE0:
        raise invalid_cdb(1, 7)
    return await _read(lu, cmd, int.from_bytes(c[2:6]), int.from_bytes(c[6:10]), 6)


async def read16(t: ScsiTarget, lu: LogicalUnit, cmd: Command) -> Response:
    c = cmd.cdb
    if c[1] & 0xE0:
        raise invalid_cdb(1, 7)
    return await _read(lu, cmd, int.from_bytes(c[2:10]), int.from_bytes(c[10:14]), 10)


# -- WRITE ----------------------------------------------------------------------------------


def data_blocks(lu: LogicalUnit, cmd: Command, blocks: int) -> memoryview | bytes:
    """The Data-Out the CDB describes, cut to whole blocks that actually arrived."""
    data = cmd.data_out
    want = blocks * lu.block_size
    if len(data) == want:
        return data  # type: ignore[return-value]
    have = min(len(data), want) // lu.block_size * lu.block_size
    return memoryview(data)[:have]


async def _write(
    lu: LogicalUnit, cmd: Command, lba: int, blocks: int, fua: bool, tl_byte: int
) -> Response:
    lu.check_ready()
    lu.check_range(lba, blocks)
    if blocks > lu.max_transfer_blocks:
        raise invalid_cdb(tl_byte)
    lu.check_writable()
    spdtl = blocks * lu.block_size
    data = data_blocks(lu, cmd, blocks)
    if len(data):
        await lu.write(lba, data, fua)
    return Response(data_out_length=spdtl)


async def write6(t: ScsiTarget, lu: LogicalUnit, cmd: Command) -> Response:
    c = cmd.cdb
    return await _write(lu, cmd, ((c[1] & 0x1F) << 16) | (c[2] << 8) | c[3], c[4] or 256, False, 4)


async def write10(t: ScsiTarget, lu: LogicalUnit, cmd: Command) -> Response:
    c = cmd.cdb
    if c[1] & 0xE0:
        raise invalid_cdb(1, 7)
    return await _write(lu, cmd, int.from_bytes(c[2:6]), (c[7] << 8) | c[8], bool(c[1] & 0x08), 7)


async def write12(t: ScsiTarget, lu: LogicalUnit, cmd: Command) -> Response:
    c = cmd.cdb
    if c[1] & 0xE0:
        raise invalid_cdb(1, 7)
    lba, blocks = int.from_bytes(c[2:6]), int.from_bytes(c[6:10])
    return await _write(lu, cmd, lba, blocks, bool(c[1] & 0x08), 6)


async def write16(t: ScsiTarget, lu: LogicalUnit, cmd: Command) -> Response:
    c = cmd.cdb
    if c[1] & 0xE0:
        raise invalid_cdb(1, 7)
    lba, blocks = int.from_bytes(c[2:10]), int.from_bytes(c[10:14])
    return await _write(lu, cmd, lba, blocks, bool(c[1] & 0x08), 10)


# -- WRITE AND VERIFY / VERIFY ----------------------------------------------------------------


async def _write_verify(lu: LogicalUnit, cmd: Command, lba: int, blocks: int, tl: int) -> Response:
    c = cmd.cdb
    if c[1] & 0xE0:
        raise invalid_cdb(1, 7)
    bytchk = (c[1] >> 1) & 0x03
    if bytchk > 1:
        raise invalid_cdb(1, 2)
    response = await _write(lu, cmd, lba, blocks, True, tl)
    data = data_blocks(lu, cmd, blocks)
    if bytchk and len(data):
        # Verify what the medium now holds against what we were sent.
        stored = await lu.read(lba, len(data) // lu.block_size)
        if stored != data:
            raise miscompare(first_difference(data, stored))
    return response


async def write_verify10(t: ScsiTarget, lu: LogicalUnit, cmd: Command) -> Response:
    c = cmd.cdb
    return await _write_verify(lu, cmd, int.from_bytes(c[2:6]), (c[7] << 8) | c[8], 7)


async def write_verify12(t: ScsiTarget, lu: LogicalUnit, cmd: Command) -> Response:
    c = cmd.cdb
    return await _write_verify(lu, cmd, int.from_bytes(c[2:6]), int.from_bytes(c[6:10]), 6)


async def write_verify16(t: ScsiTarget, lu: LogicalUnit, cmd: Command) -> Response:
    c = cmd.cdb
    return await _write_verify(lu, cmd, int.from_bytes(c[2:10]), int.from_bytes(c[10:14]), 10)


async def _verify(lu: LogicalUnit, cmd: Command, lba: int, blocks: int, tl: int) -> Response:
    c = cmd.cdb
    if c[1] & 0xE0:
        raise invalid_cdb(1, 7)
    bytchk = (c[1] >> 1) & 0x03
    if bytchk == 2:
        raise invalid_cdb(1, 2)
    lu.check_ready()
    lu.check_range(lba, blocks)
    if blocks > lu.max_transfer_blocks:
        raise invalid_cdb(tl)
    bs = lu.block_size
    if bytchk == 0 or blocks == 0:
        # Medium verification only: the backend reports unreadable blocks on read, and reading
        # a file-backed LU back adds I/O and proves nothing more.
        return Response()
    if bytchk == 1:
        data = data_blocks(lu, cmd, blocks)
        spdtl = blocks * bs
        expected = data
        count = len(data) // bs
    else:  # 11b: one block of Data-Out compared with every block of the range
        spdtl = bs
        if len(cmd.data_out) < bs:
            return Response(data_out_length=spdtl)
        expected = bytes(cmd.data_out[:bs]) * blocks
        count = blocks
    if count:
        stored = await lu.read(lba, count)
        if stored != expected:
            raise miscompare(first_difference(expected, stored))
    return Response(data_out_length=spdtl)


async def verify10(t: ScsiTarget, lu: LogicalUnit, cmd: Command) -> Response:
    c = cmd.cdb
    return await _verify(lu, cmd, int.from_bytes(c[2:6]), (c[7] << 8) | c[8], 7)


async def verify12(t: ScsiTarget, lu: LogicalUnit, cmd: Command) -> Response:
    c = cmd.cdb
    return await _verify(lu, cmd, int.from_bytes(c[2:6]), int.from_bytes(c[6:10]), 6)


async def verify16(t: ScsiTarget, lu: LogicalUnit, cmd: Command) -> Response:
    c = cmd.cdb
    return await _verify(lu, cmd, int.from_bytes(c[2:10]), int.from_bytes(c[10:14]), 10)


# -- PRE-FETCH / SYNCHRONIZE CACHE ----------------------------------------------------------


async def _prefetch(lu: LogicalUnit, lba: int, blocks: int) -> Response:
    lu.check_ready()
    lu.check_range(lba, blocks)
    # SBC-3 5.8: CONDITION MET when the cache has room for all the blocks. Our cache is the
    # backend's (the OS page cache), which always has room; there is nothing to load first.
    return Response(status=Status.CONDITION_MET)


async def prefetch10(t: ScsiTarget, lu: LogicalUnit, cmd: Command) -> Response:
    c = cmd.cdb
    return await _prefetch(lu, int.from_bytes(c[2:6]), (c[7] << 8) | c[8])


async def prefetch16(t: ScsiTarget, lu: LogicalUnit, cmd: Command) -> Response:
    c = cmd.cdb
    return await _prefetch(lu, int.from_bytes(c[2:10]), int.from_bytes(c[10:14]))


async def _sync_cache(lu: LogicalUnit, cmd: Command, lba: int, blocks: int) -> Response:
    lu.check_ready()
    lu.check_range(lba, blocks)
    if cmd.cdb[1] & 0x02:  # IMMED: report now, flush continues
        lu.flush_in_background()
    else:
        await lu.flush()
    return Response()


async def sync_cache10(t: ScsiTarget, lu: LogicalUnit, cmd: Command) -> Response:
    c = cmd.cdb
    return await _sync_cache(lu, cmd, int.from_bytes(c[2:6]), (c[7] << 8) | c[8])


async def sync_cache16(t: ScsiTarget, lu: LogicalUnit, cmd: Command) -> Response:
    c = cmd.cdb
    return await _sync_cache(lu, cmd, int.from_bytes(c[2:10]), int.from_bytes(c[10:14]))
