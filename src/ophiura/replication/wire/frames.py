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
from dataclasses import dataclass
from typing import Any

from ophiura.replication.wire.messages import (
    AuthOk,
    Message,
    ProtocolError,
    decode_body,
    encode_body,
)

VERSION = 3  # 3: ballots (epoch, he_id) and bases; 2: log_first_seq. Other versions are refused
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


class FrameTooLarge(ProtocolError):
    """A frame announced a length above the limit (checked before buffering it)."""


class BadMac(ProtocolError):
    """A frame's MAC did not verify: forged, replayed, reordered or corrupted."""


class AuthenticationFailed(ProtocolError):
    """The peer does not know the shared secret (or rejected ours)."""


# ---------------------------------------------------------------------------------------------
# Handshake messages (unauthenticated frames).

_HELLO, _CHALLENGE, _PROOF, _AUTH_FAIL, _SERVER_PROOF = 0xF1, 0xF2, 0xF3, 0xF4, 0xF5


@dataclass(slots=True, frozen=True)
class Authenticated:
    """Event: both sides proved the secret; `peer_name` is the name the peer gave."""

    peer_name: str


def _keyed(key: bytes) -> Any:
    """An HMAC-SHA256 state to `copy()` per frame: the C object under `hmac.HMAC` when there is
    one (same MAC, without the Python wrapper's layers on every copy/update/digest)."""
    h = hmac.new(key, digestmod=hashlib.sha256)
    inner = getattr(h, "_hmac", None)
    return inner if inner is not None and hasattr(inner, "copy") else h


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
            self._send_mac = _keyed(send_key)
        if recv:
            self._recv_mac = _keyed(recv_key)

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
        h = self._send_mac.copy()
        h.update(_U64.pack(self._send_ctr) + prefix)  # one update: the same bytes MAC'd
        self._send_ctr += 1
        if tail is None or not len(tail):
            return [prefix, h.digest()[:MAC_BYTES]]
        h.update(tail)
        return [prefix, tail, h.digest()[:MAC_BYTES]]

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
