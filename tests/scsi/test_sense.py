"""Sense data encodings: fixed (70h) and descriptor (72h), with INFORMATION and field pointers."""

from __future__ import annotations

from ophiura.scsi.sense import (
    CheckCondition,
    decode_sense,
    encode_sense,
    field_pointer,
    invalid_cdb,
    invalid_param,
    miscompare,
)


def test_fixed_format() -> None:
    sense = invalid_cdb(2, 5).encode(descriptor=False)
    assert len(sense) == 18 and sense[0] == 0x70 and sense[7] == 10
    assert sense[2] == 5 and sense[12:14] == b"\x24\x00"
    assert sense[15:18] == bytes((0xC0 | 0x08 | 5, 0, 2))
    assert decode_sense(sense) == (5, 0x24, 0)


def test_fixed_format_information() -> None:
    sense = miscompare(0x1234).encode(descriptor=False)
    assert sense[0] == 0xF0 and int.from_bytes(sense[3:7]) == 0x1234
    assert sense[2] == 0x0E and sense[12:14] == b"\x1d\x00"


def test_descriptor_format() -> None:
    sense = CheckCondition(0x0E, (0x1D, 0), information=7, sks=field_pointer(3)).encode(True)
    assert sense[0] == 0x72 and sense[1] == 0x0E and sense[2:4] == b"\x1d\x00"
    assert sense[7] == len(sense) - 8 == 12 + 8
    assert sense[8:12] == bytes((0, 0x0A, 0x80, 0)) and int.from_bytes(sense[12:20]) == 7
    assert sense[20:24] == bytes((2, 6, 0, 0)) and sense[24:27] == bytes((0xC0, 0, 3))
    assert decode_sense(sense) == (0x0E, 0x1D, 0)


def test_parameter_list_pointer_has_cd_clear() -> None:
    sense = invalid_param(20, 3).encode(False)
    assert sense[15] == 0x80 | 0x08 | 3 and sense[16:18] == b"\x00\x14"


def test_plain_sense_without_extras() -> None:
    assert encode_sense(6, 0x29, 0, descriptor=True) == bytes((0x72, 6, 0x29, 0, 0, 0, 0, 0))
