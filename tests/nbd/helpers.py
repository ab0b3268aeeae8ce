"""Byte builders and a driver for the sans-I/O server core, shared by the codec and fuzz tests."""

from __future__ import annotations

import struct

from ophiura.nbd.constants import (
    CLIENT_FLAGS,
    IHAVEOPT,
    OPTION_HEADER,
    OPTION_REPLY,
    OPTION_REPLY_MAGIC,
    REQUEST,
    REQUEST_MAGIC,
    ClientFlag,
    TransmissionFlag,
)
from ophiura.nbd.protocol import NEED_DATA, ExportInfo, ServerConnection

DISK = ExportInfo(
    "disk",
    1 << 20,
    TransmissionFlag.HAS_FLAGS | TransmissionFlag.SEND_FLUSH,
    min_block=512,
    description="the disk",
)
RO = ExportInfo("ro", 4096, TransmissionFlag.HAS_FLAGS | TransmissionFlag.READ_ONLY)
CATALOG = {"disk": DISK, "ro": RO}
FLAGS = ClientFlag.C_FIXED_NEWSTYLE | ClientFlag.C_NO_ZEROES


def option(opt: int, data: bytes = b"") -> bytes:
    return OPTION_HEADER.pack(IHAVEOPT, opt, len(data)) + data


def go_data(name: str, infos: tuple[int, ...] = ()) -> bytes:
    raw = name.encode()
    return (
        len(raw).to_bytes(4, "big")
        + raw
        + len(infos).to_bytes(2, "big")
        + b"".join(i.to_bytes(2, "big") for i in infos)
    )


def request(
    command: int,
    offset: int = 0,
    length: int = 0,
    handle: int = 1,
    flags: int = 0,
    data: bytes = b"",
    magic: int = REQUEST_MAGIC,
) -> bytes:
    return REQUEST.pack(magic, flags, command, handle, offset, length) + data


def drive(conn: ServerConnection, data: bytes) -> list[object]:
    """Feed bytes; return the events up to NEED_DATA."""
    conn.receive_data(data)
    events = []
    for _ in range(10_000):
        event = conn.next_event()
        if event is NEED_DATA:
            return events
        events.append(event)
    raise AssertionError("core produced events without end")


def new_conn(flags: int = FLAGS, **kwargs: object) -> ServerConnection:
    conn = ServerConnection(CATALOG, **kwargs)  # type: ignore[arg-type]
    drive(conn, CLIENT_FLAGS.pack(flags))
    return conn


def option_replies(data: bytes) -> list[tuple[int, int, bytes]]:
    """Split server output into (option, reply type, payload)."""
    out = []
    pos = 0
    while pos < len(data):
        magic, opt, reply, length = OPTION_REPLY.unpack_from(data, pos)
        assert magic == OPTION_REPLY_MAGIC
        pos += OPTION_REPLY.size
        out.append((opt, reply, data[pos : pos + length]))
        pos += length
    return out


U16 = struct.Struct(">H")
