"""The server side of NBD newstyle-fixed, sans-I/O: bytes in, events out, bytes to send.

    conn = ServerConnection(catalog)           # catalog: name -> ExportInfo
    send(conn.greeting())
    conn.receive_data(chunk)                   # b"" means the peer closed
    while (event := conn.next_event()) is not NEED_DATA:
        ...                                    # Request -> run it, send encode_simple_reply(..)
    send(conn.data_to_send())                  # option replies the core produced itself

Option haggling needs nothing but the catalog, so the core answers every option on its own (the
replies collect in `data_to_send()`) and tells the caller only what changes its life:
`ExportChosen` (transmission starts), `SessionAborted` / `ExportRefused` (close), `StartTls`
(send the ACK, then upgrade the socket and call `tls_established()`), and, in transmission,
`Request` and `Disconnect`. Every phase change goes through `TRANSITIONS`; an event with no
entry there is a bug, and malformed input raises an `NbdProtocolError` subclass after which the
connection is CLOSED. Lengths are checked before any byte is buffered for them.

TLS (`tls=`): OFF refuses NBD_OPT_STARTTLS (ERR_UNSUP); ON offers it; REQUIRE answers every
option but STARTTLS and ABORT with ERR_TLS_REQD until TLS is up, and closes on
NBD_OPT_EXPORT_NAME (it cannot carry an error). Bytes that arrive after NBD_OPT_STARTTLS but
before the handshake are plaintext injected ahead of TLS: a protocol error, never an option.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum, StrEnum

from ophiura.nbd.constants import (
    CLIENT_FLAGS,
    EXPORT_NAME_PADDING,
    EXPORT_NAME_REPLY,
    GREETING,
    IHAVEOPT,
    INFO_BLOCK_SIZE,
    INFO_EXPORT,
    MAX_OPTION_DATA,
    MAX_OPTION_DISCARD,
    MAX_REQUEST,
    MAX_STRING,
    NBDMAGIC,
    OPTION_HEADER,
    OPTION_REPLY,
    OPTION_REPLY_MAGIC,
    REQUEST,
    REQUEST_MAGIC,
    SIMPLE_REPLY,
    SIMPLE_REPLY_MAGIC,
    ClientFlag,
    Command,
    HandshakeFlag,
    Info,
    Option,
    Reply,
    TransmissionFlag,
)

SERVER_HANDSHAKE_FLAGS = HandshakeFlag.FIXED_NEWSTYLE | HandshakeFlag.NO_ZEROES
_KNOWN_CLIENT_FLAGS = int(ClientFlag.C_FIXED_NEWSTYLE | ClientFlag.C_NO_ZEROES)
_U16 = 2
_U32 = 4
_TLS_REQD = "TLS required: send NBD_OPT_STARTTLS first"
TLS_REQUIRED = "TLS required"  # ExportRefused.reason for NBD_OPT_EXPORT_NAME before TLS


class NbdProtocolError(Exception):
    """The peer broke a mandatory rule; the only answer is a hard disconnect."""


class BadMagic(NbdProtocolError):
    """A header did not start with the magic number it must start with."""


class BadClientFlags(NbdProtocolError):
    """The client set a flag we do not know or did not advertise."""


class TooLarge(NbdProtocolError):
    """An option or a write payload exceeds what we are willing to buffer."""


class TooManyOptions(NbdProtocolError):
    """The client keeps haggling; bounded so that a connection cannot idle in options forever."""


class DataBeforeTls(NbdProtocolError):
    """Bytes followed NBD_OPT_STARTTLS before the handshake: plaintext injected ahead of TLS."""


class LocalProtocolError(Exception):
    """We (the caller of the core) asked for something the current phase does not allow."""


@dataclass(frozen=True)
class ExportInfo:
    """What a client learns about an export; `min_block` is the alignment we require."""

    name: str
    size: int
    flags: TransmissionFlag
    min_block: int = 1
    preferred_block: int = 4096
    max_block: int = MAX_REQUEST
    description: str = ""


class TlsMode(StrEnum):
    """The server's TLS policy (the spec's NOTLS, SELECTIVETLS without TLS-only exports,
    FORCEDTLS)."""

    OFF = "off"
    ON = "on"
    REQUIRE = "require"


class Phase(Enum):
    GREETING = "greeting"  # greeting sent, waiting for the client flags
    OPTIONS = "options"
    STARTING_TLS = "starting-tls"  # STARTTLS acknowledged; the I/O layer runs the handshake
    TRANSMISSION = "transmission"
    CLOSED = "closed"


class _NeedData:
    def __repr__(self) -> str:
        return "NEED_DATA"


NEED_DATA = _NeedData()


@dataclass(frozen=True)
class ClientFlagsReceived:
    flags: int


@dataclass(frozen=True)
class OptionAnswered:
    """An option was answered and haggling continues (for logs and tests)."""

    option: int
    reply: int


@dataclass(frozen=True)
class ExportChosen:
    """NBD_OPT_GO or NBD_OPT_EXPORT_NAME succeeded: transmission starts after data_to_send()."""

    export: ExportInfo
    option: int


@dataclass(frozen=True)
class ExportRefused:
    """NBD_OPT_EXPORT_NAME named an unknown export, or came before TLS when TLS is required;
    that option cannot error, so we close."""

    name: str
    reason: str = "no such export"


@dataclass(frozen=True)
class StartTls:
    """NBD_OPT_STARTTLS was acknowledged: send data_to_send() in plaintext, then run the TLS
    handshake (server side) and call `tls_established()`; on failure, close."""


@dataclass(frozen=True)
class TlsEstablished:
    """The I/O layer finished the TLS handshake: option haggling resumes, encrypted."""


@dataclass(frozen=True)
class SessionAborted:
    """NBD_OPT_ABORT was acknowledged; close after sending data_to_send()."""


@dataclass(slots=True)
class Request:
    """One transmission request; `data` is the payload of a WRITE, else None."""

    command: int
    flags: int
    handle: int
    offset: int
    length: int
    data: bytes | None = None


@dataclass(frozen=True)
class Disconnect:
    """NBD_CMD_DISC: finish what is in flight, then close."""

    handle: int


@dataclass(frozen=True)
class ConnectionClosed:
    """The peer closed its side (EOF)."""


Event = (
    ClientFlagsReceived
    | OptionAnswered
    | ExportChosen
    | ExportRefused
    | SessionAborted
    | StartTls
    | TlsEstablished
    | Request
    | Disconnect
    | ConnectionClosed
)

# Everything that moves a connection from one phase to another lives in this table.
TRANSITIONS: dict[Phase, dict[type, Phase]] = {
    Phase.GREETING: {ClientFlagsReceived: Phase.OPTIONS, ConnectionClosed: Phase.CLOSED},
    Phase.OPTIONS: {
        OptionAnswered: Phase.OPTIONS,
        StartTls: Phase.STARTING_TLS,
        ExportChosen: Phase.TRANSMISSION,
        ExportRefused: Phase.CLOSED,
        SessionAborted: Phase.CLOSED,
        ConnectionClosed: Phase.CLOSED,
    },
    Phase.STARTING_TLS: {TlsEstablished: Phase.OPTIONS, ConnectionClosed: Phase.CLOSED},
    Phase.TRANSMISSION: {
        Request: Phase.TRANSMISSION,
        Disconnect: Phase.CLOSED,
        ConnectionClosed: Phase.CLOSED,
    },
    Phase.CLOSED: {},
}


def encode_option_reply(option: int, reply: int, data: bytes = b"") -> bytes:
    return OPTION_REPLY.pack(OPTION_REPLY_MAGIC, option, reply, len(data)) + data


def encode_simple_reply(handle: int, error: int) -> bytes:
    """The 16-byte simple reply header; a successful READ is followed by its data."""
    return SIMPLE_REPLY.pack(SIMPLE_REPLY_MAGIC, error, handle)


def encode_info_replies(option: int, export: ExportInfo, requested: set[int]) -> bytes:
    """NBD_REP_INFO for EXPORT and BLOCK_SIZE always (the spec allows unrequested info; it
    tells the client our alignment), NAME and DESCRIPTION when asked for."""
    out = [
        encode_option_reply(
            option, Reply.INFO, INFO_EXPORT.pack(Info.EXPORT, export.size, export.flags)
        )
    ]
    if Info.NAME in requested:
        payload = Info.NAME.to_bytes(2, "big") + export.name.encode()
        out.append(encode_option_reply(option, Reply.INFO, payload))
    if Info.DESCRIPTION in requested and export.description:
        payload = Info.DESCRIPTION.to_bytes(2, "big") + export.description.encode()
        out.append(encode_option_reply(option, Reply.INFO, payload))
    sizes = INFO_BLOCK_SIZE.pack(
        Info.BLOCK_SIZE, export.min_block, export.preferred_block, export.max_block
    )
    out.append(encode_option_reply(option, Reply.INFO, sizes))
    return b"".join(out)


class _OptionRefused(Exception):
    def __init__(self, reply: Reply, message: str) -> None:
        super().__init__(message)
        self.reply = reply


def parse_info_request(data: bytes) -> tuple[str, list[int]]:
    """The body of NBD_OPT_INFO / NBD_OPT_GO: (export name, requested info types)."""
    if len(data) < _U32 + _U16:
        raise _OptionRefused(Reply.ERR_INVALID, "option too short")
    name_len = int.from_bytes(data[:4], "big")
    if name_len > len(data) - _U32 - _U16:
        raise _OptionRefused(Reply.ERR_INVALID, "export name length exceeds option length")
    if name_len > MAX_STRING:
        raise _OptionRefused(Reply.ERR_INVALID, "export name longer than 4096 bytes")
    pos = _U32 + name_len
    count = int.from_bytes(data[pos : pos + 2], "big")
    pos += _U16
    if len(data) != pos + _U16 * count:
        raise _OptionRefused(Reply.ERR_INVALID, "information request count mismatch")
    try:
        name = data[_U32 : _U32 + name_len].decode()
    except UnicodeDecodeError:
        raise _OptionRefused(Reply.ERR_INVALID, "export name is not UTF-8") from None
    infos = [int.from_bytes(data[p : p + 2], "big") for p in range(pos, len(data), _U16)]
    return name, infos


class ServerConnection:
    """One client connection as seen by the server, from greeting to close."""

    def __init__(
        self,
        catalog: Mapping[str, ExportInfo],
        *,
        default_export: str | None = None,
        max_request: int = MAX_REQUEST,
        max_options: int = 128,
        tls: TlsMode = TlsMode.OFF,
    ) -> None:
        self.catalog = catalog
        self.tls = tls
        self.tls_active = False
        self.default_export = default_export
        self.max_request = max_request
        self.max_options = max_options
        self.phase = Phase.GREETING
        self.client_flags = 0
        self.export: ExportInfo | None = None
        self._buf = bytearray()
        self._pos = 0
        self._eof = False
        self._out: list[bytes] = []
        self._options = 0
        self._skip = 0  # bytes of an oversized option still to discard
        self._skip_option = 0

    # ---- I/O edge ------------------------------------------------------------------------
    @staticmethod
    def greeting() -> bytes:
        return GREETING.pack(NBDMAGIC, IHAVEOPT, SERVER_HANDSHAKE_FLAGS)

    def receive_data(self, data: bytes | bytearray | memoryview) -> None:
        if not data:
            self._eof = True
        elif self.phase is not Phase.CLOSED:
            self._buf += data

    def data_to_send(self) -> bytes:
        out = b"".join(self._out)
        self._out.clear()
        return out

    @property
    def buffered(self) -> int:
        """Bytes received but not yet consumed (bounded by one request or one option)."""
        return len(self._buf) - self._pos

    def next_event(self) -> Event | _NeedData:
        if self.phase is Phase.CLOSED:
            return NEED_DATA
        try:
            if self.phase is Phase.TRANSMISSION:
                event = self._next_request()
            elif self.phase is Phase.OPTIONS:
                event = self._next_option()
            elif self.phase is Phase.STARTING_TLS:
                if self.buffered:
                    raise DataBeforeTls(f"{self.buffered} bytes after NBD_OPT_STARTTLS")
                event = NEED_DATA
            else:
                event = self._next_client_flags()
        except NbdProtocolError:
            self.phase = Phase.CLOSED
            self._buf.clear()
            self._pos = 0
            raise
        if event is NEED_DATA:
            if self._pos:
                del self._buf[: self._pos]
                self._pos = 0
            if self._eof:
                event = ConnectionClosed()
            else:
                return NEED_DATA
        self._transition(event)
        return event

    def tls_established(self) -> TlsEstablished:
        """The I/O layer's TLS handshake succeeded: haggling resumes over TLS."""
        if self.buffered:  # (the I/O layer pauses reading, so only a bug gets here)
            raise LocalProtocolError("plaintext buffered across the TLS upgrade")
        event = TlsEstablished()
        self._transition(event)
        self.tls_active = True
        return event

    def _transition(self, event: Event) -> None:
        try:
            self.phase = TRANSITIONS[self.phase][type(event)]
        except KeyError:
            raise LocalProtocolError(f"{type(event).__name__} in phase {self.phase}") from None

    def _take(self, n: int) -> bytes | None:
        if len(self._buf) - self._pos < n:
            return None
        chunk = bytes(self._buf[self._pos : self._pos + n])
        self._pos += n
        return chunk

    # ---- handshake and options -----------------------------------------------------------
    def _next_client_flags(self) -> Event | _NeedData:
        raw = self._take(CLIENT_FLAGS.size)
        if raw is None:
            return NEED_DATA
        (flags,) = CLIENT_FLAGS.unpack(raw)
        if flags & ~_KNOWN_CLIENT_FLAGS:
            raise BadClientFlags(f"unknown client flags {flags:#x}")
        self.client_flags = flags
        return ClientFlagsReceived(flags)

    def _next_option(self) -> Event | _NeedData:
        if self._skip:
            n = min(self._skip, len(self._buf) - self._pos)
            self._pos += n
            self._skip -= n
            if self._skip:
                return NEED_DATA
            if self._tls_required() and self._skip_option != Option.STARTTLS:
                return self._refuse(self._skip_option, Reply.ERR_TLS_REQD, _TLS_REQD)
            return self._refuse(self._skip_option, Reply.ERR_TOO_BIG, "option too large")
        if len(self._buf) - self._pos < OPTION_HEADER.size:
            return NEED_DATA
        magic, option, length = OPTION_HEADER.unpack_from(self._buf, self._pos)
        if magic != IHAVEOPT:
            raise BadMagic(f"option magic {magic:#x}")
        if length > MAX_OPTION_DATA:
            if option == Option.EXPORT_NAME or length > MAX_OPTION_DISCARD:
                raise TooLarge(f"option {option} of {length} bytes")
            self._count_option()
            self._pos += OPTION_HEADER.size
            self._skip, self._skip_option = length, option
            return self._next_option()
        if len(self._buf) - self._pos < OPTION_HEADER.size + length:
            return NEED_DATA
        self._pos += OPTION_HEADER.size
        data = self._take(length) or b""
        self._count_option()
        return self._answer(option, data)

    def _count_option(self) -> None:
        self._options += 1
        if self._options > self.max_options:
            raise TooManyOptions(f"more than {self.max_options} options")

    def _refuse(self, option: int, reply: Reply, message: str) -> OptionAnswered:
        self._out.append(encode_option_reply(option, reply, message.encode()))
        return OptionAnswered(option, reply)

    def _lookup(self, name: str) -> ExportInfo | None:
        if name == "" and self.default_export is not None:
            name = self.default_export
        return self.catalog.get(name)

    def _tls_required(self) -> bool:
        return self.tls is TlsMode.REQUIRE and not self.tls_active

    def _answer(self, option: int, data: bytes) -> Event:
        if option == Option.ABORT:
            self._out.append(encode_option_reply(option, Reply.ACK))
            return SessionAborted()
        if option == Option.STARTTLS:
            return self._starttls(data)
        if self._tls_required():
            if option == Option.EXPORT_NAME:
                return ExportRefused(data.decode(errors="replace"), TLS_REQUIRED)
            return self._refuse(option, Reply.ERR_TLS_REQD, _TLS_REQD)
        if option == Option.EXPORT_NAME:
            return self._export_name(data)
        if option == Option.LIST:
            if data:
                return self._refuse(option, Reply.ERR_INVALID, "NBD_OPT_LIST takes no data")
            for info in self.catalog.values():
                name = info.name.encode()
                payload = len(name).to_bytes(4, "big") + name + info.description.encode()
                self._out.append(encode_option_reply(option, Reply.SERVER, payload))
            self._out.append(encode_option_reply(option, Reply.ACK))
            return OptionAnswered(option, Reply.ACK)
        if option in (Option.INFO, Option.GO):
            return self._info_or_go(option, data)
        if option == Option.STRUCTURED_REPLY:
            return self._refuse(option, Reply.ERR_UNSUP, "structured replies not supported")
        return self._refuse(option, Reply.ERR_UNSUP, f"option {option} not supported")

    def _starttls(self, data: bytes) -> Event:
        option = Option.STARTTLS
        if self.tls is TlsMode.OFF:
            return self._refuse(option, Reply.ERR_UNSUP, "TLS is not configured on this server")
        if self.tls_active:
            return self._refuse(option, Reply.ERR_INVALID, "TLS is already up")
        if data:
            return self._refuse(option, Reply.ERR_INVALID, "NBD_OPT_STARTTLS takes no data")
        self._out.append(encode_option_reply(option, Reply.ACK))
        return StartTls()

    def _export_name(self, data: bytes) -> Event:
        try:
            name = data.decode()
        except UnicodeDecodeError:
            return ExportRefused(repr(data))
        export = self._lookup(name)
        if export is None:
            return ExportRefused(name)
        self.export = export
        reply = EXPORT_NAME_REPLY.pack(export.size, export.flags)
        if not self.client_flags & ClientFlag.C_NO_ZEROES:
            reply += bytes(EXPORT_NAME_PADDING)
        self._out.append(reply)
        return ExportChosen(export, Option.EXPORT_NAME)

    def _info_or_go(self, option: int, data: bytes) -> Event:
        try:
            name, infos = parse_info_request(data)
        except _OptionRefused as exc:
            return self._refuse(option, exc.reply, str(exc))
        export = self._lookup(name)
        if export is None:
            return self._refuse(option, Reply.ERR_UNKNOWN, f"no export named {name!r}")
        self._out.append(encode_info_replies(option, export, set(infos)))
        self._out.append(encode_option_reply(option, Reply.ACK))
        if option == Option.INFO:
            return OptionAnswered(option, Reply.ACK)
        self.export = export
        return ExportChosen(export, option)

    # ---- transmission --------------------------------------------------------------------
    def _next_request(self) -> Event | _NeedData:
        buf, pos = self._buf, self._pos
        if len(buf) - pos < REQUEST.size:
            return NEED_DATA
        magic, flags, command, handle, offset, length = REQUEST.unpack_from(buf, pos)
        if magic != REQUEST_MAGIC:
            raise BadMagic(f"request magic {magic:#x}")
        if command == Command.WRITE:
            if length > self.max_request:
                raise TooLarge(f"write of {length} bytes exceeds {self.max_request}")
            end = pos + REQUEST.size + length
            if len(buf) < end:
                return NEED_DATA
            data = bytes(buf[pos + REQUEST.size : end])
            self._pos = end
            return Request(command, flags, handle, offset, length, data)
        self._pos = pos + REQUEST.size
        if command == Command.DISC:
            return Disconnect(handle)
        return Request(command, flags, handle, offset, length)
