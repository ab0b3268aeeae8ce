"""TEST UNIT READY, INQUIRY and VPD pages, REPORT LUNS, READ CAPACITY, REQUEST SENSE, sense
formats, unsupported opcodes and LUNs that do not exist."""

from __future__ import annotations

import pytest

from ophiura.block.memory import MemoryBlockDevice
from ophiura.scsi.api import Status
from ophiura.scsi.constants import Op
from ophiura.scsi.identity import naa_designator, unit_serial
from ophiura.scsi.logical_unit import MAX_TRANSFER_BYTES
from ophiura.scsi.target import ScsiTarget

from . import cdbs
from .conftest import BLOCKS, BS, TARGET, Initiator, MakeTarget, login, nexus

ILLEGAL = 5


async def test_tur_after_login_reports_power_on_once(target: ScsiTarget) -> None:
    ini = Initiator(target, nexus("fresh"))
    target.nexus_added(ini.nexus)
    assert await ini.sense(cdbs.tur()) == (6, 0x29, 0x00)
    assert await ini.status(cdbs.tur()) == Status.GOOD


async def test_inquiry_standard(a: Initiator) -> None:
    data = await a.good(cdbs.inquiry(96))
    assert len(data) == 96
    assert data[0] == 0x00  # connected direct-access block device
    assert data[1] & 0x80 == 0  # not removable
    assert data[2] == 6  # SPC-4
    assert data[3] & 0x0F == 2
    assert data[4] == 91
    assert data[7] & 0x02  # CmdQue
    assert data[8:16] == b"OPHIURA "
    assert data[16:32] == b"ophiura disk    "
    descriptors = {int.from_bytes(data[58 + 2 * i : 60 + 2 * i]) for i in range(8)}
    assert {0x0460, 0x04C0, 0x00A0, 0x0960} <= descriptors


@pytest.mark.parametrize("alloc", [0, 5, 36, 255, 511, 512])
async def test_inquiry_allocation_length(a: Initiator, alloc: int) -> None:
    data = await a.good(cdbs.inquiry(alloc))
    assert len(data) == min(alloc, 96)


async def test_inquiry_field_errors(a: Initiator) -> None:
    # EVPD=0 with a page code: INVALID FIELD IN CDB, field pointer at byte 2.
    rsp = await a.run(cdbs.inquiry(255, evpd=False, page=0x80))
    assert rsp.status == Status.CHECK_CONDITION
    assert rsp.sense[2] == ILLEGAL and rsp.sense[12:14] == b"\x24\x00"
    assert rsp.sense[15] == 0xC0 and rsp.sense[16:18] == b"\x00\x02"  # SKSV, C/D, byte 2
    assert await a.sense(cdbs.inquiry(255, evpd=True, page=0x99)) == (ILLEGAL, 0x24, 0)
    assert await a.sense(cdbs.inquiry(255, byte1=0x02)) == (ILLEGAL, 0x24, 0)  # CMDDT


async def test_vpd_pages_thick(a: Initiator) -> None:
    pages = await a.good(cdbs.inquiry(255, evpd=True, page=0))
    assert list(pages[4 : 4 + pages[3]]) == [0x00, 0x80, 0x83, 0xB0, 0xB1]
    for page in pages[4:]:
        data = await a.good(cdbs.inquiry(255, evpd=True, page=page))
        assert data[1] == page
        assert int.from_bytes(data[2:4]) == len(data) - 4
    assert await a.sense(cdbs.inquiry(255, evpd=True, page=0xB2)) == (ILLEGAL, 0x24, 0)


async def test_vpd_pages_thin(thin_target: ScsiTarget) -> None:
    a = await login(thin_target, "alpha")
    pages = await a.good(cdbs.inquiry(255, evpd=True, page=0))
    assert 0xB2 in pages[4:]
    lbp = await a.good(cdbs.inquiry(255, evpd=True, page=0xB2))
    assert lbp[5] & 0xE0 == 0xE0  # LBPU, LBPWS, LBPWS10
    assert lbp[5] & 0x1C == 0x04  # LBPRZ 001b
    assert lbp[6] & 0x07 == 2  # thin provisioned
    limits = await a.good(cdbs.inquiry(255, evpd=True, page=0xB0))
    assert int.from_bytes(limits[20:24]) > 0  # MAXIMUM UNMAP LBA COUNT
    assert int.from_bytes(limits[24:28]) > 0  # MAXIMUM UNMAP BLOCK DESCRIPTOR COUNT


async def test_unit_serial_and_naa_are_stable(make_target: MakeTarget) -> None:
    t1, t2 = make_target(), make_target()
    a1, a2 = await login(t1, "alpha"), await login(t2, "alpha")
    assert await a1.good(cdbs.inquiry(255, True, 0x80)) == await a2.good(
        cdbs.inquiry(255, True, 0x80)
    )
    serial = (await a1.good(cdbs.inquiry(255, True, 0x80)))[4:].decode()
    assert serial == unit_serial(TARGET, 0)
    assert unit_serial(TARGET, 0) != unit_serial(TARGET, 1)
    assert unit_serial(TARGET, 0) != unit_serial(TARGET + "x", 0)


async def test_device_identification(target: ScsiTarget) -> None:
    ini = await login(target, "alpha", port=3)
    data = await ini.good(cdbs.inquiry(255, True, 0x83))
    found = {}
    pos = 4
    while pos < len(data):
        code, kind, length = data[pos], data[pos + 1], data[pos + 3]
        found[(kind & 0x0F, (kind >> 4) & 3)] = (code, data[pos + 4 : pos + 4 + length])
        pos += 4 + length
    naa = found[(3, 0)][1]
    assert naa == naa_designator(TARGET, 0) and naa[0] >> 4 == 6 and len(naa) == 16
    assert found[(1, 0)][1].startswith(b"OPHIURA ")
    assert found[(4, 1)][1] == (3).to_bytes(4)  # relative target port of this nexus
    assert found[(5, 1)][1] == (1).to_bytes(4)
    assert found[(8, 1)][1].rstrip(b"\x00").decode() == ini.nexus.target_port
    assert found[(8, 2)][1].rstrip(b"\x00").decode() == TARGET


async def test_block_limits_and_characteristics(a: Initiator) -> None:
    limits = await a.good(cdbs.inquiry(255, True, 0xB0))
    assert len(limits) == 64
    assert limits[4] & 1 == 0  # WSNZ=0: WRITE SAME of 0 blocks runs to the last LBA
    assert limits[5] == 255  # MAXIMUM COMPARE AND WRITE LENGTH
    assert int.from_bytes(limits[8:12]) == MAX_TRANSFER_BYTES // BS
    assert int.from_bytes(limits[20:24]) == 0  # thick: no UNMAP
    assert int.from_bytes(limits[36:44]) > 0
    # WRITE ATOMIC(16): MAXIMUM ATOMIC TRANSFER LENGTH <= MAXIMUM TRANSFER LENGTH, no alignment,
    # granularity or boundary restrictions.
    assert 256 <= int.from_bytes(limits[44:48]) <= int.from_bytes(limits[8:12])
    assert limits[48:64] == bytes(16)
    bdc = await a.good(cdbs.inquiry(255, True, 0xB1))
    assert int.from_bytes(bdc[4:6]) == 1  # non-rotating


async def test_report_luns(make_target: MakeTarget) -> None:
    t = make_target({0: MemoryBlockDevice(1 << 20), 5: MemoryBlockDevice(1 << 20)})
    ini = await login(t, "alpha")
    data = await ini.good(cdbs.report_luns())
    assert int.from_bytes(data[0:4]) == 16
    assert data[8:16] == bytes(8) and data[16:24] == bytes((0, 5)) + bytes(6)
    assert await ini.sense(cdbs.report_luns(alloc=8)) == (ILLEGAL, 0x24, 0)
    assert await ini.sense(cdbs.report_luns(select=7)) == (ILLEGAL, 0x24, 0)
    # REPORT LUNS also works through a LUN that does not exist.
    assert (await ini.run(cdbs.report_luns(), lun=9)).status == Status.GOOD


async def test_nonexistent_lun(a: Initiator) -> None:
    rsp = await a.run(cdbs.inquiry(96), lun=7)
    assert rsp.status == Status.GOOD and rsp.data_in[0] == 0x7F  # qualifier 011b, type 1Fh
    rsp = await a.run(cdbs.read(10, 0, 1), lun=7)
    assert rsp.status == Status.CHECK_CONDITION and rsp.sense[12:14] == b"\x25\x00"
    rsp = await a.run(cdbs.request_sense(), lun=7)
    assert rsp.status == Status.GOOD and rsp.data_in[12] == 0x25


async def test_read_capacity(a: Initiator, thin_target: ScsiTarget) -> None:
    data = await a.good(cdbs.read_capacity10())
    assert int.from_bytes(data[0:4]) == BLOCKS - 1 and int.from_bytes(data[4:8]) == BS
    data = await a.good(cdbs.read_capacity16())
    assert int.from_bytes(data[0:8]) == BLOCKS - 1 and int.from_bytes(data[8:12]) == BS
    assert data[14] & 0xC0 == 0  # thick: no LBPME / LBPRZ
    assert await a.good(cdbs.read_capacity16(alloc=0)) == b""
    assert len(await a.good(cdbs.read_capacity16(alloc=12))) == 12
    t = await login(thin_target, "alpha")
    assert (await t.good(cdbs.read_capacity16()))[14] & 0xC0 == 0xC0


async def test_read_capacity10_caps_huge_devices(make_target: MakeTarget) -> None:
    t = make_target({0: MemoryBlockDevice(1 << 42)})  # 2^33 blocks
    ini = await login(t, "alpha")
    assert (await ini.good(cdbs.read_capacity10()))[0:4] == b"\xff\xff\xff\xff"
    assert int.from_bytes((await ini.good(cdbs.read_capacity16()))[0:8]) == (1 << 33) - 1


async def test_request_sense_reports_and_clears_unit_attention(target: ScsiTarget) -> None:
    ini = Initiator(target, nexus("x"))
    target.nexus_added(ini.nexus)
    data = await ini.good(cdbs.request_sense())
    assert data[0] == 0x70 and data[2] == 6 and data[12] == 0x29
    data = await ini.good(cdbs.request_sense(desc=True))
    assert data[0] == 0x72 and data[1] == 0 and data[2:4] == b"\x00\x00"
    assert await ini.status(cdbs.tur()) == Status.GOOD


async def test_inquiry_and_report_luns_do_not_consume_unit_attention(target: ScsiTarget) -> None:
    ini = Initiator(target, nexus("x"))
    target.nexus_added(ini.nexus)
    await ini.good(cdbs.inquiry())
    await ini.good(cdbs.report_luns())
    assert await ini.sense(cdbs.tur()) == (6, 0x29, 0)


@pytest.mark.parametrize(
    "opcode",
    [Op.SANITIZE, Op.EXTENDED_COPY, Op.RECEIVE_COPY_RESULTS, 0x04, 0xFF],
)
async def test_unsupported_opcodes(a: Initiator, opcode: int) -> None:
    assert await a.sense(bytes((opcode,)) + bytes(15)) == (ILLEGAL, 0x20, 0)


async def test_unsupported_service_actions(a: Initiator) -> None:
    assert await a.sense(bytes((Op.SERVICE_ACTION_IN_16, 0x1F)) + bytes(14)) == (ILLEGAL, 0x20, 0)
    assert await a.sense(bytes((Op.MAINTENANCE_IN, 0x0A)) + bytes(10)) == (ILLEGAL, 0x20, 0)
    assert await a.sense(cdbs.pr_in(4)) == (ILLEGAL, 0x24, 0)


async def test_unmap_is_unsupported_on_thick_lu(a: Initiator) -> None:
    assert await a.sense(cdbs.unmap(24), cdbs.unmap_params([(0, 1)])) == (ILLEGAL, 0x20, 0)


async def test_naca_is_refused(a: Initiator) -> None:
    assert await a.sense(bytes((0, 0, 0, 0, 0, 0x04))) == (ILLEGAL, 0x24, 0)


async def test_overlapped_tag_is_aborted_command(target: ScsiTarget) -> None:
    ini = await login(target, "alpha")
    lu = target.logical_unit(0)
    lu.tasks.running[(ini.nexus, 42)] = object()  # type: ignore[assignment]
    rsp = await target.execute(ini.command(cdbs.tur(), tag=42))
    assert rsp.sense[2] == 0x0B and rsp.sense[12] == 0x4E
