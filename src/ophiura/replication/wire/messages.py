"""HE<->SE protocol messages and their body codec (the framing is in `protocol`).

A message is a slotted dataclass whose wire layout is declared next to it (`_msg(code, layout)`):
`u8 type, u64 request id, fixed integers, u16-length strings, trailing bytes`. One table drives
both encoding and decoding, so a new message cannot have an encoder and decoder that disagree,
and hypothesis can check the decoder against every layout at once.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Any, ClassVar


class ProtocolError(Exception):
    """The peer sent something this protocol does not allow; the connection must be closed."""


class MalformedMessage(ProtocolError):
    """A frame body that does not decode as the message its type byte names."""


_U16 = struct.Struct("<H")
_U32 = struct.Struct("<I")

# Messages. Field kinds: "Q" u64, "q" i64, "I" u32, "H" u16, "B" u8, "s" string, "b" tail bytes.


@dataclass(slots=True)
class Message:
    """Base class; `CODE` is the type byte, `FIELDS` the wire layout of the other fields."""

    CODE: ClassVar[int] = 0
    FIELDS: ClassVar[tuple[tuple[str, str], ...]] = ()


def _msg(code: int, layout: str) -> Callable[[type[Any]], type[Any]]:
    """Register a message class; `layout` lists a wire kind per dataclass field, in order."""

    def wrap(cls: type[Any]) -> type[Any]:
        names = [f.name for f in fields(cls)]
        if len(names) != len(layout):
            raise TypeError(f"{cls.__name__}: layout {layout!r} does not match fields {names}")
        cls.CODE = code
        cls.FIELDS = tuple(zip(names, layout, strict=True))
        _register(cls)
        return cls

    return wrap


@dataclass(slots=True)
class _Spec:
    cls: type[Any]
    fixed: struct.Struct  # type byte + integers
    ints: tuple[str, ...]
    strs: tuple[str, ...]
    tail: str | None
    order: tuple[str, ...]  # dataclass field order, to rebuild the object


_BY_CODE: dict[int, _Spec] = {}
_BY_CLASS: dict[type[Any], _Spec] = {}


def _register(cls: type[Any]) -> None:
    ints = tuple(n for n, k in cls.FIELDS if k in "QqIHB")
    strs = tuple(n for n, k in cls.FIELDS if k == "s")
    tails = [n for n, k in cls.FIELDS if k == "b"]
    fmt = "<B" + "".join(k for _, k in cls.FIELDS if k in "QqIHB")
    if len(tails) > 1 or cls.CODE in _BY_CODE:
        raise TypeError(f"bad message definition {cls.__name__}")
    spec = _Spec(
        cls,
        struct.Struct(fmt),
        ints,
        strs,
        tails[0] if tails else None,
        tuple(n for n, _ in cls.FIELDS),
    )
    _BY_CODE[cls.CODE] = spec
    _BY_CLASS[cls] = spec


# Requests (client -> server). Every request carries `req_id`, echoed by its response.
@_msg(1, "Qs")
@dataclass(slots=True)
class Ping(Message):
    req_id: int
    note: str = ""


@_msg(2, "QsQI")
@dataclass(slots=True)
class OpenVolume(Message):
    req_id: int
    volume: str
    size: int
    block_size: int = 512


@_msg(3, "QsQQQ")
@dataclass(slots=True)
class SetEpoch(Message):
    """Claim (base_seq = NO_BASE) or establish (base_seq = the owner's first seq - 1) a ballot.

    The ballot is `(epoch, he_id)`, ordered lexicographically: an SE adopts only a strictly
    greater one, durably, before it answers; establishing the adopted ballot with its base
    truncates what the SE holds above the base (see docs/replication-protocol.md)."""

    req_id: int
    volume: str
    epoch: int
    he_id: int = 0
    base_seq: int = (1 << 64) - 1  # NO_BASE


@_msg(4, "QsQQQQQb")
@dataclass(slots=True)
class Write(Message):
    """Applied only under the SE's current ballot `(epoch, he_id)` whose base is `base_seq`."""

    req_id: int
    volume: str
    epoch: int
    he_id: int
    base_seq: int
    seq: int
    offset: int
    data: bytes | bytearray | memoryview


@_msg(5, "QsQQQQQQB")
@dataclass(slots=True)
class Trim(Message):
    """TRIM (zero=0: the range may read back as zeros, space is released) or WRITE_ZEROES."""

    req_id: int
    volume: str
    epoch: int
    he_id: int
    base_seq: int
    seq: int
    offset: int
    length: int
    zero: int = 0


@_msg(6, "QsQIQQ")
@dataclass(slots=True)
class Read(Message):
    """With a ballot (epoch > 0) the SE serves it only to its current owner: a fenced HE's
    reads fail at once. epoch 0: a diagnostic read (status tools), no ballot check."""

    req_id: int
    volume: str
    offset: int
    length: int
    epoch: int = 0
    he_id: int = 0


@_msg(7, "QsQsssHQQQQQ")
@dataclass(slots=True)
class Recover(Message):
    """Tell an SE to catch up from a peer: kind is "replay" (peer's log) or "full" (copy)."""

    req_id: int
    volume: str
    epoch: int
    kind: str
    peer_name: str
    peer_host: str
    peer_port: int
    upto_seq: int
    rate: int = 0  # bytes/s; 0 = the SE's configured default
    he_id: int = 0
    upto_epoch: int = 0  # the ballot that wrote upto_seq in the owner's history (0, 0: unknown)
    upto_he_id: int = 0


@_msg(8, "Qs")
@dataclass(slots=True)
class Status(Message):
    req_id: int
    volume: str


@_msg(9, "Q")
@dataclass(slots=True)
class ListVolumes(Message):
    req_id: int


@_msg(10, "QsQQI")
@dataclass(slots=True)
class LogRead(Message):
    """Peer replay source: records from `from_seq` on, at most `max_bytes` of data."""

    req_id: int
    volume: str
    from_seq: int
    upto_seq: int
    max_bytes: int


@_msg(11, "QsQI")
@dataclass(slots=True)
class ChunkRead(Message):
    req_id: int
    volume: str
    offset: int
    length: int


@_msg(12, "QsQ")
@dataclass(slots=True)
class Resize(Message):
    req_id: int
    volume: str
    size: int


@_msg(13, "Qs")
@dataclass(slots=True)
class Delete(Message):
    req_id: int
    volume: str


# Responses (server -> client).
@_msg(64, "Qs")
@dataclass(slots=True)
class Pong(Message):
    req_id: int
    note: str = ""


@_msg(65, "QQQQIQQsssQQQQQ")
@dataclass(slots=True)
class VolumeStateMsg(Message):
    req_id: int
    epoch: int
    applied_seq: int
    size: int
    block_size: int
    recovery_done: int
    recovery_total: int
    volume: str
    state: str
    detail: str = ""
    # Oldest seq a peer can replay from this SE's log (LOG_READ from any s >= it works); lets
    # the HE choose replay or full from facts. 0 = not reported. Added in protocol version 2.
    log_first_seq: int = 0
    # The SE's ballot is (epoch, he_id); base_seq is its base once established, else NO_BASE.
    he_id: int = 0
    base_seq: int = 0
    # The ballot that wrote the write at applied_seq (0, 0: unknown): a new owner compares it
    # with its own history to find a divergent tail below its base.
    top_epoch: int = 0
    top_he_id: int = 0


@_msg(66, "QQQ")
@dataclass(slots=True)
class StaleEpochMsg(Message):
    """The request's ballot is older than the SE's current `(current_epoch, current_he_id)`."""

    req_id: int
    current_epoch: int
    current_he_id: int = 0


@_msg(67, "QQ")
@dataclass(slots=True)
class Ack(Message):
    req_id: int
    seq: int


@_msg(68, "QQb")
@dataclass(slots=True)
class Data(Message):
    req_id: int
    applied_seq: int
    data: bytes | bytearray | memoryview


@_msg(69, "QQQQb")
@dataclass(slots=True)
class LogRecords(Message):
    """`records` is a packed list (see `pack_log_records`); `remaining` is a byte estimate."""

    req_id: int
    applied_seq: int
    count: int
    remaining: int
    records: bytes | bytearray | memoryview


@_msg(70, "QQ")
@dataclass(slots=True)
class LogGone(Message):
    req_id: int
    oldest_seq: int  # the oldest sequence the peer's log still holds (0: log empty)


@_msg(71, "QQb")
@dataclass(slots=True)
class Chunk(Message):
    req_id: int
    applied_seq: int
    data: bytes | bytearray | memoryview


@_msg(72, "Qb")
@dataclass(slots=True)
class VolumeList(Message):
    """`entries`: u32-length-prefixed VolumeStateMsg bodies."""

    req_id: int
    entries: bytes | bytearray | memoryview


@_msg(73, "Q")
@dataclass(slots=True)
class Ok(Message):
    req_id: int


@_msg(74, "QHs")
@dataclass(slots=True)
class Error(Message):
    req_id: int
    code: int
    message: str


@_msg(75, "Qs")
@dataclass(slots=True)
class AuthOk(Message):
    req_id: int
    server_name: str


class ErrorCode:
    """ERROR codes; the client maps each to a typed exception."""

    INTERNAL = 1
    NO_VOLUME = 2
    BAD_REQUEST = 3
    OUT_OF_RANGE = 4
    RECOVERING = 5  # a recovering SE serves no reads / is no recovery source
    BUSY = 6  # reorder buffer full: the HE must recover this SE
    IO_ERROR = 7
    VOLUME_FAILED = 8
    EXISTS = 9
    NOT_OWNER = 10  # a newer ballot not adopted here yet, or another base: attach again
    NOT_HELD = 11  # a resent seq this SE does not hold (a recovery must bring it)


# SetEpoch.base_seq / VolumeStateMsg.base_seq: the ballot is claimed, its base not yet fixed.
NO_BASE = (1 << 64) - 1


# Packed log records inside LOG_RECORDS: seq, epoch, he_id, offset, length, kind, data_len, data.
_REC = struct.Struct("<QQQQIBI")
KIND_WRITE, KIND_TRIM, KIND_ZERO = 0, 1, 2


@dataclass(slots=True)
class WireLogRecord:
    seq: int
    epoch: int
    offset: int
    length: int
    kind: int
    data: bytes
    he_id: int = 0  # with epoch: the ballot that wrote it


def pack_log_records(records: list[WireLogRecord]) -> bytes:
    parts: list[bytes] = []
    for r in records:
        parts.append(_REC.pack(r.seq, r.epoch, r.he_id, r.offset, r.length, r.kind, len(r.data)))
        parts.append(r.data)
    return b"".join(parts)


def unpack_log_records(buf: bytes | bytearray | memoryview, count: int) -> list[WireLogRecord]:
    view = memoryview(buf)
    out: list[WireLogRecord] = []
    pos = 0
    for _ in range(count):
        if pos + _REC.size > len(view):
            raise MalformedMessage("LOG_RECORDS truncated in a record header")
        seq, epoch, he_id, offset, length, kind, dlen = _REC.unpack_from(view, pos)
        pos += _REC.size
        if pos + dlen > len(view) or kind not in (KIND_WRITE, KIND_TRIM, KIND_ZERO):
            raise MalformedMessage("LOG_RECORDS record data truncated or bad kind")
        if kind == KIND_WRITE and dlen != length:
            raise MalformedMessage("LOG_RECORDS write record length mismatch")
        data = bytes(view[pos : pos + dlen])
        out.append(WireLogRecord(seq, epoch, offset, length, kind, data, he_id))
        pos += dlen
    if pos != len(view):
        raise MalformedMessage("LOG_RECORDS has trailing bytes")
    return out


# ---------------------------------------------------------------------------------------------
# Body codec.


def encode_body(msg: Message) -> tuple[bytes, bytes | bytearray | memoryview | None]:
    """(head, tail): the tail (write data) is returned as is so it is never copied."""
    spec = _BY_CLASS.get(type(msg))
    if spec is None:
        raise TypeError(f"{type(msg).__name__} is not a protocol message")
    try:
        head = spec.fixed.pack(spec.cls.CODE, *[getattr(msg, n) for n in spec.ints])
    except struct.error as exc:
        raise ValueError(f"{type(msg).__name__}: field out of range: {exc}") from exc
    if spec.strs:
        parts = [head]
        for name in spec.strs:
            raw = getattr(msg, name).encode()
            if len(raw) > 0xFFFF:
                raise ValueError(f"{type(msg).__name__}.{name} longer than 65535 bytes")
            parts.append(_U16.pack(len(raw)))
            parts.append(raw)
        head = b"".join(parts)
    return head, (getattr(msg, spec.tail) if spec.tail else None)


def decode_body(body: bytes | bytearray | memoryview) -> Message:
    """The message in one frame body; MalformedMessage for anything else."""
    view = memoryview(body)
    if not view:
        raise MalformedMessage("empty frame body")
    spec = _BY_CODE.get(view[0])
    if spec is None:
        raise MalformedMessage(f"unknown message type {view[0]}")
    if len(view) < spec.fixed.size:
        raise MalformedMessage(f"{spec.cls.__name__} truncated ({len(view)} bytes)")
    values: dict[str, Any] = dict(zip(spec.ints, spec.fixed.unpack_from(view, 0)[1:], strict=True))
    pos = spec.fixed.size
    for name in spec.strs:
        if pos + 2 > len(view):
            raise MalformedMessage(f"{spec.cls.__name__}.{name} truncated")
        (n,) = _U16.unpack_from(view, pos)
        pos += 2
        if pos + n > len(view):
            raise MalformedMessage(f"{spec.cls.__name__}.{name} truncated")
        try:
            values[name] = str(view[pos : pos + n], "utf-8")
        except UnicodeDecodeError as exc:
            raise MalformedMessage(f"{spec.cls.__name__}.{name} is not UTF-8") from exc
        pos += n
    if spec.tail is not None:
        values[spec.tail] = bytes(view[pos:])
    elif pos != len(view):
        raise MalformedMessage(f"{spec.cls.__name__} has {len(view) - pos} trailing bytes")
    return spec.cls(*[values[n] for n in spec.order])


def encode_volume_list(states: list[VolumeStateMsg]) -> bytes:
    out: list[bytes] = []
    for st in states:
        head, _ = encode_body(st)
        out += [_U32.pack(len(head)), head]
    return b"".join(out)


def decode_volume_list(buf: bytes | bytearray | memoryview) -> list[VolumeStateMsg]:
    view = memoryview(buf)
    pos, out = 0, []
    while pos < len(view):
        if pos + 4 > len(view):
            raise MalformedMessage("VOLUME_LIST truncated")
        (n,) = _U32.unpack_from(view, pos)
        pos += 4
        if pos + n > len(view):
            raise MalformedMessage("VOLUME_LIST entry truncated")
        msg = decode_body(view[pos : pos + n])
        if not isinstance(msg, VolumeStateMsg):
            raise MalformedMessage("VOLUME_LIST entry is not a volume state")
        out.append(msg)
        pos += n
    return out
