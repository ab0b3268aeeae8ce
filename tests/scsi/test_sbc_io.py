"""READ/WRITE (6, 10, 12, 16), WRITE AND VERIFY, VERIFY, PRE-FETCH, SYNCHRONIZE CACHE:
happy paths, range and field errors, and Data-Out residual handling."""

from __future__ import annotations

import pytest

from ophiura.block.memory import MemoryBlockDevice
from ophiura.scsi.api import Status
from ophiura.scsi.logical_unit import MAX_TRANSFER_BYTES
from ophiura.scsi.target import ScsiTarget

from . import cdbs
from .conftest import BLOCKS, BS, Initiator, MakeTarget, login

ILLEGAL = 5
LBA_OOB = (ILLEGAL, 0x21, 0)
BAD_CDB = (ILLEGAL, 0x24, 0)


@pytest.mark.parametrize("size", [6, 10, 12, 16])
async def test_write_then_read(a: Initiator, size: int) -> None:
    data = bytes(range(256)) * (3 * BS // 256)
    rsp = await a.run(cdbs.write(size, 7, 3), data)
    assert rsp.status == Status.GOOD and rsp.data_out_length == 3 * BS
    assert await a.good(cdbs.read(size, 7, 3)) == data
    assert await a.good(cdbs.read(size, BLOCKS - 1, 1)) == bytes(BS)


async def test_read6_zero_length_means_256_blocks(a: Initiator) -> None:
    assert len(await a.good(cdbs.read(6, 0, 0))) == 256 * BS


@pytest.mark.parametrize("size", [10, 12, 16])
async def test_zero_length_transfers(a: Initiator, size: int) -> None:
    assert await a.good(cdbs.read(size, 0, 0)) == b""
    assert await a.good(cdbs.write(size, 0, 0)) == b""
    assert await a.sense(cdbs.read(size, BLOCKS + 1, 0)) == LBA_OOB
    assert await a.sense(cdbs.write(size, BLOCKS + 1, 0)) == LBA_OOB


@pytest.mark.parametrize("size", [6, 10, 12, 16])
async def test_beyond_end_of_medium(a: Initiator, size: int) -> None:
    assert await a.sense(cdbs.read(size, BLOCKS - 1, 2)) == LBA_OOB
    assert await a.sense(cdbs.read(size, BLOCKS, 1)) == LBA_OOB
    assert await a.sense(cdbs.write(size, BLOCKS - 1, 2), bytes(2 * BS)) == LBA_OOB
    if size != 6:
        assert await a.sense(cdbs.read(size, 0xFFFFFFFF, 1)) == LBA_OOB
    if size == 16:
        assert await a.sense(cdbs.read(16, 2**64 - 1, 2)) == LBA_OOB


@pytest.mark.parametrize("size", [10, 12, 16])
@pytest.mark.parametrize("protect", range(1, 8))
async def test_protection_fields_are_refused(a: Initiator, size: int, protect: int) -> None:
    assert await a.sense(cdbs.read(size, 0, 1, flags=protect << 5)) == BAD_CDB
    assert await a.sense(cdbs.write(size, 0, 1, flags=protect << 5), bytes(BS)) == BAD_CDB
    assert await a.sense(cdbs.verify(size, 0, 1, flags=protect << 5), bytes(BS)) == BAD_CDB


async def test_field_pointer_points_at_the_protect_field(a: Initiator) -> None:
    rsp = await a.run(cdbs.read(10, 0, 1, flags=0x20))
    assert rsp.sense[15:18] == bytes((0xC0 | 0x08 | 7, 0, 1))  # SKSV C/D BPV bit 7, byte 1


async def test_dpo_fua_accepted_and_fua_reaches_backend(target: ScsiTarget) -> None:
    calls = []
    dev = target.logical_unit(0).device
    real = dev.write

    async def spy(offset: int, data: bytes, fua: bool = False) -> None:
        calls.append(fua)
        await real(offset, data, fua)

    dev.write = spy  # type: ignore[method-assign]
    a = await login(target, "alpha")
    for flags in (0x10, 0x08, 0x18, 0x02):
        await a.good(cdbs.write(10, 0, 1, flags), bytes(BS))
        await a.good(cdbs.read(10, 0, 1, flags))
    assert calls == [False, True, True, False]


async def test_max_transfer_length_is_enforced(make_target: MakeTarget) -> None:
    a = await login(make_target(blocks=1 << 22), "alpha")
    limit = MAX_TRANSFER_BYTES // BS
    assert await a.sense(cdbs.read(16, 0, limit + 1)) == BAD_CDB
    assert await a.sense(cdbs.write(16, 0, limit + 1), bytes(BS)) == BAD_CDB


async def test_write_with_short_data_out_writes_only_whole_blocks(a: Initiator) -> None:
    await a.good(cdbs.write(10, 0, 2), b"a" * 2 * BS)
    rsp = await a.run(cdbs.write(10, 0, 2), b"b" * BS)  # EDTL one block, CDB two
    assert rsp.status == Status.GOOD and rsp.data_out_length == 2 * BS
    assert await a.good(cdbs.read(10, 0, 2)) == b"b" * BS + b"a" * BS
    rsp = await a.run(cdbs.write(10, 0, 1), b"c" * 200)  # less than a block: nothing written
    assert rsp.status == Status.GOOD
    assert (await a.good(cdbs.read(10, 0, 1)))[:1] == b"b"


async def test_write_with_long_data_out_writes_only_the_cdb_length(a: Initiator) -> None:
    await a.good(cdbs.write(10, 0, 2), b"a" * 2 * BS)
    await a.good(cdbs.write(10, 0, 1), b"b" * 2 * BS)
    assert await a.good(cdbs.read(10, 0, 2)) == b"b" * BS + b"a" * BS


@pytest.mark.parametrize("size", [10, 12, 16])
async def test_write_and_verify(a: Initiator, size: int) -> None:
    data = b"v" * 2 * BS
    assert (await a.run(cdbs.write_verify(size, 3, 2), data)).status == Status.GOOD
    assert await a.good(cdbs.read(10, 3, 2)) == data
    assert await a.sense(cdbs.write_verify(size, BLOCKS - 1, 2), data) == LBA_OOB
    assert await a.sense(cdbs.write_verify(size, 0, 1, bytchk=2), data[:BS]) == BAD_CDB


@pytest.mark.parametrize("size", [10, 12, 16])
async def test_verify_bytchk(a: Initiator, size: int) -> None:
    data = bytes(range(256)) * 4
    await a.good(cdbs.write(10, 10, 2), data)
    assert await a.good(cdbs.verify(size, 10, 2), data) == b""
    bad = bytearray(data)
    bad[700] ^= 0xFF
    rsp = await a.run(cdbs.verify(size, 10, 2), bytes(bad))
    assert rsp.status == Status.CHECK_CONDITION
    assert rsp.sense[2] == 0x0E and rsp.sense[12:14] == b"\x1d\x00"
    assert rsp.sense[0] & 0x80 and int.from_bytes(rsp.sense[3:7]) == 700  # INFORMATION
    # BYTCHK=0: medium verification only, no data compared.
    assert await a.good(cdbs.verify(size, 10, 2, bytchk=0)) == b""
    assert await a.sense(cdbs.verify(size, BLOCKS, 1, bytchk=0)) == LBA_OOB
    assert await a.sense(cdbs.verify(size, 0, 1, bytchk=2), data[:BS]) == BAD_CDB
    # BYTCHK=11b: one block compared against every block of the range.
    await a.good(cdbs.write(10, 20, 3), b"z" * 3 * BS)
    assert await a.good(cdbs.verify(size, 20, 3, bytchk=3), b"z" * BS) == b""
    assert (await a.sense(cdbs.verify(size, 20, 3, bytchk=3), b"y" * BS))[0] == 0x0E


@pytest.mark.parametrize("size", [10, 16])
async def test_prefetch_condition_met(a: Initiator, size: int) -> None:
    assert await a.status(cdbs.prefetch(size, 0, 8)) == Status.CONDITION_MET
    assert await a.status(cdbs.prefetch(size, 0, 8, immed=True)) == Status.CONDITION_MET
    assert await a.status(cdbs.prefetch(size, 0, 0)) == Status.CONDITION_MET
    assert await a.sense(cdbs.prefetch(size, BLOCKS - 1, 2)) == LBA_OOB
    assert await a.sense(cdbs.prefetch(size, BLOCKS + 1, 0)) == LBA_OOB


@pytest.mark.parametrize("size", [10, 16])
async def test_synchronize_cache_really_flushes(make_target: MakeTarget, size: int) -> None:
    dev = MemoryBlockDevice(BLOCKS * BS)
    ini = await login(make_target({0: dev}), "alpha")
    await ini.good(cdbs.sync_cache(size))
    await ini.good(cdbs.sync_cache(size, 10, 10))
    assert dev.flushes == 2
    await ini.good(cdbs.sync_cache(size, immed=True))
    for _ in range(3):
        await __import__("asyncio").sleep(0)
    assert dev.flushes == 3
    assert await ini.sense(cdbs.sync_cache(size, BLOCKS, 1)) == LBA_OOB


async def test_read_only_device_refuses_writes(make_target: MakeTarget) -> None:
    ini = await login(make_target({0: MemoryBlockDevice(BLOCKS * BS, read_only=True)}), "alpha")
    assert await ini.sense(cdbs.write(10, 0, 1), bytes(BS)) == (7, 0x27, 0)
    assert await ini.sense(cdbs.write_same(10, 0, 1), bytes(BS)) == (7, 0x27, 0)
    assert await ini.sense(cdbs.compare_and_write(0, 1), bytes(2 * BS)) == (7, 0x27, 0)
    assert await ini.good(cdbs.read(10, 0, 1)) == bytes(BS)
    header = await ini.good(cdbs.mode_sense6())
    assert header[2] & 0x80  # WP


async def test_start_stop_unit(a: Initiator, target: ScsiTarget) -> None:
    dev = target.logical_unit(0).device
    await a.good(cdbs.start_stop(start=False))
    assert dev.flushes == 1  # stopping writes the cache back
    assert await a.sense(cdbs.tur()) == (2, 0x04, 0x02)
    assert await a.sense(cdbs.read(10, 0, 1)) == (2, 0x04, 0x02)
    assert (await a.good(cdbs.request_sense()))[12:14] == b"\x04\x02"
    await a.good(cdbs.start_stop(start=True))
    assert await a.status(cdbs.tur()) == Status.GOOD
    await a.good(cdbs.start_stop(start=False, power_condition=2))  # IDLE: a no-op
    assert await a.status(cdbs.tur()) == Status.GOOD
    assert await a.sense(cdbs.start_stop(start=True, power_condition=5)) == BAD_CDB


async def test_prevent_allow_on_a_fixed_disk(a: Initiator) -> None:
    await a.good(cdbs.prevent_allow(1))
    await a.good(cdbs.prevent_allow(0))
    assert await a.sense(cdbs.prevent_allow(2)) == BAD_CDB


async def test_read_defect_data_is_an_empty_list(a: Initiator) -> None:
    data = await a.good(cdbs.read_defect_data10())
    assert data == bytes((0, 0x18, 0, 0))
    data = await a.good(cdbs.read_defect_data12())
    assert data == bytes((0, 0x18)) + bytes(6)
