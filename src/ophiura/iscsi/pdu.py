"""iSCSI PDU codec (RFC 7143 §11), sans-I/O.

Every PDU starts with a 48-byte Basic Header Segment (BHS). We unpack it with one precompiled
`struct.Struct` into thirteen integers whose meaning depends on the opcode (the RFC reuses the
same offsets for different fields), so decoding costs one C call and one small object, and
encoding a PDU is one `pack` call plus the (uncopied) data buffer.

The decoder is a byte buffer plus `next_pdu()`: it returns a `Pdu` when a whole one is buffered,
`None` when more bytes are needed, and raises a `PduError` subclass for anything malformed.
DataSegmentLength is checked against the negotiated MaxRecvDataSegmentLength before any byte of
the data segment is buffered for it, so a hostile peer cannot make us allocate.
"""

from __future__ import annotations

import struct
from enum import IntEnum

import google_crc32c

BHS_LEN = 48
NO_TAG = 0xFFFFFFFF
LOGIN_MAX_DATA = 8192  # RFC 7143 §6.1: login PDUs carry at most 8192 bytes of text

# opcode byte 0, flags byte 1, bytes 2-3, AHS length + DataSegmentLength, LUN / ISID+TSIH,
# ITT, then seven 32-bit words at offsets 20, 24, 28, 32, 36, 40, 44.
BHS = struct.Struct(">BBHIQI7I")
_CRC = struct.Struct("<I")  # iSCSI sends the CRC32C digest least significant byte first
_crc = google_crc32c.value


class Opcode(IntEnum):
    NOP_OUT = 0x00
    SCSI_COMMAND = 0x01
    TMF_REQUEST = 0x02
    LOGIN_REQUEST = 0x03
    TEXT_REQUEST = 0x04
    DATA_OUT = 0x05
    LOGOUT_REQUEST = 0x06
    SNACK_REQUEST = 0x10
    NOP_IN = 0x20
    SCSI_RESPONSE = 0x21
    TMF_RESPONSE = 0x22
    LOGIN_RESPONSE = 0x23
    TEXT_RESPONSE = 0x24
    DATA_IN = 0x25
    LOGOUT_RESPONSE = 0x26
    R2T = 0x31
    ASYNC_MESSAGE = 0x32
    REJECT = 0x3F


INITIATOR_OPCODES = frozenset({0x00, 0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x10})
TARGET_OPCODES = frozenset({0x20, 0x21, 0x22, 0x23, 0x24, 0x25, 0x26, 0x31, 0x32, 0x3F})


class RejectReason(IntEnum):
    DATA_DIGEST_ERROR = 0x02
    SNACK_REJECT = 0x03
    PROTOCOL_ERROR = 0x04
    COMMAND_NOT_SUPPORTED = 0x05
    IMMEDIATE_COMMAND_REJECT = 0x06
    TASK_IN_PROGRESS = 0x07
    INVALID_DATA_ACK = 0x08
    INVALID_PDU_FIELD = 0x09
    LONG_OPERATION_REJECT = 0x0A
    WAITING_FOR_LOGOUT = 0x0C


# Flag bits (byte 1).
F_FINAL = 0x80
# SCSI Command
F_READ = 0x40
F_WRITE = 0x20
ATTR_MASK = 0x07
# Data-In / SCSI Response
F_ACK = 0x40
F_BIDI_OVERFLOW = 0x10
F_BIDI_UNDERFLOW = 0x08
F_OVERFLOW = 0x04  # SCSI Response O bit; Data-In O bit
F_UNDERFLOW = 0x02  # SCSI Response U bit; Data-In U bit
F_STATUS = 0x01  # Data-In S bit
# Login
F_TRANSIT = 0x80
F_CONTINUE = 0x40
# Text
F_TEXT_CONTINUE = 0x40
IMMEDIATE = 0x40


class PduError(Exception):
    """A malformed PDU. `fatal`: the byte stream can no longer be trusted (close it)."""

    reason: RejectReason = RejectReason.PROTOCOL_ERROR
    fatal = True

    def __init__(self, message: str, header: bytes = b"") -> None:
        super().__init__(message)
        self.header = header


class TruncatedPdu(PduError):
    """`decode_pdu` got fewer bytes than the PDU says it has."""


class DataSegmentTooLong(PduError):
    """DataSegmentLength above what we declared we can receive."""


class HeaderDigestError(PduError):
    """Header CRC32C mismatch: nothing in the header can be trusted, not even its length."""


class DataDigestError(PduError):
    """Data CRC32C mismatch: the header is fine, the payload is not."""

    reason = RejectReason.DATA_DIGEST_ERROR
    fatal = False

    def __init__(self, message: str, header: bytes = b"", pdu: Pdu | None = None) -> None:
        super().__init__(message, header)
        self.pdu = pdu


class UnknownOpcode(PduError):
    """An opcode this side never receives; the PDU was skipped whole, the stream is intact."""

    reason = RejectReason.COMMAND_NOT_SUPPORTED
    fatal = False


class AhsTooLong(PduError):
    """More additional header segments than we accept."""


MAX_AHS_BYTES = 1024


class Pdu:
    """One decoded PDU. Field names follow the BHS offsets; use the properties for meaning."""

    __slots__ = (
        "ahs",
        "b2",
        "data",
        "flags",
        "header",
        "immediate",
        "itt",
        "lun_raw",
        "opcode",
        "w20",
        "w24",
        "w28",
        "w32",
        "w36",
        "w40",
        "w44",
    )

    def __init__(
        self,
        opcode: int,
        immediate: bool,
        flags: int,
        b2: int,
        lun_raw: int,
        itt: int,
        words: tuple[int, ...],
        header: bytes,
        ahs: bytes = b"",
        data: bytes = b"",
    ) -> None:
        self.opcode = opcode
        self.immediate = immediate
        self.flags = flags
        self.b2 = b2
        self.lun_raw = lun_raw
        self.itt = itt
        self.w20, self.w24, self.w28, self.w32, self.w36, self.w40, self.w44 = words
        self.header = header
        self.ahs = ahs
        self.data = data

    def __repr__(self) -> str:
        try:
            name = Opcode(self.opcode).name
        except ValueError:
            name = hex(self.opcode)
        return f"<Pdu {name} itt=0x{self.itt:08x} flags=0x{self.flags:02x} dlen={len(self.data)}>"

    # --- fields whose meaning depends on the opcode ---------------------------------------
    @property
    def final(self) -> bool:
        return bool(self.flags & F_FINAL)

    @property
    def lun(self) -> int:
        return decode_lun(self.lun_raw)

    @property
    def cdb(self) -> bytes:
        return self.header[32:48]

    @property
    def ttt(self) -> int:
        return self.w20

    @property
    def cmdsn(self) -> int:
        return self.w24

    @property
    def expstatsn(self) -> int:
        return self.w28

    @property
    def statsn(self) -> int:
        return self.w24

    @property
    def expcmdsn(self) -> int:
        return self.w28

    @property
    def maxcmdsn(self) -> int:
        return self.w32

    @property
    def isid(self) -> int:
        return self.lun_raw >> 16

    @property
    def tsih(self) -> int:
        return self.lun_raw & 0xFFFF

    @property
    def cid(self) -> int:
        return self.w20 >> 16


def decode_lun(raw: int) -> int:
    """SAM LUN (8 bytes as an int) -> LUN number; peripheral and flat addressing."""
    first = raw >> 56
    method = first >> 6
    if method == 0:
        return (raw >> 48) & 0xFF
    if method == 1:
        return ((first & 0x3F) << 8) | ((raw >> 48) & 0xFF)
    return (raw >> 48) & 0xFFFF  # other methods: report the first level as is


def encode_lun(lun: int) -> int:
    if lun < 256:
        return lun << 48
    if lun < 16384:
        return ((0x40 | (lun >> 8)) << 56) | ((lun & 0xFF) << 48)
    raise ValueError(f"LUN {lun} does not fit flat addressing")


def pad_len(length: int) -> int:
    return -length & 3


_PADS = (b"", b"\0\0\0", b"\0\0", b"\0")


class PduDecoder:
    """Incremental decoder. `role` is the side we are: a target decodes initiator opcodes."""

    def __init__(
        self,
        role: str = "target",
        max_data_segment: int = LOGIN_MAX_DATA,
        header_digest: bool = False,
        data_digest: bool = False,
    ) -> None:
        self.accepted = INITIATOR_OPCODES if role == "target" else TARGET_OPCODES
        self.max_data_segment = max_data_segment
        self.header_digest = header_digest
        self.data_digest = data_digest
        self.buffer = bytearray()
        self._pos = 0

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        self.buffer += data

    def buffered(self) -> int:
        return len(self.buffer) - self._pos

    def next_pdu(self) -> Pdu | None:
        buf = self.buffer
        pos = self._pos
        avail = len(buf) - pos
        if avail < BHS_LEN:
            self._compact()
            return None
        (b0, flags, b2, ahs_dsl, lun_raw, itt, w20, w24, w28, w32, w36, w40, w44) = BHS.unpack_from(
            buf, pos
        )
        ahs_len = (ahs_dsl >> 24) * 4
        dsl = ahs_dsl & 0xFFFFFF
        hd = 4 if self.header_digest else 0
        hlen = BHS_LEN + ahs_len
        if avail >= hlen + hd and hd:
            header_bytes = bytes(buf[pos : pos + hlen])
            (got,) = _CRC.unpack_from(buf, pos + hlen)
            if got != _crc(header_bytes):
                raise HeaderDigestError("header digest mismatch", header_bytes[:BHS_LEN])
        if ahs_len > MAX_AHS_BYTES:
            raise AhsTooLong(f"TotalAHSLength {ahs_len} bytes", bytes(buf[pos : pos + BHS_LEN]))
        if dsl > self.max_data_segment:
            raise DataSegmentTooLong(
                f"DataSegmentLength {dsl} > MaxRecvDataSegmentLength {self.max_data_segment}",
                bytes(buf[pos : pos + BHS_LEN]),
            )
        dd = 4 if (self.data_digest and dsl) else 0
        total = hlen + hd + dsl + pad_len(dsl) + dd
        if avail < total:
            self._compact()
            return None
        header = bytes(buf[pos : pos + BHS_LEN])
        ahs = bytes(buf[pos + BHS_LEN : pos + hlen]) if ahs_len else b""
        dstart = pos + hlen + hd
        data = bytes(buf[dstart : dstart + dsl]) if dsl else b""
        self._pos = pos + total
        opcode = b0 & 0x3F
        if opcode not in self.accepted:
            raise UnknownOpcode(f"opcode 0x{opcode:02x} not expected here", header)
        pdu = Pdu(
            opcode,
            bool(b0 & IMMEDIATE),
            flags,
            b2,
            lun_raw,
            itt,
            (w20, w24, w28, w32, w36, w40, w44),
            header,
            ahs,
            data,
        )
        if dd:
            padded = bytes(buf[dstart : dstart + dsl + pad_len(dsl)])
            (got,) = _CRC.unpack_from(buf, dstart + dsl + pad_len(dsl))
            if got != _crc(padded):
                raise DataDigestError("data digest mismatch", header, pdu)
        return pdu

    def _compact(self) -> None:
        if self._pos:
            del self.buffer[: self._pos]
            self._pos = 0


def decode_pdu(
    data: bytes,
    role: str = "target",
    max_data_segment: int = LOGIN_MAX_DATA,
    header_digest: bool = False,
    data_digest: bool = False,
) -> Pdu:
    """Decode exactly one PDU from `data` (for tests and fuzzing)."""
    decoder = PduDecoder(role, max_data_segment, header_digest, data_digest)
    decoder.feed(data)
    pdu = decoder.next_pdu()
    if pdu is None:
        raise TruncatedPdu(f"need more than {len(data)} bytes", bytes(data[:BHS_LEN]))
    return pdu


class PduEncoder:
    """Builds wire bytes. Returns a list of buffers for `transport.writelines` (no data copy)."""

    def __init__(self, header_digest: bool = False, data_digest: bool = False) -> None:
        self.header_digest = header_digest
        self.data_digest = data_digest

    def encode(
        self,
        b0: int,
        flags: int,
        b2: int,
        lun_raw: int,
        itt: int,
        w20: int = 0,
        w24: int = 0,
        w28: int = 0,
        w32: int = 0,
        w36: int = 0,
        w40: int = 0,
        w44: int = 0,
        data: bytes | bytearray | memoryview = b"",
        cdb: bytes | None = None,
    ) -> list[bytes | bytearray | memoryview]:
        dsl = len(data)
        header = BHS.pack(b0, flags, b2, dsl, lun_raw, itt, w20, w24, w28, w32, w36, w40, w44)
        if cdb is not None:
            header = header[:32] + cdb.ljust(16, b"\0")
        if self.header_digest:
            header += _CRC.pack(_crc(header))
        if not dsl:
            return [header]
        pad = _PADS[dsl & 3]
        if self.data_digest:
            if pad:
                digest = _crc(bytes(data) + pad)
            else:
                digest = _crc(data if isinstance(data, bytes) else bytes(data))
            return [header, data, pad + _CRC.pack(digest)]
        if pad:
            return [header, data, pad]
        return [header, data]


def negotiated_codec(
    decoder: PduDecoder, header_digest: bool, data_digest: bool, max_data_segment: int
) -> PduEncoder:
    """Leaving login, either side: the decoder and a new encoder use the negotiated digests."""
    decoder.header_digest = header_digest
    decoder.data_digest = data_digest
    decoder.max_data_segment = max_data_segment
    return PduEncoder(header_digest, data_digest)


# ---- data segments both sides read or write ----------------------------------------------
_SENSE_LEN = struct.Struct(">H")


def sense_segment(sense: bytes) -> bytes:
    """SCSI Response data segment (§11.4.7): SenseLength, then the sense data."""
    return _SENSE_LEN.pack(len(sense)) + sense


def parse_sense_segment(data: bytes) -> bytes:
    """The sense data of a SCSI Response's data segment (empty when it carries none)."""
    if len(data) < 2:
        return b""
    (n,) = _SENSE_LEN.unpack_from(data)
    return bytes(data[2 : 2 + n])


def reject_header_data(header: bytes) -> bytes:
    """Reject PDUs carry the offending BHS (48 bytes, zero padded if we had less)."""
    return bytes(header[:BHS_LEN]).ljust(BHS_LEN, b"\0")


def rejected_itt(data: bytes) -> int:
    """The ITT of the PDU a Reject carries back (NO_TAG if it is too short to tell)."""
    return int.from_bytes(data[16:20], "big") if len(data) >= 20 else NO_TAG


def extended_cdb(ahs: bytes) -> bytes:
    """AHS type 1 (extended CDB) carries CDB bytes beyond the first 16."""
    pos = 0
    while pos + 4 <= len(ahs):
        length = int.from_bytes(ahs[pos : pos + 2], "big")
        kind = ahs[pos + 2]
        if kind == 1:
            return bytes(ahs[pos + 4 : pos + 3 + length])
        pos += (3 + length + 3) & ~3
    return b""
