"""Names that identify a logical unit and its ports, stable across restarts and takeovers.

The HA profile asks that every device be uniquely identifiable "regardless of where it is in a
configuration, or after swapping, or in the case of multiple access paths": a multipath host
must see the same serial number and NAA name through every target port, and again after the
target restarts. So both are derived from the target name and LUN, never from time or chance.

Also here: iSCSI TransportIDs (SPC-4 7.6.4.6), the initiator port names persistent reservations
report and REGISTER AND MOVE receives.
"""

from __future__ import annotations

import hashlib

from ophiura.scsi.constants import PROTOCOL_ISCSI

# A 24-bit IEEE Company ID for the NAA 6 designator. Its second hex digit is A (the "X" bit of
# an IEEE CID set), i.e. a locally assigned company identifier, not someone else's OUI.
COMPANY_ID = 0x7A0F1A


def _digest(target_name: str, lun: int) -> bytes:
    return hashlib.sha256(f"ophiura:{target_name}:lun{lun}".encode()).digest()


def unit_serial(target_name: str, lun: int) -> str:
    """VPD 80h unit serial number: 16 upper-case hex digits (printable ASCII, as SPC-4 asks)."""
    return _digest(target_name, lun)[:8].hex().upper()


def naa_designator(target_name: str, lun: int) -> bytes:
    """16-byte NAA IEEE Registered Extended (type 6) name of the logical unit."""
    digest = int.from_bytes(_digest(target_name, lun)[8:20])  # 96 bits of hash
    value = (0x6 << 124) | (COMPANY_ID << 100) | (digest & ((1 << 100) - 1))
    return value.to_bytes(16)


def designator(
    kind: int, data: bytes, association: int = 0, code_set: int = 1, protocol: int | None = None
) -> bytes:
    """One designation descriptor of VPD page 83h (SPC-4 7.8.6.1)."""
    byte0 = code_set & 0x0F
    byte1 = ((association & 0x3) << 4) | (kind & 0x0F)
    if protocol is not None:
        byte0 |= (protocol & 0x0F) << 4
        byte1 |= 0x80  # PIV: the protocol identifier is valid
    return bytes((byte0, byte1, 0, len(data))) + data


def scsi_name_string(name: str) -> bytes:
    """A null-terminated UTF-8 SCSI name padded to a multiple of four bytes."""
    raw = name.encode() + b"\x00"
    return raw + b"\x00" * (-len(raw) % 4)


def iscsi_transport_id(initiator_port: str) -> bytes:
    """TransportID for an iSCSI initiator port: format 01b, `iqn...,i,0x<ISID>`."""
    if ",i," in initiator_port:
        name = scsi_name_string(initiator_port)
        return bytes((0x40 | PROTOCOL_ISCSI, 0)) + len(name).to_bytes(2) + name
    name = scsi_name_string(initiator_port)  # a device name only: format 00b
    return bytes((PROTOCOL_ISCSI, 0)) + len(name).to_bytes(2) + name


class TransportIdError(ValueError):
    """A TransportID we cannot decode; `offset` points at the offending byte."""

    def __init__(self, message: str, offset: int) -> None:
        super().__init__(message)
        self.offset = offset


def parse_iscsi_transport_id(data: bytes) -> tuple[str, int]:
    """Decode an iSCSI TransportID; returns (initiator port name, bytes used)."""
    if len(data) < 4:
        raise TransportIdError("TransportID shorter than its header", 0)
    if data[0] & 0x0F != PROTOCOL_ISCSI:
        raise TransportIdError("not an iSCSI TransportID", 0)
    fmt = data[0] >> 6
    length = int.from_bytes(data[2:4])
    if length < 4 or length % 4 or 4 + length > len(data):
        raise TransportIdError("bad TransportID ADDITIONAL LENGTH", 2)
    text = data[4 : 4 + length].split(b"\x00", 1)[0]
    try:
        name = text.decode()
    except UnicodeDecodeError as exc:
        raise TransportIdError("TransportID name is not UTF-8", 4) from exc
    if fmt == 1:
        if ",i,0x" not in name.lower():
            raise TransportIdError("format 01b TransportID without ISID", 4)
        return normalize_port(name), 4 + length
    if fmt == 0:
        return normalize_port(name), 4 + length
    raise TransportIdError("unsupported TransportID format", 0)


def normalize_port(name: str) -> str:
    """iSCSI names compare case-insensitively (RFC 3722) and ISIDs are hex."""
    return name.lower()
