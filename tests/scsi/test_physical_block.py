"""Physical block reporting: LBPPBE in READ CAPACITY(16) and the Block Limits granularities,
from the BlockDevice's optional physical_block_size, only when the target is asked to."""

from __future__ import annotations

import pytest

from ophiura.block.device import Extent
from ophiura.block.memory import MemoryBlockDevice
from ophiura.scsi.target import ScsiTarget

from . import cdbs
from .conftest import BLOCKS, BS, TARGET, login


def _target(pbs: int | None, report: bool, thin: bool = True) -> ScsiTarget:
    dev = MemoryBlockDevice(BLOCKS * BS, BS, thin=thin, physical_block_size=pbs)
    return ScsiTarget(TARGET, {0: dev}, report_physical_block=report)


@pytest.mark.parametrize(("pbs", "lbppbe"), [(None, 0), (512, 0), (1024, 1), (4096, 3)])
async def test_read_capacity16_reports_lbppbe(pbs: int | None, lbppbe: int) -> None:
    a = await login(_target(pbs, report=True), "alpha")
    data = await a.good(cdbs.read_capacity16())
    assert data[13] == lbppbe  # exponent in bits 3-0, P_I_EXPONENT 0
    assert int.from_bytes(data[14:16]) & 0x3FFF == 0  # LOWEST ALIGNED LBA 0
    assert data[14] & 0xC0 == 0xC0  # LBPME, LBPRZ unchanged


async def test_physical_block_not_reported_by_default() -> None:
    a = await login(_target(4096, report=False), "alpha")
    assert (await a.good(cdbs.read_capacity16()))[13] == 0


@pytest.mark.parametrize("thin", [True, False])
async def test_block_limits_granularity_follows_the_physical_block(thin: bool) -> None:
    a = await login(_target(16384, report=True, thin=thin), "alpha")
    limits = await a.good(cdbs.inquiry(255, True, 0xB0))
    assert int.from_bytes(limits[6:8]) == 32  # OPTIMAL TRANSFER LENGTH GRANULARITY
    if thin:
        assert int.from_bytes(limits[28:32]) == 32  # OPTIMAL UNMAP GRANULARITY
        assert int.from_bytes(limits[32:36]) == 0x80000000  # UGAVALID, alignment 0
        assert int.from_bytes(limits[20:24]) >= 32  # MAXIMUM UNMAP LBA COUNT >= LBPPB


async def test_unaligned_unmap_inside_a_physical_block() -> None:
    """libiscsi WriteSame*.UnmapUnaligned: unmapping part of a physical block is GOOD and
    those blocks read back as zeros, the rest of the physical block keeps its data."""
    a = await login(_target(4096, report=True), "alpha")
    await a.good(cdbs.write(10, 0, 8), b"\xa6" * 8 * BS)
    for lba in range(1, 8):
        await a.good(cdbs.write_same(10, lba, 8 - lba, unmap=True), b"\xa6" * BS)
    assert await a.good(cdbs.read(10, 0, 8)) == b"\xa6" * BS + bytes(7 * BS)


class NoPhysical:
    """A backend written before physical_block_size existed (the protocol still fits)."""

    block_size = BS
    size = BLOCKS * BS
    thin = False
    read_only = False

    async def read(self, offset: int, length: int) -> bytes:
        return bytes(length)

    async def write(self, offset: int, data: bytes, fua: bool = False) -> None: ...
    async def flush(self) -> None: ...
    async def discard(self, offset: int, length: int) -> None: ...
    async def write_zeroes(self, offset: int, length: int) -> None: ...
    async def extents(self, offset: int, length: int) -> list[Extent]:
        return [Extent(offset, length, True)]

    async def close(self) -> None: ...


async def test_backend_without_physical_block_size() -> None:
    a = await login(ScsiTarget(TARGET, {0: NoPhysical()}, report_physical_block=True), "alpha")
    assert (await a.good(cdbs.read_capacity16()))[13] == 0
