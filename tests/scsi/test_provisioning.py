"""WRITE SAME (10, 16) with UNMAP / ANCHOR / NDOB, UNMAP parameter lists, GET LBA STATUS."""

from __future__ import annotations

import pytest

from ophiura.block.memory import MemoryBlockDevice
from ophiura.scsi.api import Status
from ophiura.scsi.logical_unit import MAX_WRITE_SAME_BLOCKS, WRITE_SAME_CHUNK_BYTES
from ophiura.scsi.target import ScsiTarget

from . import cdbs
from .conftest import BLOCKS, BS, Initiator, MakeTarget, login

ILLEGAL = 5
LBA_OOB = (ILLEGAL, 0x21, 0)
BAD_CDB = (ILLEGAL, 0x24, 0)
BAD_PARAM = (ILLEGAL, 0x26, 0)


@pytest.fixture
async def t(thin_target: ScsiTarget) -> Initiator:
    return await login(thin_target, "alpha")


def lba_status(data: bytes) -> list[tuple[int, int, int]]:
    n = (int.from_bytes(data[0:4]) - 4) // 16
    return [
        (
            int.from_bytes(data[8 + 16 * i : 16 + 16 * i]),
            int.from_bytes(data[16 + 16 * i : 20 + 16 * i]),
            data[20 + 16 * i],
        )
        for i in range(n)
    ]


@pytest.mark.parametrize("size", [10, 16])
async def test_write_same_pattern(a: Initiator, size: int) -> None:
    block = bytes(range(256)) * 2
    rsp = await a.run(cdbs.write_same(size, 5, 300), block)
    assert rsp.status == Status.GOOD and rsp.data_out_length == BS
    assert await a.good(cdbs.read(16, 5, 300)) == block * 300
    assert await a.good(cdbs.read(10, 305, 1)) == bytes(BS)


@pytest.mark.parametrize("size", [10, 16])
async def test_write_same_errors(a: Initiator, size: int) -> None:
    one = b"x" * BS
    assert await a.sense(cdbs.write_same(size, BLOCKS - 1, 2), one) == LBA_OOB
    assert await a.sense(cdbs.write_same(size, 0, 1), one * 2) == BAD_CDB
    assert await a.sense(cdbs.write_same(size, 0, 1), one[:100]) == BAD_CDB
    assert await a.sense(cdbs.write_same(size, 0, 1, anchor=True), one) == BAD_CDB
    # Thick LU: the UNMAP bit is refused (LBPME=0).
    assert await a.sense(cdbs.write_same(size, 0, 1, unmap=True), bytes(BS)) == BAD_CDB


@pytest.mark.parametrize("size", [10, 16])
async def test_write_same_unmap_deallocates(t: Initiator, size: int) -> None:
    await t.good(cdbs.write(10, 0, 16), b"\xff" * 16 * BS)
    await t.good(cdbs.write_same(size, 0, 8, unmap=True), bytes(BS))
    assert await t.good(cdbs.read(10, 0, 16)) == bytes(8 * BS) + b"\xff" * 8 * BS
    assert lba_status(await t.good(cdbs.get_lba_status(0, 64)))[:2] == [(0, 8, 1), (8, 8, 0)]


@pytest.mark.parametrize("size", [10, 16])
async def test_write_same_unmap_deallocates_whatever_the_data(t: Initiator, size: int) -> None:
    """SBC-3: the UNMAP bit asks for deallocation; with LBPRZ=1 the blocks then read as zeros
    (libiscsi's WriteSame10.UnmapUntilEnd sends 0xFF data with UNMAP=1 and expects zeros)."""
    await t.good(cdbs.write(10, 0, 8), b"\xff" * 8 * BS)
    await t.good(cdbs.write_same(size, 0, 4, unmap=True), b"q" * BS)
    assert await t.good(cdbs.read(10, 0, 8)) == bytes(4 * BS) + b"\xff" * 4 * BS
    assert lba_status(await t.good(cdbs.get_lba_status(0, 64)))[0] == (0, 4, 1)


async def test_write_same16_ndob_zeroes(t: Initiator) -> None:
    await t.good(cdbs.write(10, 0, 4), b"\x01" * 4 * BS)
    rsp = await t.run(cdbs.write_same(16, 0, 4, unmap=True, ndob=True))
    assert rsp.status == Status.GOOD and rsp.data_out_length == 0
    assert await t.good(cdbs.read(10, 0, 4)) == bytes(4 * BS)


async def test_unmap(t: Initiator) -> None:
    await t.good(cdbs.write(10, 0, 32), b"a" * 32 * BS)
    params = cdbs.unmap_params([(0, 4), (10, 2), (20, 0)])
    rsp = await t.run(cdbs.unmap(len(params)), params)
    assert rsp.status == Status.GOOD
    data = await t.good(cdbs.read(10, 0, 12))
    assert data == bytes(4 * BS) + b"a" * 6 * BS + bytes(2 * BS)
    status = lba_status(await t.good(cdbs.get_lba_status(0, 8 + 16 * 10)))
    assert status[:4] == [(0, 4, 1), (4, 6, 0), (10, 2, 1), (12, 20, 0)]


async def test_unmap_parameter_validation(t: Initiator) -> None:
    assert await t.good(cdbs.unmap(0)) == b""  # nothing to do
    assert await t.sense(cdbs.unmap(4), bytes(4)) == (ILLEGAL, 0x1A, 0)
    params = cdbs.unmap_params([(0, 1)])
    assert await t.sense(cdbs.unmap(len(params), anchor=True), params) == BAD_CDB
    bad = bytearray(params)
    bad[3] = 15  # block descriptor length not a multiple of 16
    assert await t.sense(cdbs.unmap(len(bad)), bytes(bad)) == BAD_PARAM
    oob = cdbs.unmap_params([(BLOCKS - 1, 2)])
    assert await t.sense(cdbs.unmap(len(oob)), oob) == LBA_OOB
    too_many = cdbs.unmap_params([(i, 1) for i in range(257)])
    assert await t.sense(cdbs.unmap(len(too_many)), too_many) == BAD_PARAM
    huge = cdbs.unmap_params([(0, (1 << 20) + 1)])
    assert await t.sense(cdbs.unmap(len(huge)), huge) == BAD_PARAM


async def test_unmap_validates_everything_before_changing_anything(t: Initiator) -> None:
    await t.good(cdbs.write(10, 0, 1), b"k" * BS)
    params = cdbs.unmap_params([(0, 1), (BLOCKS, 1)])
    assert await t.sense(cdbs.unmap(len(params)), params) == LBA_OOB
    assert await t.good(cdbs.read(10, 0, 1)) == b"k" * BS


async def test_get_lba_status(t: Initiator, a: Initiator) -> None:
    assert lba_status(await t.good(cdbs.get_lba_status(5))) == [(5, BLOCKS - 5, 1)]
    await t.good(cdbs.write(10, 9, 1), bytes(BS))
    assert lba_status(await t.good(cdbs.get_lba_status(5, 24))) == [(5, 4, 1)]
    assert lba_status(await t.good(cdbs.get_lba_status(9, 24))) == [(9, 1, 0)]
    assert await t.sense(cdbs.get_lba_status(BLOCKS)) == LBA_OOB
    assert await t.sense(cdbs.get_lba_status(2**64 - 1)) == LBA_OOB
    # Thick LU: everything is mapped.
    assert lba_status(await a.good(cdbs.get_lba_status(0)))[0] == (0, BLOCKS, 0)


# -- WRITE SAME with NUMBER OF LOGICAL BLOCKS 0: to the last LBA (WSNZ=0) ---------------------


class RecordingDevice(MemoryBlockDevice):
    """Records the backend calls a command makes, to check how big ranges are done."""

    def __init__(self, *args: object, keep: bool = True, **kw: object) -> None:
        super().__init__(*args, **kw)  # type: ignore[arg-type]
        self.calls: list[tuple[str, int, int]] = []
        self.keep = keep  # False: writes are only recorded (a 32 MiB pattern costs nothing)

    async def write(self, offset: int, data: bytes, fua: bool = False) -> None:  # type: ignore[override]
        self.calls.append(("write", offset, len(data)))
        if self.keep:
            await super().write(offset, data, fua)

    async def discard(self, offset: int, length: int) -> None:
        self.calls.append(("discard", offset, length))
        await super().discard(offset, length)

    async def write_zeroes(self, offset: int, length: int) -> None:
        self.calls.append(("write_zeroes", offset, length))
        await super().write_zeroes(offset, length)


@pytest.mark.parametrize("size", [10, 16])
async def test_write_same_zero_blocks_runs_to_the_last_lba(a: Initiator, size: int) -> None:
    block = b"z" * BS
    rsp = await a.run(cdbs.write_same(size, BLOCKS - 7, 0), block)
    assert rsp.status == Status.GOOD and rsp.data_out_length == BS
    assert await a.good(cdbs.read(10, BLOCKS - 8, 8)) == bytes(BS) + block * 7
    await a.good(cdbs.write_same(size, 0, 0), bytes(BS))  # the whole (small) LU, zeros
    assert await a.good(cdbs.read(10, BLOCKS - 8, 8)) == bytes(8 * BS)


@pytest.mark.parametrize("size", [10, 16])
async def test_write_same_zero_blocks_beyond_the_end(a: Initiator, size: int) -> None:
    one = b"x" * BS
    for lba in (BLOCKS, BLOCKS + 1, 0x80000000 if size == 10 else 1 << 63):
        assert await a.sense(cdbs.write_same(size, lba, 0), one) == LBA_OOB


@pytest.mark.parametrize("size", [10, 16])
async def test_write_same_zero_blocks_obeys_maximum_write_same_length(
    make_target: MakeTarget, size: int
) -> None:
    """The implied count is checked against MAXIMUM WRITE SAME LENGTH (libiscsi ZeroBlocks)."""
    blocks = MAX_WRITE_SAME_BLOCKS + 100
    a = await login(make_target(blocks=blocks), "alpha")
    one = b"x" * BS
    assert await a.sense(cdbs.write_same(size, 0, 0), one) == BAD_CDB
    last_ok = blocks - MAX_WRITE_SAME_BLOCKS
    assert await a.sense(cdbs.write_same(size, last_ok - 1, 0), one) == BAD_CDB
    await a.good(cdbs.write_same(size, last_ok, 0), one)
    await a.good(cdbs.write_same(size, last_ok + 1, 0), one)
    assert await a.good(cdbs.read(16, blocks - 1, 1)) == one
    assert await a.good(cdbs.read(16, last_ok - 1, 1)) == bytes(BS)


async def test_write_same_zero_blocks_unmap_is_one_discard(make_target: MakeTarget) -> None:
    blocks = MAX_WRITE_SAME_BLOCKS + 100
    dev = RecordingDevice(blocks * BS, BS, thin=True)
    t = await login(make_target({0: dev}), "alpha")
    start = blocks - MAX_WRITE_SAME_BLOCKS
    await t.good(cdbs.write_same(16, start, 0, unmap=True), b"\xff" * BS)
    assert dev.calls == [("discard", start * BS, MAX_WRITE_SAME_BLOCKS * BS)]


async def test_write_same_zero_blocks_pattern_is_chunked(make_target: MakeTarget) -> None:
    blocks = MAX_WRITE_SAME_BLOCKS + 100
    dev = RecordingDevice(blocks * BS, BS, keep=False)
    a = await login(make_target({0: dev}), "alpha")
    start = blocks - MAX_WRITE_SAME_BLOCKS
    await a.good(cdbs.write_same(10, start, 0), b"p" * BS)
    assert all(kind == "write" and n <= WRITE_SAME_CHUNK_BYTES for kind, _, n in dev.calls)
    assert sum(n for _, _, n in dev.calls) == MAX_WRITE_SAME_BLOCKS * BS
    assert dev.calls[0][1] == start * BS and len(dev.calls) > 1
