"""HE<->SE (and SE<->SE) wire protocol, sans-I/O: bytes in, messages out; messages in, bytes out.

Why this shape: the parser is the part an attacker or a bug on the other end reaches first, so it
is a pure object that hypothesis can feed random bytes, and the asyncio code only moves bytes.

Connection start (frames of `u32 length + body`, no MAC, at most 512 bytes):
  client -> HELLO(magic, version, name, nonce_c)
  server -> CHALLENGE(name, nonce_s)
  client -> PROOF(proof_c)              proof_c = HMAC(secret, "client-proof" nonces names)
  server -> SERVER_PROOF(proof_s)       proof_s = HMAC(secret, "server-proof" nonces names)
            then AUTH_OK as its first authenticated frame (or AUTH_FAIL, then it closes)
Both sides prove the secret; the client first, so the server can log every wrong secret; the
labels stop a proof being reflected back. The session key is
HMAC(secret, "session" nonces names) and each direction has its own key.

After that every frame is `u32 length + body + mac16`, where mac16 is the first 16 bytes of
HMAC-SHA256(direction key, u64 frame counter + length + body). The counter is implicit, so a
replayed, reordered, dropped or forged frame fails the MAC. Lengths are checked before anything
is buffered for them.

Body: `u8 type, u64 request id, fixed integers, u16-length strings, trailing bytes`; see
`docs/replication-protocol.md` for every message.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import struct
from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Any, ClassVar

VERSION = 1
MAGIC = b"OPHIURA1"
NONCE_BYTES = 32
MAC_BYTES = 16
MAX_HANDSHAKE_FRAME = 512
MAX_DATA = 8 << 20  # largest WRITE / DATA / CHUNK / LOG_RECORDS payload
MAX_FRAME = MAX_DATA + 64 * 1024
MAX_NAME = 255

_U32 = struct.Struct("<I")
_U16 = struct.Struct("<H")
_U64 = struct.Struct("<Q")


class ProtocolError(Exception):
    """The peer sent something this protocol does not allow; the connection must be closed."""


class FrameTooLarge(ProtocolError):
    """A frame announced a length above the limit (checked before buffering it)."""


class BadMac(ProtocolError):
    """A frame's MAC did not verify: forged, replayed, reordered or corrupted."""


class AuthenticationFailed(ProtocolError):
    """The peer does not know the shared secret (or rejected ours)."""


class MalformedMessage(ProtocolError):
    """A frame body that does not decode as the message its type byte names."""


# ---------------------------------------------------------------------------------------------
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


@_msg(3, "QsQ")
@dataclass(slots=True)
class SetEpoch(Message):
    req_id: int
    volume: str
    epoch: int


@_msg(4, "QsQQQb")
@dataclass(slots=True)
class Write(Message):
    req_id: int
    volume: str
    epoch: int
    seq: int
    offset: int
    data: bytes | bytearray | memoryview


@_msg(5, "QsQQQQB")
@dataclass(slots=True)
class Trim(Message):
    """TRIM (zero=0: the range may read back as zeros, space is released) or WRITE_ZEROES."""

    req_id: int
    volume: str
    epoch: int
    seq: int
    offset: int
    length: int
    zero: int = 0


@_msg(6, "QsQI")
@dataclass(slots=True)
class Read(Message):
    req_id: int
    volume: str
    offset: int
    length: int


@_msg(7, "QsQsssHQQ")
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


@_msg(65, "QQQQIQQsss")
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


@_msg(66, "QQ")
@dataclass(slots=True)
class StaleEpochMsg(Message):
    req_id: int
    current_epoch: int


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


# Packed log records inside LOG_RECORDS: seq, epoch, offset, length, kind, data_len, data.
_REC = struct.Struct("<QQQIBI")
KIND_WRITE, KIND_TRIM, KIND_ZERO = 0, 1, 2


@dataclass(slots=True)
class WireLogRecord:
    seq: int
    epoch: int
    offset: int
    length: int
    kind: int
    data: bytes


def pack_log_records(records: list[WireLogRecord]) -> bytes:
    parts: list[bytes] = []
    for r in records:
        parts.append(_REC.pack(r.seq, r.epoch, r.offset, r.length, r.kind, len(r.data)))
        parts.append(r.data)
    return b"".join(parts)


def unpack_log_records(buf: bytes | bytearray | memoryview, count: int) -> list[WireLogRecord]:
    view = memoryview(buf)
    out: list[WireLogRecord] = []
    pos = 0
    for _ in range(count):
        if pos + _REC.size > len(view):
            raise MalformedMessage("LOG_RECORDS truncated in a record header")
        seq, epoch, offset, length, kind, dlen = _REC.unpack_from(view, pos)
        pos += _REC.size
        if pos + dlen > len(view) or kind not in (KIND_WRITE, KIND_TRIM, KIND_ZERO):
            raise MalformedMessage("LOG_RECORDS record data truncated or bad kind")
        if kind == KIND_WRITE and dlen != length:
            raise MalformedMessage("LOG_RECORDS write record length mismatch")
        out.append(WireLogRecord(seq, epoch, offset, length, kind, bytes(view[pos : pos + dlen])))
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


# ---------------------------------------------------------------------------------------------
# Handshake messages (unauthenticated frames).

_HELLO, _CHALLENGE, _PROOF, _AUTH_FAIL, _SERVER_PROOF = 0xF1, 0xF2, 0xF3, 0xF4, 0xF5


@dataclass(slots=True, frozen=True)
class Authenticated:
    """Event: both sides proved the secret; `peer_name` is the name the peer gave."""

    peer_name: str


def _pack_str(s: str) -> bytes:
    raw = s.encode()
    if len(raw) > MAX_NAME:
        raise ValueError(f"name {s!r} longer than {MAX_NAME} bytes")
    return bytes([len(raw)]) + raw


def _unpack_str(view: memoryview, pos: int) -> tuple[str, int]:
    if pos >= len(view) or pos + 1 + view[pos] > len(view):
        raise AuthenticationFailed("handshake frame truncated")
    n = view[pos]
    try:
        return str(view[pos + 1 : pos + 1 + n], "utf-8"), pos + 1 + n
    except UnicodeDecodeError as exc:
        raise AuthenticationFailed("handshake name is not UTF-8") from exc


class Connection:
    """One end of one connection. Feed `receive_data`, write what `data_to_send`/`send` return.

    role "client" starts the handshake (HELLO); role "server" answers. Messages can be sent by
    the client right after PROOF (the server checks the proof before reading them) and by the
    server once the proof checked out.
    """

    def __init__(
        self,
        role: str,
        name: str,
        secret: bytes,
        *,
        max_frame: int = MAX_FRAME,
        random: Callable[[int], bytes] = os.urandom,
    ) -> None:
        if role not in ("client", "server"):
            raise ValueError(f"role must be client or server, not {role!r}")
        self.role = role
        self.name = name
        self.peer_name = ""
        self._secret = secret
        self._max_frame = max_frame
        self._nonce = random(NONCE_BYTES)
        self._peer_nonce = b""
        self._buf = bytearray()
        self._out: list[bytes] = []
        self._state = (
            "start"  # client: start/hello-sent/proof-sent/open; server: start/challenged/open
        )
        self._send_mac: Any = None
        self._recv_mac: Any = None
        self._send_ctr = 0
        self._recv_ctr = 0
        self.closed = False
        if role == "client":
            body = bytes([_HELLO, VERSION]) + MAGIC + _pack_str(name) + self._nonce
            self._out.append(_U32.pack(len(body)) + body)
            self._state = "hello-sent"

    @property
    def authenticated(self) -> bool:
        return self._state == "open"

    @property
    def can_send(self) -> bool:
        return self._send_mac is not None and not self.closed

    def data_to_send(self) -> list[bytes]:
        """Handshake bytes produced by the last `receive_data` (or the constructor)."""
        out, self._out = self._out, []
        return out

    # -- handshake ----------------------------------------------------------------------------

    def _transcript(self, label: bytes, client_nonce: bytes, server_nonce: bytes) -> bytes:
        client, server = (
            (self.name, self.peer_name)
            if self.role == "client"
            else (
                self.peer_name,
                self.name,
            )
        )
        msg = b"|".join(
            [b"ophiura-rep-v1", label, client_nonce, server_nonce, client.encode(), server.encode()]
        )
        return hmac.new(self._secret, msg, hashlib.sha256).digest()

    def _nonces(self) -> tuple[bytes, bytes]:
        if self.role == "client":
            return self._nonce, self._peer_nonce
        return self._peer_nonce, self._nonce

    def _derive_keys(self, send: bool, recv: bool) -> None:
        session = self._transcript(b"session", *self._nonces())
        c2s = hmac.new(session, b"client-to-server", hashlib.sha256).digest()
        s2c = hmac.new(session, b"server-to-client", hashlib.sha256).digest()
        send_key, recv_key = (c2s, s2c) if self.role == "client" else (s2c, c2s)
        if send:
            self._send_mac = hmac.new(send_key, digestmod=hashlib.sha256)
        if recv:
            self._recv_mac = hmac.new(recv_key, digestmod=hashlib.sha256)

    def _handshake_frame(self, body: memoryview) -> list[Any]:
        if not body:
            raise AuthenticationFailed("empty handshake frame")
        kind = body[0]
        if kind == _AUTH_FAIL:
            raise AuthenticationFailed(
                f"{self.peer_name or 'peer'} rejected our proof of the secret"
            )
        if self.role == "server" and self._state == "start" and kind == _HELLO:
            if len(body) < 2 + len(MAGIC) or body[1] != VERSION or bytes(body[2:10]) != MAGIC:
                raise AuthenticationFailed("HELLO with a wrong magic or protocol version")
            self.peer_name, pos = _unpack_str(body, 2 + len(MAGIC))
            if len(body) - pos != NONCE_BYTES:
                raise AuthenticationFailed("HELLO nonce has the wrong length")
            self._peer_nonce = bytes(body[pos:])
            reply = bytes([_CHALLENGE]) + _pack_str(self.name) + self._nonce
            self._out.append(_U32.pack(len(reply)) + reply)
            self._state = "challenged"
            return []
        if self.role == "client" and self._state == "hello-sent" and kind == _CHALLENGE:
            self.peer_name, pos = _unpack_str(body, 1)
            if len(body) - pos != NONCE_BYTES:
                raise AuthenticationFailed("CHALLENGE has the wrong length")
            self._peer_nonce = bytes(body[pos:])
            mine = self._transcript(b"client-proof", *self._nonces())
            self._out.append(_U32.pack(1 + len(mine)) + bytes([_PROOF]) + mine)
            self._derive_keys(send=True, recv=False)  # requests may follow the proof at once
            self._state = "proof-sent"
            return []
        if self.role == "server" and self._state == "challenged" and kind == _PROOF:
            # The client proves first, so the server always sees (and logs) a wrong secret.
            expected = self._transcript(b"client-proof", *self._nonces())
            if not hmac.compare_digest(bytes(body[1:]), expected):
                self._out.append(_U32.pack(1) + bytes([_AUTH_FAIL]))
                raise AuthenticationFailed(
                    f"client {self.peer_name!r} failed to prove the shared secret"
                )
            proof = self._transcript(b"server-proof", *self._nonces())
            self._out.append(_U32.pack(1 + len(proof)) + bytes([_SERVER_PROOF]) + proof)
            self._derive_keys(send=True, recv=True)
            self._state = "open"
            self._out.extend(self.send(AuthOk(0, self.name)))
            return [Authenticated(self.peer_name)]
        if self.role == "client" and self._state == "proof-sent" and kind == _SERVER_PROOF:
            expected = self._transcript(b"server-proof", *self._nonces())
            if not hmac.compare_digest(bytes(body[1:]), expected):
                raise AuthenticationFailed(
                    f"server {self.peer_name!r} failed to prove the shared secret"
                )
            self._derive_keys(send=False, recv=True)
            return []
        raise AuthenticationFailed(f"unexpected handshake frame type {kind} in state {self._state}")

    # -- frames ------------------------------------------------------------------------------

    def _mac(self, base: Any, counter: int, parts: tuple[Any, ...]) -> bytes:
        h = base.copy()
        h.update(_U64.pack(counter))
        for part in parts:
            h.update(part)
        return h.digest()[:MAC_BYTES]

    def send(self, msg: Message) -> list[Any]:
        """The buffers of one authenticated frame, in order; the data tail is not copied."""
        if self._send_mac is None:
            raise ProtocolError("cannot send messages before the handshake")
        head, tail = encode_body(msg)
        n = len(head) + (len(tail) if tail is not None else 0)
        if n > self._max_frame:
            raise ValueError(f"{type(msg).__name__} of {n} bytes exceeds the frame limit")
        prefix = _U32.pack(n) + head
        parts = (prefix,) if tail is None or not len(tail) else (prefix, tail)
        mac = self._mac(self._send_mac, self._send_ctr, parts)
        self._send_ctr += 1
        return [*parts, mac]

    def receive_data(self, data: bytes | bytearray | memoryview) -> list[Any]:
        """Messages (and the Authenticated event) found in `data` plus what was buffered.

        Raises a ProtocolError subclass on anything invalid; the caller must then close.
        """
        if self.closed:
            raise ProtocolError("connection already failed")
        self._buf += data
        events: list[Any] = []
        buf = self._buf
        pos = 0
        try:
            while len(buf) - pos >= 4:
                (length,) = _U32.unpack_from(buf, pos)
                if self._recv_mac is None:
                    if length > MAX_HANDSHAKE_FRAME:
                        raise FrameTooLarge(f"handshake frame of {length} bytes")
                    if len(buf) - pos < 4 + length:
                        break
                    body = memoryview(buf)[pos + 4 : pos + 4 + length]
                    try:
                        events += self._handshake_frame(body)
                    finally:
                        body.release()
                    pos += 4 + length
                    continue
                if length > self._max_frame:
                    raise FrameTooLarge(f"frame of {length} bytes (limit {self._max_frame})")
                end = pos + 4 + length
                if len(buf) < end + MAC_BYTES:
                    break
                view = memoryview(buf)
                try:
                    mac = self._mac(self._recv_mac, self._recv_ctr, (view[pos:end],))
                    if not hmac.compare_digest(mac, view[end : end + MAC_BYTES]):
                        raise BadMac(
                            f"frame {self._recv_ctr} from {self.peer_name or 'peer'} failed its MAC"
                        )
                    self._recv_ctr += 1
                    msg = decode_body(view[pos + 4 : end])
                finally:
                    view.release()
                pos = end + MAC_BYTES
                if (
                    isinstance(msg, AuthOk)
                    and self.role == "client"
                    and self._state == "proof-sent"
                ):
                    self._state = "open"
                    events.append(Authenticated(self.peer_name))
                elif self._state != "open":
                    raise ProtocolError(f"{type(msg).__name__} before authentication finished")
                else:
                    events.append(msg)
        except ProtocolError:
            self.closed = True
            raise
        finally:
            if pos:
                try:
                    del buf[:pos]
                except BufferError:  # a traceback still holds a view: copy instead
                    self._buf = buf[pos:]
        return events
