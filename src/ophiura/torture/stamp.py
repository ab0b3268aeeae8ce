"""Sector identity: every 512-byte sector a client writes says which write produced it.

Layout of one sector: magic (8) | writer (u16) | op (u32) | lba (u64) | filler | crc32 (4).
The filler is derived from (writer, op, lba), so a sector torn or mixed from two writes fails
the CRC. Decoding gives a value: INITIAL (all zeros: never written), the write's id
(writer << 32 | op), or GARBLED.
"""

from __future__ import annotations

import struct
import zlib

SECTOR = 512
MAGIC = b"OPHTORT1"
_HEAD = struct.Struct(">8sHIQ")  # 22 bytes
_FILL = SECTOR - _HEAD.size - 4
INITIAL = 0
GARBLED = -1
_ZERO = bytes(SECTOR)


def write_id(writer: int, op: int) -> int:
    """Writers are numbered from 1, so no write id is INITIAL."""
    return (writer << 32) | op


def describe(value: int) -> str:
    if value == INITIAL:
        return "initial"
    if value == GARBLED:
        return "garbled"
    return f"w{value >> 32}:{value & 0xFFFFFFFF}"


def sector(writer: int, op: int, lba: int) -> bytes:
    head = _HEAD.pack(MAGIC, writer, op, lba)
    seed = head[8:]
    fill = (seed * (_FILL // len(seed) + 1))[:_FILL]
    body = head + fill
    return body + struct.pack(">I", zlib.crc32(body))


def payload(writer: int, op: int, first_lba: int, count: int) -> bytes:
    return b"".join(sector(writer, op, first_lba + i) for i in range(count))


def decode(data: bytes | memoryview, lba: int) -> int:
    """The value of one sector found at `lba`."""
    if data == _ZERO:
        return INITIAL
    if len(data) != SECTOR or bytes(data[:8]) != MAGIC:
        return GARBLED
    body = bytes(data[: SECTOR - 4])
    if struct.unpack(">I", data[SECTOR - 4 :])[0] != zlib.crc32(body):
        return GARBLED
    _, writer, op, found_lba = _HEAD.unpack(body[: _HEAD.size])
    if found_lba != lba or writer == 0:
        return GARBLED
    return write_id(writer, op)


def decode_runs(data: bytes, first_lba: int) -> list[tuple[int, int, int]]:
    """Decode consecutive sectors into runs (first_lba, count, value): a read of 1 MiB written
    by one write is one run, which keeps the history small."""
    runs: list[tuple[int, int, int]] = []
    view = memoryview(data)
    for i in range(len(data) // SECTOR):
        value = decode(view[i * SECTOR : (i + 1) * SECTOR], first_lba + i)
        if runs and runs[-1][2] == value and runs[-1][0] + runs[-1][1] == first_lba + i:
            lba, count, _ = runs[-1]
            runs[-1] = (lba, count + 1, value)
        else:
            runs.append((first_lba + i, 1, value))
    return runs
