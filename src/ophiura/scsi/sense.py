"""Sense data: the typed errors command handlers raise, and their wire encodings.

Handlers raise `CheckCondition` (or `ReservationConflict`) instead of building bytes, so the
format (fixed or descriptor, chosen per LU by the control page's D_SENSE bit) is decided in one
place, after the fact, exactly as SPC-4 4.5 says: the same condition, two encodings.
"""

from __future__ import annotations

from ophiura.scsi.constants import Asc, SenseKey


class CheckCondition(Exception):
    """A command ends with CHECK CONDITION and this sense (SPC-4 4.5)."""

    __slots__ = ("asc", "ascq", "information", "key", "sks")

    def __init__(
        self,
        key: int,
        asc_ascq: tuple[int, int],
        information: int | None = None,
        sks: bytes | None = None,
    ) -> None:
        super().__init__(f"sense {key:x}/{asc_ascq[0]:02x}/{asc_ascq[1]:02x}")
        self.key = key
        self.asc, self.ascq = asc_ascq
        self.information = information
        self.sks = sks

    def encode(self, descriptor: bool) -> bytes:
        return encode_sense(
            self.key, self.asc, self.ascq, self.information, self.sks, descriptor=descriptor
        )


class ReservationConflict(Exception):
    """The command conflicts with a reservation: RESERVATION CONFLICT status, no sense."""


def field_pointer(byte: int, bit: int | None = None, cdb: bool = True) -> bytes:
    """Sense-key specific field pointer (SPC-4 4.5.2.4.2): SKSV, C/D, BPV, bit and byte."""
    first = 0x80 | (0x40 if cdb else 0)
    if bit is not None:
        first |= 0x08 | (bit & 0x07)
    return bytes((first, (byte >> 8) & 0xFF, byte & 0xFF))


def invalid_cdb(byte: int, bit: int | None = None) -> CheckCondition:
    return CheckCondition(
        SenseKey.ILLEGAL_REQUEST, Asc.INVALID_FIELD_IN_CDB, sks=field_pointer(byte, bit)
    )


def invalid_param(byte: int, bit: int | None = None) -> CheckCondition:
    return CheckCondition(
        SenseKey.ILLEGAL_REQUEST,
        Asc.INVALID_FIELD_IN_PARAMETER_LIST,
        sks=field_pointer(byte, bit, cdb=False),
    )


def param_list_length_error() -> CheckCondition:
    return CheckCondition(SenseKey.ILLEGAL_REQUEST, Asc.PARAMETER_LIST_LENGTH_ERROR)


def invalid_opcode() -> CheckCondition:
    return CheckCondition(
        SenseKey.ILLEGAL_REQUEST, Asc.INVALID_COMMAND_OPERATION_CODE, sks=field_pointer(0)
    )


def lba_out_of_range() -> CheckCondition:
    return CheckCondition(SenseKey.ILLEGAL_REQUEST, Asc.LBA_OUT_OF_RANGE)


def miscompare(offset: int) -> CheckCondition:
    return CheckCondition(SenseKey.MISCOMPARE, Asc.MISCOMPARE_DURING_VERIFY, information=offset)


def unit_attention(asc_ascq: tuple[int, int]) -> CheckCondition:
    return CheckCondition(SenseKey.UNIT_ATTENTION, asc_ascq)


def encode_sense(
    key: int,
    asc: int,
    ascq: int,
    information: int | None = None,
    sks: bytes | None = None,
    descriptor: bool = False,
) -> bytes:
    """Fixed format (response code 70h) or descriptor format (72h) current sense."""
    if descriptor:
        body = bytearray()
        if information is not None:
            body += bytes((0x00, 0x0A, 0x80, 0x00)) + (information & (2**64 - 1)).to_bytes(8)
        if sks is not None:
            body += bytes((0x02, 0x06, 0x00, 0x00)) + sks + b"\x00"
        return bytes((0x72, key & 0x0F, asc, ascq, 0, 0, 0, len(body))) + bytes(body)
    out = bytearray(18)
    out[0] = 0x70
    out[2] = key & 0x0F
    if information is not None:
        out[0] |= 0x80
        out[3:7] = (information & 0xFFFFFFFF).to_bytes(4)
    out[7] = 10
    out[12] = asc
    out[13] = ascq
    if sks is not None:
        out[15:18] = sks
    return bytes(out)


def decode_sense(sense: bytes) -> tuple[int, int, int]:
    """(key, asc, ascq) of fixed or descriptor sense: for tests and logging."""
    if not sense:
        raise ValueError("empty sense data")
    code = sense[0] & 0x7F
    if code in (0x72, 0x73):
        return sense[1] & 0x0F, sense[2], sense[3]
    if code in (0x70, 0x71):
        return sense[2] & 0x0F, sense[12], sense[13]
    raise ValueError(f"unknown sense response code {code:#x}")
