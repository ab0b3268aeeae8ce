"""Numbers from SPC-4 / SBC-3 / SAM-5 that the command set uses, named once.

Operation codes, sense keys and the ASC/ASCQ pairs live here so that every other module can say
`Asc.LBA_OUT_OF_RANGE` instead of `(0x21, 0x00)`, and so a reader can check them against the
standards' tables in one place.
"""

from __future__ import annotations

from enum import IntEnum


class Op(IntEnum):
    TEST_UNIT_READY = 0x00
    REQUEST_SENSE = 0x03
    READ_6 = 0x08
    WRITE_6 = 0x0A
    INQUIRY = 0x12
    MODE_SELECT_6 = 0x15
    RESERVE_6 = 0x16
    RELEASE_6 = 0x17
    MODE_SENSE_6 = 0x1A
    START_STOP_UNIT = 0x1B
    PREVENT_ALLOW = 0x1E
    READ_CAPACITY_10 = 0x25
    READ_10 = 0x28
    WRITE_10 = 0x2A
    WRITE_VERIFY_10 = 0x2E
    VERIFY_10 = 0x2F
    PRE_FETCH_10 = 0x34
    SYNCHRONIZE_CACHE_10 = 0x35
    READ_DEFECT_DATA_10 = 0x37
    WRITE_SAME_10 = 0x41
    UNMAP = 0x42
    SANITIZE = 0x48
    MODE_SELECT_10 = 0x55
    RESERVE_10 = 0x56
    RELEASE_10 = 0x57
    MODE_SENSE_10 = 0x5A
    PERSISTENT_RESERVE_IN = 0x5E
    PERSISTENT_RESERVE_OUT = 0x5F
    EXTENDED_COPY = 0x83
    RECEIVE_COPY_RESULTS = 0x84
    READ_16 = 0x88
    COMPARE_AND_WRITE = 0x89
    WRITE_16 = 0x8A
    ORWRITE_16 = 0x8B
    WRITE_VERIFY_16 = 0x8E
    VERIFY_16 = 0x8F
    PRE_FETCH_16 = 0x90
    SYNCHRONIZE_CACHE_16 = 0x91
    WRITE_SAME_16 = 0x93
    WRITE_ATOMIC_16 = 0x9C
    SERVICE_ACTION_IN_16 = 0x9E
    REPORT_LUNS = 0xA0
    MAINTENANCE_IN = 0xA3
    READ_12 = 0xA8
    WRITE_12 = 0xAA
    WRITE_VERIFY_12 = 0xAE
    VERIFY_12 = 0xAF
    READ_DEFECT_DATA_12 = 0xB7


class ServiceActionIn(IntEnum):
    READ_CAPACITY_16 = 0x10
    GET_LBA_STATUS = 0x12


class MaintenanceIn(IntEnum):
    REPORT_SUPPORTED_OPCODES = 0x0C
    REPORT_SUPPORTED_TMFS = 0x0D


class PrIn(IntEnum):
    READ_KEYS = 0
    READ_RESERVATION = 1
    REPORT_CAPABILITIES = 2
    READ_FULL_STATUS = 3


class PrOut(IntEnum):
    REGISTER = 0
    RESERVE = 1
    RELEASE = 2
    CLEAR = 3
    PREEMPT = 4
    PREEMPT_AND_ABORT = 5
    REGISTER_AND_IGNORE = 6
    REGISTER_AND_IGNORE_EXISTING_KEY = 6  # SPC-4's full name (an alias: the initiator side uses it)
    REGISTER_AND_MOVE = 7


class PrType(IntEnum):
    """Persistent reservation types (SPC-4 table "Persistent reservation type codes")."""

    WRITE_EXCLUSIVE = 1
    EXCLUSIVE_ACCESS = 3
    WRITE_EXCLUSIVE_REGISTRANTS_ONLY = 5
    EXCLUSIVE_ACCESS_REGISTRANTS_ONLY = 6
    WRITE_EXCLUSIVE_ALL_REGISTRANTS = 7
    EXCLUSIVE_ACCESS_ALL_REGISTRANTS = 8

    @property
    def all_registrants(self) -> bool:
        return self in (
            PrType.WRITE_EXCLUSIVE_ALL_REGISTRANTS,
            PrType.EXCLUSIVE_ACCESS_ALL_REGISTRANTS,
        )

    @property
    def registrants_only(self) -> bool:
        return self in (
            PrType.WRITE_EXCLUSIVE_REGISTRANTS_ONLY,
            PrType.EXCLUSIVE_ACCESS_REGISTRANTS_ONLY,
        )

    @property
    def write_exclusive(self) -> bool:
        return self in (
            PrType.WRITE_EXCLUSIVE,
            PrType.WRITE_EXCLUSIVE_REGISTRANTS_ONLY,
            PrType.WRITE_EXCLUSIVE_ALL_REGISTRANTS,
        )


class SenseKey(IntEnum):
    NO_SENSE = 0x0
    RECOVERED_ERROR = 0x1
    NOT_READY = 0x2
    MEDIUM_ERROR = 0x3
    HARDWARE_ERROR = 0x4
    ILLEGAL_REQUEST = 0x5
    UNIT_ATTENTION = 0x6
    DATA_PROTECT = 0x7
    ABORTED_COMMAND = 0xB
    MISCOMPARE = 0xE


class Asc:
    """(ASC, ASCQ) pairs from SPC-4 annex D."""

    NO_ADDITIONAL_SENSE = (0x00, 0x00)
    NOT_READY_INIT_REQUIRED = (0x04, 0x02)
    WRITE_ERROR = (0x0C, 0x00)
    UNRECOVERED_READ_ERROR = (0x11, 0x00)
    MISCOMPARE_DURING_VERIFY = (0x1D, 0x00)
    PARAMETER_LIST_LENGTH_ERROR = (0x1A, 0x00)
    INVALID_COMMAND_OPERATION_CODE = (0x20, 0x00)
    LBA_OUT_OF_RANGE = (0x21, 0x00)
    INVALID_FIELD_IN_CDB = (0x24, 0x00)
    LOGICAL_UNIT_NOT_SUPPORTED = (0x25, 0x00)
    INVALID_FIELD_IN_PARAMETER_LIST = (0x26, 0x00)
    INVALID_RELEASE_OF_PR = (0x26, 0x04)
    WRITE_PROTECTED = (0x27, 0x00)
    SOFTWARE_WRITE_PROTECTED = (0x27, 0x02)
    SPACE_ALLOCATION_FAILED_WRITE_PROTECT = (0x27, 0x07)
    POWER_ON_RESET = (0x29, 0x00)
    POWER_ON_OCCURRED = (0x29, 0x01)
    SCSI_BUS_RESET_OCCURRED = (0x29, 0x02)
    BUS_DEVICE_RESET_FUNCTION_OCCURRED = (0x29, 0x03)
    I_T_NEXUS_LOSS_OCCURRED = (0x29, 0x07)
    MODE_PARAMETERS_CHANGED = (0x2A, 0x01)
    RESERVATIONS_PREEMPTED = (0x2A, 0x03)
    RESERVATIONS_RELEASED = (0x2A, 0x04)
    REGISTRATIONS_PREEMPTED = (0x2A, 0x05)
    CAPACITY_DATA_HAS_CHANGED = (0x2A, 0x09)
    COMMANDS_CLEARED_BY_ANOTHER_INITIATOR = (0x2F, 0x00)
    SAVING_PARAMETERS_NOT_SUPPORTED = (0x39, 0x00)
    INTERNAL_TARGET_FAILURE = (0x44, 0x00)
    OVERLAPPED_COMMANDS_ATTEMPTED = (0x4E, 0x00)


# Version descriptors claimed in standard INQUIRY data (SPC-4 table "Version descriptor values").
VERSION_SAM5 = 0x00A0
VERSION_SPC4 = 0x0460
VERSION_SBC3 = 0x04C0
VERSION_ISCSI = 0x0960

# Protocol identifier for iSCSI (SPC-4 table "PROTOCOL IDENTIFIER values").
PROTOCOL_ISCSI = 0x5
