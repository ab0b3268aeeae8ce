"""INQUIRY data: the standard page and the vital product data pages (SPC-4 6.6, 7.8; SBC-3 6.6).

Identity pages (80h, 83h) are derived from the target name and LUN, so a host sees one device
through every path and across restarts. The block limits page states the limits the SBC handlers
enforce (logical_unit.py), so what we advertise and what we do cannot drift apart.
"""

from __future__ import annotations

from dataclasses import dataclass

from ophiura.scsi.api import Nexus
from ophiura.scsi.constants import (
    PROTOCOL_ISCSI,
    VERSION_ISCSI,
    VERSION_SAM5,
    VERSION_SBC3,
    VERSION_SPC4,
)
from ophiura.scsi.identity import designator, scsi_name_string
from ophiura.scsi.logical_unit import (
    MAX_COMPARE_AND_WRITE_BLOCKS,
    MAX_UNMAP_BLOCKS,
    MAX_UNMAP_DESCRIPTORS,
    MAX_WRITE_SAME_BLOCKS,
    LogicalUnit,
)
from ophiura.scsi.sense import invalid_cdb

SUPPORTED_VPD = (0x00, 0x80, 0x83, 0xB0, 0xB1)
SUPPORTED_VPD_THIN = (*SUPPORTED_VPD, 0xB2)


@dataclass(frozen=True)
class TargetInfo:
    name: str
    vendor: str
    product: str
    revision: str


def _ascii(text: str, width: int) -> bytes:
    raw = text.encode("ascii", "replace")[:width]
    return raw.ljust(width, b" ")


def standard(info: TargetInfo, peripheral: int = 0x00) -> bytes:
    """Standard INQUIRY data, 96 bytes. `peripheral` is 7Fh for a LUN that does not exist."""
    data = bytearray(96)
    data[0] = peripheral
    data[2] = 0x06  # SPC-4
    data[3] = 0x10 | 0x02  # HISUP, RESPONSE DATA FORMAT 2
    data[4] = len(data) - 5
    data[7] = 0x02  # CMDQUE: tagged command queuing (HA profile 4.6)
    data[8:16] = _ascii(info.vendor, 8)
    data[16:32] = _ascii(info.product, 16)
    data[32:36] = _ascii(info.revision, 4)
    for i, version in enumerate((VERSION_SAM5, VERSION_ISCSI, VERSION_SPC4, VERSION_SBC3)):
        data[58 + 2 * i : 60 + 2 * i] = version.to_bytes(2)
    return bytes(data)


def _page(code: int, body: bytes) -> bytes:
    return bytes((0x00, code)) + len(body).to_bytes(2) + body


def supported_pages(lu: LogicalUnit) -> bytes:
    return _page(0x00, bytes(SUPPORTED_VPD_THIN if lu.thin else SUPPORTED_VPD))


def unit_serial_page(lu: LogicalUnit) -> bytes:
    return _page(0x80, lu.serial.encode("ascii"))


def device_identification(lu: LogicalUnit, info: TargetInfo, nexus: Nexus) -> bytes:
    vendor_id = _ascii(info.vendor, 8) + lu.serial.encode("ascii")
    rtpi = nexus.relative_target_port_id.to_bytes(4)
    body = b"".join(
        (
            designator(3, lu.naa),  # NAA, logical unit
            designator(1, vendor_id, code_set=2),  # T10 vendor ID, logical unit
            designator(
                8, scsi_name_string(nexus.target_port), 1, code_set=3, protocol=PROTOCOL_ISCSI
            ),  # SCSI name string, target port
            designator(4, rtpi, 1, protocol=PROTOCOL_ISCSI),  # relative target port
            designator(5, (1).to_bytes(4), 1),  # target port group 1: every port is equal
            designator(
                8, scsi_name_string(info.name), 2, code_set=3, protocol=PROTOCOL_ISCSI
            ),  # SCSI name string, target device
        )
    )
    return _page(0x83, body)


def block_limits(lu: LogicalUnit) -> bytes:
    body = bytearray(0x3C)
    # WSNZ=0: WRITE SAME with NUMBER OF LOGICAL BLOCKS 0 means "to the last LBA" (provisioning).
    body[1] = MAX_COMPARE_AND_WRITE_BLOCKS
    body[2:4] = lu.granularity_blocks.to_bytes(2)
    body[4:8] = lu.max_transfer_blocks.to_bytes(4)
    body[8:12] = lu.optimal_transfer_blocks.to_bytes(4)
    if lu.thin:
        body[16:20] = MAX_UNMAP_BLOCKS.to_bytes(4)
        body[20:24] = MAX_UNMAP_DESCRIPTORS.to_bytes(4)
        body[24:28] = lu.granularity_blocks.to_bytes(4)
        body[28:32] = (0x80000000).to_bytes(4)  # UGAVALID, alignment 0
    body[32:40] = MAX_WRITE_SAME_BLOCKS.to_bytes(8)
    # WRITE ATOMIC(16): MAXIMUM ATOMIC TRANSFER LENGTH; ATOMIC ALIGNMENT and ATOMIC TRANSFER
    # LENGTH GRANULARITY 0 (none); no atomic boundaries (both boundary fields 0).
    body[40:44] = lu.max_atomic_blocks.to_bytes(4)
    return _page(0xB0, bytes(body))


def block_device_characteristics() -> bytes:
    body = bytearray(0x3C)
    body[1] = 0x01  # MEDIUM ROTATION RATE 1: non-rotating medium
    return _page(0xB1, bytes(body))


def logical_block_provisioning() -> bytes:
    # LBPU, LBPWS, LBPWS10; LBPRZ=001b (unmapped blocks read as zeros); ANC_SUP=0;
    # PROVISIONING TYPE 010b: thin.
    return _page(0xB2, bytes((0x00, 0x80 | 0x40 | 0x20 | 0x04, 0x02, 0x00)))


def vpd(lu: LogicalUnit, info: TargetInfo, nexus: Nexus, page: int) -> bytes:
    if page == 0x00:
        return supported_pages(lu)
    if page == 0x80:
        return unit_serial_page(lu)
    if page == 0x83:
        return device_identification(lu, info, nexus)
    if page == 0xB0:
        return block_limits(lu)
    if page == 0xB1:
        return block_device_characteristics()
    if page == 0xB2 and lu.thin:
        return logical_block_provisioning()
    raise invalid_cdb(2)


def inquiry(lu: LogicalUnit | None, info: TargetInfo, nexus: Nexus, cdb: bytes) -> bytes:
    """The INQUIRY response for a CDB, cut to its allocation length."""
    if cdb[1] & 0x02:  # CMDDT: obsolete
        raise invalid_cdb(1, 1)
    alloc = int.from_bytes(cdb[3:5])
    if cdb[1] & 0x01:
        if lu is None:
            raise invalid_cdb(1, 0)
        data = vpd(lu, info, nexus, cdb[2])
    else:
        if cdb[2]:
            raise invalid_cdb(2)
        # Peripheral qualifier 011b, type 1Fh: no logical unit here (SPC-4 6.6.2).
        data = standard(info, 0x00 if lu is not None else 0x7F)
    return data[:alloc]
