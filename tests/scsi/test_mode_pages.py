"""MODE SENSE / MODE SELECT (6 and 10): pages, page control, block descriptors, validation,
D_SENSE (descriptor sense), SWP, WCE, saved values, and MODE PARAMETERS CHANGED routing."""

from __future__ import annotations

from pathlib import Path

import pytest

from ophiura.scsi.target import ScsiTarget

from . import cdbs
from .conftest import BLOCKS, BS, Initiator, MakeTarget, login

ILLEGAL = 5


def pages_of(data: bytes, header: int) -> dict[int, bytes]:
    bd_len = data[3] if header == 4 else int.from_bytes(data[6:8])
    pos, out = header + bd_len, {}
    while pos < len(data):
        out[data[pos] & 0x3F] = data[pos : pos + 2 + data[pos + 1]]
        pos += 2 + data[pos + 1]
    return out


async def control_page(ini: Initiator, pc: int = 0) -> bytearray:
    return bytearray(pages_of(await ini.good(cdbs.mode_sense6(0x0A, pc, dbd=True)), 4)[0x0A])


async def select_control(ini: Initiator, page: bytes, save: bool = False) -> None:
    params = cdbs.mode_select6_params(page)
    await ini.good(cdbs.mode_select6(len(params), save), params)


async def test_mode_sense6_all_pages(a: Initiator) -> None:
    data = await a.good(cdbs.mode_sense6())
    assert data[0] == len(data) - 1
    assert data[2] & 0x10  # DPOFUA
    assert data[2] & 0x80 == 0  # not write protected
    assert data[3] == 8
    assert int.from_bytes(data[4:8]) == BLOCKS and int.from_bytes(data[9:12]) == BS
    pages = pages_of(data, 4)
    assert set(pages) == {0x01, 0x02, 0x08, 0x0A, 0x1C}
    assert pages[0x08][2] & 0x04  # WCE
    assert pages[0x0A][1] == 0x0A and int.from_bytes(pages[0x0A][8:10]) == 0xFFFF
    assert len(await a.good(cdbs.mode_sense6(alloc=4))) == 4


async def test_mode_sense10_long_lba_descriptor(a: Initiator) -> None:
    data = await a.good(cdbs.mode_sense10(llbaa=True))
    assert int.from_bytes(data[0:2]) == len(data) - 2
    assert data[4] & 0x01 and int.from_bytes(data[6:8]) == 16
    assert int.from_bytes(data[8:16]) == BLOCKS and int.from_bytes(data[20:24]) == BS
    assert set(pages_of(data, 8)) == {0x01, 0x02, 0x08, 0x0A, 0x1C}


async def test_mode_sense_page_control(a: Initiator) -> None:
    changeable = await control_page(a, pc=1)
    assert changeable[2] == 0x04 and changeable[4] == 0x08 and changeable[5] == 0x40
    default = await control_page(a, pc=2)
    assert default == await control_page(a, pc=0) == await control_page(a, pc=3)


async def test_mode_sense_errors(a: Initiator) -> None:
    assert await a.sense(cdbs.mode_sense6(0x05)) == (ILLEGAL, 0x24, 0)
    assert await a.sense(cdbs.mode_sense6(0x0A, sub=0x05)) == (ILLEGAL, 0x24, 0)
    assert await a.good(cdbs.mode_sense6(0x3F, sub=0xFF))  # all pages and subpages


async def test_d_sense_switches_sense_format(a: Initiator, b: Initiator) -> None:
    rsp = await a.run(cdbs.read(16, 2**64 - 1, 1))
    assert rsp.sense[0] == 0x70
    page = await control_page(a)
    page[2] |= 0x04
    await select_control(a, bytes(page))
    await b.clear_ua()
    rsp = await b.run(cdbs.read(10, 0, 1, flags=0x20))
    assert rsp.sense[0] == 0x72 and rsp.sense[1] == ILLEGAL and rsp.sense[2:4] == b"\x24\x00"
    # Sense key specific descriptor: field pointer at CDB byte 1, bit 7.
    assert rsp.sense[8:12] == bytes((0x02, 0x06, 0, 0)) and rsp.sense[12:15] == b"\xcf\x00\x01"
    await a.good(cdbs.write(10, 0, 1), b"A" * BS)
    rsp = await a.run(cdbs.compare_and_write(0, 1), b"X" * BS + b"B" * BS)
    assert rsp.sense[0] == 0x72 and rsp.sense[1] == 0x0E
    info = rsp.sense[8:20]
    assert info[0:3] == bytes((0x00, 0x0A, 0x80)) and int.from_bytes(info[4:12]) == 0


async def test_swp_makes_the_lu_read_only(a: Initiator) -> None:
    page = await control_page(a)
    page[4] |= 0x08
    await select_control(a, bytes(page))
    assert (await a.good(cdbs.mode_sense6()))[2] & 0x80
    assert await a.sense(cdbs.write(10, 0, 1), bytes(BS)) == (7, 0x27, 0x02)
    assert await a.good(cdbs.read(10, 0, 1)) == bytes(BS)
    page[4] &= ~0x08
    await select_control(a, bytes(page))
    await a.good(cdbs.write(10, 0, 1), bytes(BS))


async def test_mode_select_changes_raise_ua_on_other_nexuses_only(
    target: ScsiTarget, a: Initiator, b: Initiator
) -> None:
    c = await login(target, "gamma")
    page = await control_page(a)
    await select_control(a, bytes(page))  # no change: no unit attention
    assert await b.clear_ua() == []
    page[5] |= 0x40  # TAS
    await select_control(a, bytes(page))
    assert await a.clear_ua() == []
    assert await b.clear_ua() == [(0x2A, 0x01)]
    assert await c.clear_ua() == [(0x2A, 0x01)]
    assert (await control_page(b))[5] & 0x40  # one set of pages shared by all initiators


async def test_mode_select_rejects_unchangeable_bits(a: Initiator) -> None:
    page = await control_page(a)
    page[3] ^= 0x10  # QUEUE ALGORITHM MODIFIER is not changeable
    params = cdbs.mode_select6_params(bytes(page))
    rsp = await a.run(cdbs.mode_select6(len(params)), params)
    assert rsp.sense[2] == ILLEGAL and rsp.sense[12:14] == b"\x26\x00"
    assert rsp.sense[15] == 0x80 and int.from_bytes(rsp.sense[16:18]) == 4 + 3  # param byte 7
    assert (await control_page(a))[3] == 0x10


@pytest.mark.parametrize(
    ("params", "asc"),
    [
        (bytes(4) + bytes((0x05, 0x02, 0, 0)), 0x26),  # page we do not have
        (bytes(4) + bytes((0x0A, 0x04, 0, 0, 0, 0)), 0x26),  # wrong page length
        (bytes(4) + bytes((0x4A, 0x0A)) + bytes(10), 0x26),  # SPF: no subpages here
        (bytes(4) + bytes((0x0A, 0x0A, 0, 0x10)), 0x1A),  # page cut short
        (bytes(3), 0x1A),  # shorter than the header
        (bytes((0, 0, 0, 8)) + bytes(5) + (4096).to_bytes(3), 0x26),  # wrong block length
    ],
)
async def test_mode_select_parameter_errors(a: Initiator, params: bytes, asc: int) -> None:
    assert (await a.sense(cdbs.mode_select6(len(params)), params))[:2] == (ILLEGAL, asc)


async def test_mode_select10_with_block_descriptor(a: Initiator) -> None:
    page = await control_page(a)
    page[2] |= 0x04
    desc = BLOCKS.to_bytes(4) + b"\x00" + BS.to_bytes(3)
    params = bytes(6) + (8).to_bytes(2) + desc + bytes(page)
    await a.good(cdbs.mode_select10(len(params)), params)
    assert (await control_page(a))[2] & 0x04


async def test_wce_off_makes_every_write_fua(target: ScsiTarget, a: Initiator) -> None:
    seen = []
    dev = target.logical_unit(0).device
    real = dev.write

    async def spy(offset: int, data: bytes, fua: bool = False) -> None:
        seen.append(fua)
        await real(offset, data, fua)

    dev.write = spy  # type: ignore[method-assign]
    caching = bytearray(pages_of(await a.good(cdbs.mode_sense6(0x08, dbd=True)), 4)[0x08])
    caching[2] &= ~0x04
    params = cdbs.mode_select6_params(bytes(caching))
    await a.good(cdbs.mode_select6(len(params)), params)
    await a.good(cdbs.write(10, 0, 1), bytes(BS))
    assert seen == [True]


async def test_saved_pages_survive_lu_reset_and_restart(
    make_target: MakeTarget, tmp_path: Path
) -> None:
    from ophiura.scsi.api import TmfFunction

    target = make_target(state_dir=tmp_path / "s")
    a = await login(target, "alpha")
    page = await control_page(a)
    page[5] |= 0x40
    await select_control(a, bytes(page), save=True)  # TAS on, saved
    page[2] |= 0x04
    await select_control(a, bytes(page))  # D_SENSE on, current only
    await target.task_management(a.nexus, TmfFunction.LOGICAL_UNIT_RESET, 0, None)
    await a.clear_ua()
    after = await control_page(a)
    assert after[5] & 0x40 and not after[2] & 0x04  # back to the saved values
    again = await login(make_target(state_dir=tmp_path / "s"), "alpha")
    assert (await control_page(again))[5] & 0x40
