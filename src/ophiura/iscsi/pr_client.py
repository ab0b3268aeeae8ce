"""PERSISTENT RESERVE IN/OUT from the initiator's side (SPC-4 §6.15-6.16): CDB builders and
parameter-data parsers, free of any transport, so `ophiura pr` and the cluster's fencing can
use them over any initiator.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

# One definition of the PR codes, shared with the device server (re-exported for callers).
from ophiura.scsi.constants import PrIn as PrIn
from ophiura.scsi.constants import PrOut as PrOut
from ophiura.scsi.constants import PrType as PrType

PR_IN = 0x5E
PR_OUT = 0x5F


class PrParseError(ValueError):
    """Parameter data too short or inconsistent."""


def pr_in_cdb(service_action: int, allocation_length: int = 8192) -> bytes:
    return struct.pack(">BBxxxxxHx", PR_IN, service_action & 0x1F, allocation_length)


def pr_out_cdb(service_action: int, pr_type: int = 0, scope: int = 0, length: int = 24) -> bytes:
    return struct.pack(
        ">BBBxxIx", PR_OUT, service_action & 0x1F, ((scope & 0xF) << 4) | (pr_type & 0xF), length
    )


def pr_out_parameters(
    key: int = 0,
    sa_key: int = 0,
    aptpl: bool = False,
    all_tg_pt: bool = False,
    spec_i_pt: bool = False,
) -> bytes:
    flags = (0x08 if spec_i_pt else 0) | (0x04 if all_tg_pt else 0) | (0x01 if aptpl else 0)
    return struct.pack(">QQ4xBx2x", key, sa_key, flags)


def iscsi_transport_id(name: str, isid: str | int | None = None) -> bytes:
    """SPC-4 iSCSI TransportID: format 00 (name) or 01 (name,i,0x<isid>)."""
    if isid is None:
        body, code = name.encode(), 0x05
    else:
        isid_text = isid if isinstance(isid, str) else f"0x{isid:012x}"
        if not isid_text.startswith("0x"):
            isid_text = "0x" + isid_text
        body, code = f"{name},i,{isid_text}".encode(), 0x45
    body += b"\0"
    body += b"\0" * (-len(body) & 3)
    return struct.pack(">BxH", code, len(body)) + body


def register_and_move_parameters(
    key: int,
    sa_key: int,
    relative_target_port: int,
    transport_id: bytes,
    unreg: bool = False,
    aptpl: bool = False,
) -> bytes:
    flags = (0x02 if unreg else 0) | (0x01 if aptpl else 0)
    return (
        struct.pack(">QQxBHI", key, sa_key, flags, relative_target_port, len(transport_id))
        + transport_id
    )


@dataclass
class Keys:
    generation: int
    keys: list[int]


@dataclass
class Reservation:
    generation: int
    key: int | None = None
    type: int | None = None
    scope: int = 0


@dataclass
class FullStatusEntry:
    key: int
    holder: bool
    all_tg_pt: bool
    type: int
    scope: int
    relative_target_port: int
    transport_id: bytes

    @property
    def initiator(self) -> str:
        """The iSCSI name (and ISID) from the TransportID, when it is an iSCSI one."""
        tid = self.transport_id
        if len(tid) < 4 or tid[0] & 0x0F != 0x05:
            return tid.hex()
        length = struct.unpack(">H", tid[2:4])[0]
        return tid[4 : 4 + length].split(b"\0", 1)[0].decode(errors="replace")


@dataclass
class FullStatus:
    generation: int
    entries: list[FullStatusEntry] = field(default_factory=list)


@dataclass
class Capabilities:
    crh: bool
    sip_c: bool
    atp_c: bool
    ptpl_c: bool
    tmv: bool
    ptpl_a: bool
    type_mask: int


def _header(data: bytes) -> tuple[int, int]:
    if len(data) < 8:
        raise PrParseError(f"PR IN data of {len(data)} bytes")
    return struct.unpack(">II", data[:8])


def parse_read_keys(data: bytes) -> Keys:
    gen, length = _header(data)
    body = data[8 : 8 + length]
    n = len(body) // 8
    return Keys(gen, list(struct.unpack(f">{n}Q", body[: n * 8])))


def parse_read_reservation(data: bytes) -> Reservation:
    gen, length = _header(data)
    if length < 16:
        return Reservation(gen)
    if len(data) < 24:
        raise PrParseError("READ RESERVATION descriptor truncated")
    key = struct.unpack(">Q", data[8:16])[0]
    scope_type = data[21]
    return Reservation(gen, key, scope_type & 0x0F, scope_type >> 4)


def parse_full_status(data: bytes) -> FullStatus:
    gen, length = _header(data)
    body = data[8 : 8 + length]
    out = FullStatus(gen)
    pos = 0
    while pos + 24 <= len(body):
        key, flags, scope_type, rtp, dlen = struct.unpack(">Q4xBB4xHI", body[pos : pos + 24])
        tid = body[pos + 24 : pos + 24 + dlen]
        out.entries.append(
            FullStatusEntry(
                key,
                bool(flags & 1),
                bool(flags & 2),
                scope_type & 0xF,
                scope_type >> 4,
                rtp,
                bytes(tid),
            )
        )
        pos += 24 + dlen
    return out


def parse_capabilities(data: bytes) -> Capabilities:
    if len(data) < 6:
        raise PrParseError("REPORT CAPABILITIES truncated")
    b2, b3 = data[2], data[3]
    return Capabilities(
        crh=bool(b2 & 0x10),
        sip_c=bool(b2 & 0x08),
        atp_c=bool(b2 & 0x04),
        ptpl_c=bool(b2 & 0x01),
        tmv=bool(b3 & 0x80),
        ptpl_a=bool(b3 & 0x01),
        type_mask=struct.unpack(">H", data[4:6])[0],
    )
