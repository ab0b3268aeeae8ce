"""COMPARE AND WRITE (including atomicity against concurrent writers from other nexuses),
ORWRITE and WRITE ATOMIC(16)."""

from __future__ import annotations

import asyncio

import pytest

from ophiura.block.memory import MemoryBlockDevice
from ophiura.scsi.api import Status
from ophiura.scsi.logical_unit import MAX_TRANSFER_BYTES
from ophiura.scsi.target import ScsiTarget

from . import cdbs
from .conftest import BLOCKS, BS, Initiator, MakeTarget, login

ILLEGAL = 5


async def test_compare_and_write(a: Initiator) -> None:
    await a.good(cdbs.write(10, 3, 2), b"A" * 2 * BS)
    rsp = await a.run(cdbs.compare_and_write(3, 2), b"A" * 2 * BS + b"B" * 2 * BS)
    assert rsp.status == Status.GOOD and rsp.data_out_length == 4 * BS
    assert await a.good(cdbs.read(10, 3, 2)) == b"B" * 2 * BS


async def test_compare_and_write_miscompare(a: Initiator) -> None:
    await a.good(cdbs.write(10, 0, 2), b"A" * 2 * BS)
    verify = bytearray(b"A" * 2 * BS)
    verify[BS + 17] = ord("C")
    rsp = await a.run(cdbs.compare_and_write(0, 2), bytes(verify) + b"B" * 2 * BS)
    assert rsp.status == Status.CHECK_CONDITION
    assert rsp.sense[2] == 0x0E and rsp.sense[12:14] == b"\x1d\x00"
    assert rsp.sense[0] & 0x80 and int.from_bytes(rsp.sense[3:7]) == BS + 17
    assert await a.good(cdbs.read(10, 0, 2)) == b"A" * 2 * BS  # nothing written


async def test_compare_and_write_field_errors(a: Initiator) -> None:
    block = bytes(BS)
    assert await a.sense(cdbs.compare_and_write(BLOCKS - 1, 2), block * 4) == (ILLEGAL, 0x21, 0)
    assert await a.sense(cdbs.compare_and_write(0, 1), block * 4) == (ILLEGAL, 0x24, 0)
    assert await a.sense(cdbs.compare_and_write(0, 3), block * 4) == (ILLEGAL, 0x24, 0)
    assert await a.sense(cdbs.compare_and_write(0, 1, 0x20), block * 2) == (ILLEGAL, 0x24, 0)
    assert await a.good(cdbs.compare_and_write(0, 0)) == b""
    assert await a.good(cdbs.compare_and_write(0, 1, 0x18), block * 2) == b""  # DPO FUA


class SlowDevice(MemoryBlockDevice):
    """Reads yield to the event loop several times, inviting interleaving."""

    async def read(self, offset: int, length: int) -> bytes:
        for _ in range(3):
            await asyncio.sleep(0)
        return await super().read(offset, length)

    async def write(self, offset: int, data: bytes, fua: bool = False) -> None:
        for _ in range(3):
            await asyncio.sleep(0)
        await super().write(offset, data, fua)


async def test_compare_and_write_is_atomic_across_nexuses(make_target: MakeTarget) -> None:
    """Many initiators increment a counter block with CAW while others write next to it and
    over it; every successful CAW must have seen the value the previous one wrote."""
    target = make_target({0: SlowDevice(BLOCKS * BS)})
    inis = [await login(target, f"host{i}") for i in range(4)]
    await inis[0].good(cdbs.write(10, 0, 1), (0).to_bytes(BS))
    successes = 0

    async def incrementer(ini: Initiator) -> None:
        nonlocal successes
        for _ in range(40):
            current = await ini.good(cdbs.read(10, 0, 1))
            value = int.from_bytes(current)
            rsp = await ini.run(cdbs.compare_and_write(0, 1), current + (value + 1).to_bytes(BS))
            if rsp.status == Status.GOOD:
                successes += 1
            else:
                assert rsp.sense[2] == 0x0E

    async def neighbour(ini: Initiator) -> None:
        for i in range(60):
            await ini.good(cdbs.write(10, 1, 1), i.to_bytes(BS))

    await asyncio.gather(*(incrementer(i) for i in inis[:3]), neighbour(inis[3]))
    final = int.from_bytes(await inis[0].good(cdbs.read(10, 0, 1)))
    assert final == successes and successes >= 40


async def test_plain_write_cannot_land_inside_compare_and_write(make_target: MakeTarget) -> None:
    target = make_target({0: SlowDevice(BLOCKS * BS)})
    a, b = await login(target, "a"), await login(target, "b")
    await a.good(cdbs.write(10, 0, 1), b"A" * BS)
    caw = asyncio.ensure_future(a.run(cdbs.compare_and_write(0, 1), b"A" * BS + b"B" * BS))
    await asyncio.sleep(0)  # CAW now owns block 0 and is reading it
    write = asyncio.ensure_future(b.run(cdbs.write(10, 0, 1), b"W" * BS))
    assert (await caw).status == Status.GOOD
    assert (await write).status == Status.GOOD
    # The plain write was ordered after the CAW: it must be the final content.
    assert await a.good(cdbs.read(10, 0, 1)) == b"W" * BS


async def test_orwrite(a: Initiator) -> None:
    await a.good(cdbs.write(10, 0, 2), b"\x0f" * 2 * BS)
    rsp = await a.run(cdbs.orwrite(0, 2), b"\xa0" * 2 * BS)
    assert rsp.status == Status.GOOD and rsp.data_out_length == 2 * BS
    assert await a.good(cdbs.read(10, 0, 2)) == b"\xaf" * 2 * BS
    assert await a.good(cdbs.orwrite(0, 0)) == b""
    assert await a.sense(cdbs.orwrite(BLOCKS - 1, 2), bytes(2 * BS)) == (ILLEGAL, 0x21, 0)
    assert await a.sense(cdbs.orwrite(0, 1, 0x40), bytes(BS)) == (ILLEGAL, 0x24, 0)


@pytest.mark.parametrize("opcode_cdb", ["caw", "orwrite"])
async def test_swp_write_protects(target: ScsiTarget, opcode_cdb: str) -> None:
    a = await login(target, "alpha")
    target.logical_unit(0).modes.current[0x0A][4] |= 0x08
    target.logical_unit(0).modes._refresh()
    cdb = cdbs.compare_and_write(0, 1) if opcode_cdb == "caw" else cdbs.orwrite(0, 1)
    assert await a.sense(cdb, bytes(2 * BS)) == (7, 0x27, 0x02)


# -- WRITE ATOMIC(16) ---------------------------------------------------------------------------


async def test_write_atomic16(a: Initiator) -> None:
    rsp = await a.run(cdbs.write_atomic16(5, 3), b"W" * 3 * BS)
    assert rsp.status == Status.GOOD and rsp.data_out_length == 3 * BS
    assert await a.good(cdbs.read(10, 4, 5)) == bytes(BS) + b"W" * 3 * BS + bytes(BS)
    assert await a.good(cdbs.write_atomic16(0, 0)) == b""  # 0 blocks: nothing, GOOD
    await a.good(cdbs.write_atomic16(BLOCKS - 2, 2, 0x18), b"E" * 2 * BS)  # DPO, FUA
    assert await a.good(cdbs.read(10, BLOCKS - 2, 2)) == b"E" * 2 * BS


async def test_write_atomic16_errors(a: Initiator) -> None:
    block = b"x" * BS
    lba_oob, bad_cdb = (ILLEGAL, 0x21, 0), (ILLEGAL, 0x24, 0)
    assert await a.sense(cdbs.write_atomic16(BLOCKS - 1, 2), block * 2) == lba_oob
    assert await a.sense(cdbs.write_atomic16(BLOCKS + 1, 0)) == lba_oob
    assert await a.sense(cdbs.write_atomic16(1 << 63, 1), block) == lba_oob
    for wrprotect in range(1, 8):
        assert await a.sense(cdbs.write_atomic16(0, 1, wrprotect << 5), block) == bad_cdb
    assert await a.sense(cdbs.write_atomic16(0, 1, boundary=1), block) == bad_cdb
    assert await a.good(cdbs.read(10, 0, 1)) == bytes(BS)  # nothing written by any of them


async def test_write_atomic16_longer_than_the_maximum(make_target: MakeTarget) -> None:
    too_many = MAX_TRANSFER_BYTES // BS + 1  # MAXIMUM ATOMIC TRANSFER LENGTH + 1
    a = await login(make_target(blocks=too_many + 8), "alpha")
    assert await a.sense(cdbs.write_atomic16(0, too_many)) == (ILLEGAL, 0x24, 0)


async def test_write_atomic16_in_report_supported_opcodes(a: Initiator) -> None:
    data = await a.good(cdbs.report_opcodes(option=1, opcode=0x9C))
    assert data[1] & 0x07 == 0b011  # supported, standard
    usage = data[4 : 4 + int.from_bytes(data[2:4])]
    assert len(usage) == 16 and usage[0] == 0x9C and usage[1] & 0x18 == 0x18  # DPO, FUA


class GatedDevice(MemoryBlockDevice):
    """Writes of a chosen payload wait on a gate: keeps that write in flight."""

    def __init__(self, *args: object, **kw: object) -> None:
        super().__init__(*args, **kw)  # type: ignore[arg-type]
        self.gate = asyncio.Event()
        self.held = asyncio.Event()
        self.hold: bytes = b""
        self.order: list[bytes] = []

    async def write(self, offset: int, data: bytes, fua: bool = False) -> None:  # type: ignore[override]
        first = bytes(data[:1])
        if first == self.hold:
            self.held.set()
            await self.gate.wait()
        self.order.append(first)
        await super().write(offset, data, fua)


@pytest.mark.parametrize("atomic_first", [True, False])
async def test_write_atomic16_and_overlapping_write_do_not_interleave(
    make_target: MakeTarget, atomic_first: bool
) -> None:
    """Whichever starts first finishes before the overlapping other one touches the medium."""
    dev = GatedDevice(BLOCKS * BS, BS)
    target = make_target({0: dev})
    a, b = await login(target, "a"), await login(target, "b")
    atomic = (cdbs.write_atomic16(0, 4), b"A" * 4 * BS)
    plain = (cdbs.write(10, 2, 4), b"P" * 4 * BS)
    first, second = (atomic, plain) if atomic_first else (plain, atomic)
    dev.hold = first[1][:1]
    one = asyncio.ensure_future(a.run(*first))
    await dev.held.wait()  # the first write is inside the device, its range registered
    two = asyncio.ensure_future(b.run(*second))
    for _ in range(20):
        await asyncio.sleep(0)
    assert dev.order == []  # the overlapping second write waits
    dev.gate.set()
    assert (await one).status == Status.GOOD and (await two).status == Status.GOOD
    assert dev.order == [first[1][:1], second[1][:1]]
    expected = b"A" * 2 * BS + b"P" * 4 * BS if atomic_first else b"A" * 4 * BS + b"P" * 2 * BS
    assert await a.good(cdbs.read(10, 0, 6)) == expected


async def test_write_atomic16_does_not_wait_for_disjoint_writes(make_target: MakeTarget) -> None:
    dev = GatedDevice(BLOCKS * BS, BS)
    target = make_target({0: dev})
    a, b = await login(target, "a"), await login(target, "b")
    dev.hold = b"P"
    plain = asyncio.ensure_future(b.run(cdbs.write(10, 100, 1), b"P" * BS))
    await dev.held.wait()
    await a.good(cdbs.write_atomic16(0, 1), b"A" * BS)  # completes while the other is held
    dev.gate.set()
    assert (await plain).status == Status.GOOD
