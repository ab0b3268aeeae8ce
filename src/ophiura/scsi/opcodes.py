"""The commands we implement: CDB sizes, CDB usage data, and each one's access class.

This table is what REPORT SUPPORTED OPERATION CODES reports and what the reservation checks use,
so the two can never disagree. CDB usage data (SPC-4 6.35.3) has a bit set for every CDB bit the
device server looks at; DPO and FUA are among them because MODE SENSE reports DPOFUA=1.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from ophiura.scsi.conflicts import Access
from ophiura.scsi.constants import MaintenanceIn, Op, ServiceActionIn

CTL = 0x04  # control byte: we evaluate NACA (and reject it)
RW1 = 0xFA  # RDPROTECT/WRPROTECT, DPO, FUA, FUA_NV
VRFY1 = 0xF6  # VRPROTECT, DPO, BYTCHK
WAV1 = 0xF2  # WRPROTECT, DPO, BYTCHK
LBA4 = (0xFF,) * 4
LBA8 = (0xFF,) * 8


@dataclass(frozen=True)
class CommandInfo:
    opcode: int
    service_action: int | None
    usage: bytes  # CDB usage data; its length is the CDB length
    thin_only: bool = False
    timeout: int = 30  # recommended command timeout, seconds (RCTD)

    @property
    def cdb_length(self) -> int:
        return len(self.usage)


def _c(op: int, *usage: int, sa: int | None = None, thin: bool = False) -> CommandInfo:
    return CommandInfo(op, sa, bytes((op, *usage)), thin_only=thin)


COMMANDS: tuple[CommandInfo, ...] = (
    _c(Op.TEST_UNIT_READY, 0, 0, 0, 0, CTL),
    _c(Op.REQUEST_SENSE, 0x01, 0, 0, 0xFF, CTL),
    _c(Op.READ_6, 0x1F, 0xFF, 0xFF, 0xFF, CTL),
    _c(Op.WRITE_6, 0x1F, 0xFF, 0xFF, 0xFF, CTL),
    _c(Op.INQUIRY, 0x01, 0xFF, 0xFF, 0xFF, CTL),
    _c(Op.MODE_SELECT_6, 0x11, 0, 0, 0xFF, CTL),
    _c(Op.RESERVE_6, 0x1F, 0, 0, 0, CTL),
    _c(Op.RELEASE_6, 0x1F, 0, 0, 0, CTL),
    _c(Op.MODE_SENSE_6, 0x08, 0xFF, 0xFF, 0xFF, CTL),
    _c(Op.START_STOP_UNIT, 0x01, 0, 0x0F, 0xF7, CTL),
    _c(Op.PREVENT_ALLOW, 0, 0, 0, 0x03, CTL),
    _c(Op.READ_CAPACITY_10, 0, *LBA4, 0, 0, 0x01, CTL),
    _c(Op.READ_10, RW1, *LBA4, 0x1F, 0xFF, 0xFF, CTL),
    _c(Op.WRITE_10, RW1, *LBA4, 0x1F, 0xFF, 0xFF, CTL),
    _c(Op.WRITE_VERIFY_10, WAV1, *LBA4, 0x1F, 0xFF, 0xFF, CTL),
    _c(Op.VERIFY_10, VRFY1, *LBA4, 0x1F, 0xFF, 0xFF, CTL),
    _c(Op.PRE_FETCH_10, 0x02, *LBA4, 0x1F, 0xFF, 0xFF, CTL),
    _c(Op.SYNCHRONIZE_CACHE_10, 0x02, *LBA4, 0x1F, 0xFF, 0xFF, CTL),
    _c(Op.READ_DEFECT_DATA_10, 0, 0x1F, 0, 0, 0, 0, 0xFF, 0xFF, CTL),
    _c(Op.WRITE_SAME_10, 0xF8, *LBA4, 0x1F, 0xFF, 0xFF, CTL),
    _c(Op.UNMAP, 0x01, 0, 0, 0, 0, 0x1F, 0xFF, 0xFF, CTL, thin=True),
    _c(Op.MODE_SELECT_10, 0x11, 0, 0, 0, 0, 0, 0xFF, 0xFF, CTL),
    _c(Op.RESERVE_10, 0x12, 0, 0, 0, 0, 0, 0xFF, 0xFF, CTL),
    _c(Op.RELEASE_10, 0x12, 0, 0, 0, 0, 0, 0xFF, 0xFF, CTL),
    _c(Op.MODE_SENSE_10, 0x18, 0xFF, 0xFF, 0, 0, 0, 0xFF, 0xFF, CTL),
    *(_c(Op.PERSISTENT_RESERVE_IN, sa, 0, 0, 0, 0, 0, 0xFF, 0xFF, CTL, sa=sa) for sa in range(4)),
    *(
        _c(Op.PERSISTENT_RESERVE_OUT, sa, 0xFF, 0, 0, 0xFF, 0xFF, 0xFF, 0xFF, CTL, sa=sa)
        for sa in range(8)
    ),
    _c(Op.READ_16, RW1, *LBA8, *LBA4, 0x1F, CTL),
    _c(Op.COMPARE_AND_WRITE, RW1, *LBA8, 0, 0, 0, 0xFF, 0x1F, CTL),
    _c(Op.WRITE_16, RW1, *LBA8, *LBA4, 0x1F, CTL),
    _c(Op.ORWRITE_16, RW1, *LBA8, *LBA4, 0x1F, CTL),
    _c(Op.WRITE_VERIFY_16, WAV1, *LBA8, *LBA4, 0x1F, CTL),
    _c(Op.VERIFY_16, VRFY1, *LBA8, *LBA4, 0x1F, CTL),
    _c(Op.PRE_FETCH_16, 0x02, *LBA8, *LBA4, 0x1F, CTL),
    _c(Op.SYNCHRONIZE_CACHE_16, 0x02, *LBA8, *LBA4, 0x1F, CTL),
    _c(Op.WRITE_SAME_16, 0xF9, *LBA8, *LBA4, 0x1F, CTL),
    _c(Op.WRITE_ATOMIC_16, 0xF8, *LBA8, 0, 0, 0xFF, 0xFF, 0x1F, CTL),  # WRPROTECT, DPO, FUA
    _c(
        Op.SERVICE_ACTION_IN_16,
        ServiceActionIn.READ_CAPACITY_16,
        *LBA8,
        *LBA4,
        0x01,
        CTL,
        sa=ServiceActionIn.READ_CAPACITY_16,
    ),
    _c(
        Op.SERVICE_ACTION_IN_16,
        ServiceActionIn.GET_LBA_STATUS,
        *LBA8,
        *LBA4,
        0,
        CTL,
        sa=ServiceActionIn.GET_LBA_STATUS,
    ),
    _c(Op.REPORT_LUNS, 0, 0xFF, 0, 0, 0, *LBA4, 0, CTL),
    _c(
        Op.MAINTENANCE_IN,
        MaintenanceIn.REPORT_SUPPORTED_OPCODES,
        0x87,
        0xFF,
        0xFF,
        0xFF,
        *LBA4,
        0,
        CTL,
        sa=MaintenanceIn.REPORT_SUPPORTED_OPCODES,
    ),
    _c(
        Op.MAINTENANCE_IN,
        MaintenanceIn.REPORT_SUPPORTED_TMFS,
        0x80,
        0,
        0,
        0,
        *LBA4,
        0,
        CTL,
        sa=MaintenanceIn.REPORT_SUPPORTED_TMFS,
    ),
    _c(Op.READ_12, RW1, *LBA4, *LBA4, 0x1F, CTL),
    _c(Op.WRITE_12, RW1, *LBA4, *LBA4, 0x1F, CTL),
    _c(Op.WRITE_VERIFY_12, WAV1, *LBA4, *LBA4, 0x1F, CTL),
    _c(Op.VERIFY_12, VRFY1, *LBA4, *LBA4, 0x1F, CTL),
    _c(Op.READ_DEFECT_DATA_12, 0x1F, *LBA4, *LBA4, 0, CTL),
)

# Opcodes that carry a service action in byte 1 (bits 4-0).
SERVICE_ACTION_OPCODES = frozenset(c.opcode for c in COMMANDS if c.service_action is not None)

# CDB length by opcode (the transport pads CDBs to 16 bytes; the control byte is at length-1).
CDB_LENGTH: dict[int, int] = {c.opcode: c.cdb_length for c in COMMANDS}


def commands_for(thin: bool) -> tuple[CommandInfo, ...]:
    return tuple(c for c in COMMANDS if thin or not c.thin_only)


def find(commands: tuple[CommandInfo, ...], opcode: int, sa: int | None) -> CommandInfo | None:
    for c in commands:
        if c.opcode == opcode and c.service_action == sa:
            return c
    return None


_READ = frozenset(
    (
        Op.READ_6,
        Op.READ_10,
        Op.READ_12,
        Op.READ_16,
        Op.VERIFY_10,
        Op.VERIFY_12,
        Op.VERIFY_16,
        Op.PRE_FETCH_10,
        Op.PRE_FETCH_16,
        Op.MODE_SENSE_6,
        Op.MODE_SENSE_10,
        Op.READ_DEFECT_DATA_10,
        Op.READ_DEFECT_DATA_12,
        Op.MAINTENANCE_IN,
    )
)
_ALWAYS = frozenset(
    (
        Op.TEST_UNIT_READY,
        Op.REQUEST_SENSE,
        Op.INQUIRY,
        Op.READ_CAPACITY_10,
        Op.REPORT_LUNS,
        Op.PERSISTENT_RESERVE_IN,
    )
)


def _service_action_in(cdb: bytes) -> Access:
    return Access.ALWAYS if (cdb[1] & 0x1F) == ServiceActionIn.READ_CAPACITY_16 else Access.READ


def _prevent_allow(cdb: bytes) -> Access:
    return Access.ALWAYS if (cdb[4] & 0x03) == 0 else Access.WRITE


def _start_stop(cdb: bytes) -> Access:
    return Access.ALWAYS if (cdb[4] & 0xF1) == 0x01 else Access.WRITE


def access_class(opcode: int) -> Access | Callable[[bytes], Access]:
    """The access class of an opcode, or a function of the CDB when it depends on fields."""
    if opcode in _ALWAYS:
        return Access.ALWAYS
    if opcode in _READ:
        return Access.READ
    if opcode == Op.SERVICE_ACTION_IN_16:
        return _service_action_in
    if opcode == Op.PREVENT_ALLOW:
        return _prevent_allow
    if opcode == Op.START_STOP_UNIT:
        return _start_stop
    if opcode == Op.PERSISTENT_RESERVE_OUT:
        return Access.PR_OUT
    if opcode in (Op.RESERVE_6, Op.RESERVE_10, Op.RELEASE_6, Op.RELEASE_10):
        return Access.SPC2
    return Access.WRITE


# Commands a nexus may send while another nexus holds an SPC-2 reservation (SPC-2 5.5.1).
# RELEASE from a non-holder is a no-op returning GOOD (SPC-2 7.17), not a conflict; the 1995 HA
# profile would have it conflict, but SPC wins (DESIGN.md).
SPC2_ALLOWED = frozenset(
    (Op.INQUIRY, Op.REQUEST_SENSE, Op.REPORT_LUNS, Op.RELEASE_6, Op.RELEASE_10)
)
