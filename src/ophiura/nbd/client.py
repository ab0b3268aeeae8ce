"""A small asyncio NBD client (fixed newstyle, NBD_OPT_STARTTLS, NBD_OPT_GO, simple replies).

    client = await NbdClient.connect("127.0.0.1", port, "disk")
    client = await NbdClient.connect(host, port, "disk", tls=client_context(Path(certs)))
    await client.write(0, data, fua=True); assert await client.read(0, len(data)) == data
    await client.disconnect()

For tests and for the cluster (disk watchdog, health checks). Requests may be issued
concurrently; one reader task matches replies to requests by handle, so replies may arrive in
any order. In-flight requests are bounded by a semaphore. Unlike libnbd, the client does not
refuse a write to a read-only export itself: the server's answer (EPERM) is what tests check.

With `tls=` (an `ssl.SSLContext`, see `tls.client_context`) NBD_OPT_STARTTLS is the first option
and a refusal ends the connection: a client that asked for TLS never falls back to plaintext.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import ssl
from dataclasses import dataclass

from ophiura.nbd.constants import (
    CLIENT_FLAGS,
    GREETING,
    IHAVEOPT,
    INFO_BLOCK_SIZE,
    INFO_EXPORT,
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
    CommandFlag,
    Errno,
    HandshakeFlag,
    Info,
    Option,
    Reply,
    TransmissionFlag,
)

MAX_REPLY_DATA = 1 << 20  # option replies larger than this are a broken server


class NbdClientError(Exception):
    """The server broke the protocol or the connection failed."""


class NbdOptionError(NbdClientError):
    """The server refused an option (NBD_REP_ERR_*): `reply` says which error."""

    def __init__(self, option: int, reply: int, message: str) -> None:
        name = Reply(reply).name if reply in Reply._value2member_map_ else hex(reply)
        super().__init__(f"option {option}: {name} {message}".rstrip())
        self.option = option
        self.reply = reply


class NbdError(NbdClientError):
    """A request failed; `errno` is the wire error (Errno.EPERM, Errno.EIO, ...)."""

    def __init__(self, command: int, errno: int) -> None:
        name = Errno(errno).name if errno in Errno._value2member_map_ else str(errno)
        super().__init__(
            f"{Command(command).name if command in Command._value2member_map_ else command}: {name}"
        )
        self.command = command
        self.errno = errno


@dataclass
class ExportDetails:
    """What NBD_OPT_GO / NBD_OPT_INFO told us."""

    name: str
    size: int = 0
    flags: int = 0
    description: str = ""
    min_block: int = 1
    preferred_block: int = 4096
    max_block: int = 32 * 1024 * 1024


async def _handshake(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> tuple[int, int]:
    """Read the greeting, send our flags; returns (server flags, our flags)."""
    magic, opt_magic, flags = GREETING.unpack(await reader.readexactly(GREETING.size))
    if magic != NBDMAGIC or opt_magic != IHAVEOPT:
        raise NbdClientError("not a newstyle NBD server")
    if not flags & HandshakeFlag.FIXED_NEWSTYLE:
        raise NbdClientError("server does not speak fixed newstyle")
    ours = ClientFlag.C_FIXED_NEWSTYLE
    if flags & HandshakeFlag.NO_ZEROES:
        ours |= ClientFlag.C_NO_ZEROES
    writer.write(CLIENT_FLAGS.pack(ours))
    return flags, int(ours)


async def _option(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, option: int, data: bytes = b""
) -> list[tuple[int, bytes]]:
    """Send one option; collect its replies up to the final ACK (errors raise)."""
    writer.write(OPTION_HEADER.pack(IHAVEOPT, option, len(data)) + data)
    await writer.drain()
    replies: list[tuple[int, bytes]] = []
    for _ in range(100_000):
        magic, echoed, reply, length = OPTION_REPLY.unpack(
            await reader.readexactly(OPTION_REPLY.size)
        )
        if magic != OPTION_REPLY_MAGIC or echoed != option or length > MAX_REPLY_DATA:
            raise NbdClientError(f"bad option reply (magic {magic:#x}, option {echoed})")
        payload = await reader.readexactly(length) if length else b""
        if reply & (1 << 31):
            raise NbdOptionError(option, reply, payload.decode(errors="replace"))
        if reply == Reply.ACK:
            return replies
        replies.append((reply, payload))
    raise NbdClientError("too many option replies")


def _go_data(export: str) -> bytes:
    name = export.encode()
    wanted = (Info.NAME, Info.DESCRIPTION, Info.BLOCK_SIZE)
    return (
        len(name).to_bytes(4, "big")
        + name
        + len(wanted).to_bytes(2, "big")
        + b"".join(int(i).to_bytes(2, "big") for i in wanted)
    )


def _details(export: str, replies: list[tuple[int, bytes]]) -> ExportDetails:
    details = ExportDetails(export)
    for reply, payload in replies:
        if reply != Reply.INFO or len(payload) < 2:
            continue
        kind = int.from_bytes(payload[:2], "big")
        if kind == Info.EXPORT and len(payload) == INFO_EXPORT.size:
            _, details.size, details.flags = INFO_EXPORT.unpack(payload)
        elif kind == Info.NAME:
            details.name = payload[2:].decode(errors="replace")
        elif kind == Info.DESCRIPTION:
            details.description = payload[2:].decode(errors="replace")
        elif kind == Info.BLOCK_SIZE and len(payload) == INFO_BLOCK_SIZE.size:
            _, details.min_block, details.preferred_block, details.max_block = (
                INFO_BLOCK_SIZE.unpack(payload)
            )
    return details


async def _open(
    host: str,
    port: int,
    timeout: float,
    tls: ssl.SSLContext | None,
    server_hostname: str | None,
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """Connect, do the handshake and, with `tls`, NBD_OPT_STARTTLS and the TLS handshake."""
    reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
    try:
        async with asyncio.timeout(timeout):
            await _handshake(reader, writer)
            if tls is not None:
                await _option(reader, writer, Option.STARTTLS)
                try:
                    await writer.start_tls(tls, server_hostname=server_hostname or host)
                except ssl.SSLError as exc:
                    raise NbdClientError(f"TLS handshake failed: {exc.reason or exc}") from exc
                except (ConnectionError, asyncio.IncompleteReadError) as exc:
                    raise NbdClientError(f"TLS handshake failed: {exc}") from exc
    except BaseException:
        writer.close()
        raise
    return reader, writer


class NbdClient:
    """One connection in the transmission phase."""

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        details: ExportDetails,
        max_in_flight: int,
    ) -> None:
        self.reader = reader
        self.writer = writer
        self.details = details
        self._handles = itertools.count(1)
        self._pending: dict[int, tuple[int, int, asyncio.Future[bytes]]] = {}
        self._slots = asyncio.Semaphore(max_in_flight)
        self._drain_lock = asyncio.Lock()
        self._failure: BaseException | None = None
        self._reader_task = asyncio.get_running_loop().create_task(self._read_replies())

    @property
    def size(self) -> int:
        return self.details.size

    @property
    def flags(self) -> TransmissionFlag:
        return TransmissionFlag(self.details.flags)

    @property
    def read_only(self) -> bool:
        return bool(self.details.flags & TransmissionFlag.READ_ONLY)

    @classmethod
    async def connect(
        cls,
        host: str,
        port: int,
        export: str = "",
        *,
        timeout: float = 10.0,
        max_in_flight: int = 64,
        tls: ssl.SSLContext | None = None,
        server_hostname: str | None = None,
    ) -> NbdClient:
        """`tls`: upgrade with NBD_OPT_STARTTLS first; the server's certificate must match
        `server_hostname` (default: `host`)."""
        reader, writer = await _open(host, port, timeout, tls, server_hostname)
        try:
            async with asyncio.timeout(timeout):
                replies = await _option(reader, writer, Option.GO, _go_data(export))
        except ssl.SSLError as exc:  # TLS 1.3: a refused client certificate shows up here
            writer.close()
            raise NbdClientError(f"TLS: the server refused us: {exc.reason or exc}") from exc
        except asyncio.IncompleteReadError as exc:
            writer.close()
            if tls is None:
                raise
            # TLS 1.3 lets the client finish its handshake before the server checks the client
            # certificate; a server that refuses it just closes (asyncio sends no alert)
            raise NbdClientError(
                "TLS: the server closed the connection after the handshake "
                "(no client certificate, or one it does not trust?)"
            ) from exc
        except BaseException:
            writer.close()
            raise
        return cls(reader, writer, _details(export, replies), max_in_flight)

    @classmethod
    async def connect_uri(
        cls, uri: str, *, timeout: float = 10.0, max_in_flight: int = 64
    ) -> NbdClient:
        """Connect to `nbd://HOST[:PORT]/EXPORT` or `nbds://...[?tls-certificates=DIR]`
        (libnbd's spelling, see `uri.py`); nbds:// verifies the server against DIR's
        ca-cert.pem (else the system's CAs) and presents DIR's client certificate if any."""
        from ophiura.nbd.tls import client_context
        from ophiura.nbd.uri import parse_nbd_uri

        where = parse_nbd_uri(uri)
        tls = client_context(where.certificates) if where.tls else None
        return await cls.connect(
            where.host, where.port, where.export,
            timeout=timeout, max_in_flight=max_in_flight, tls=tls,
        )  # fmt: skip

    @staticmethod
    async def list_exports(
        host: str,
        port: int,
        *,
        timeout: float = 10.0,
        tls: ssl.SSLContext | None = None,
        server_hostname: str | None = None,
    ) -> list[str]:
        """NBD_OPT_LIST then NBD_OPT_ABORT: the export names the server offers."""
        reader, writer = await _open(host, port, timeout, tls, server_hostname)
        try:
            async with asyncio.timeout(timeout):
                replies = await _option(reader, writer, Option.LIST)
                with contextlib.suppress(NbdClientError, asyncio.IncompleteReadError):
                    await _option(reader, writer, Option.ABORT)
        finally:
            writer.close()
        names = []
        for reply, payload in replies:
            if reply == Reply.SERVER and len(payload) >= 4:
                n = int.from_bytes(payload[:4], "big")
                names.append(payload[4 : 4 + n].decode(errors="replace"))
        return names

    # ---- requests ------------------------------------------------------------------------
    async def request(
        self,
        command: int,
        offset: int = 0,
        length: int = 0,
        flags: int = 0,
        data: bytes | bytearray | memoryview | None = None,
    ) -> bytes:
        """Send any request (tests use it for unknown commands and flags); READ returns data."""
        if self._failure is not None:
            raise NbdClientError(f"connection failed: {self._failure}")
        async with self._slots:
            handle = next(self._handles)
            fut: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
            self._pending[handle] = (command, length, fut)
            header = REQUEST.pack(REQUEST_MAGIC, flags, command, handle, offset, length)
            self.writer.write(header + data if data is not None else header)
            async with self._drain_lock:
                await self.writer.drain()
            return await fut

    async def read(self, offset: int, length: int) -> bytes:
        return await self.request(Command.READ, offset, length)

    async def write(
        self, offset: int, data: bytes | bytearray | memoryview, *, fua: bool = False
    ) -> None:
        flags = CommandFlag.FUA if fua else 0
        await self.request(Command.WRITE, offset, len(data), flags, bytes(data))

    async def flush(self) -> None:
        await self.request(Command.FLUSH)

    async def trim(self, offset: int, length: int, *, fua: bool = False) -> None:
        await self.request(Command.TRIM, offset, length, CommandFlag.FUA if fua else 0)

    async def write_zeroes(
        self, offset: int, length: int, *, no_hole: bool = False, fua: bool = False
    ) -> None:
        flags = (CommandFlag.NO_HOLE if no_hole else 0) | (CommandFlag.FUA if fua else 0)
        await self.request(Command.WRITE_ZEROES, offset, length, flags)

    async def disconnect(self, timeout: float = 10.0) -> None:
        """NBD_CMD_DISC after the requests in flight are answered; then wait for the close."""
        if self._failure is None and not self.writer.is_closing():
            pending = [fut for _, _, fut in self._pending.values()]
            if pending:
                await asyncio.wait(pending, timeout=timeout)
            self.writer.write(REQUEST.pack(REQUEST_MAGIC, 0, Command.DISC, 0, 0, 0))
            with contextlib.suppress(ConnectionError):
                await self.writer.drain()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(self._reader_task), timeout)
        await self.close()

    async def close(self) -> None:
        self._reader_task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await self._reader_task
        self.writer.close()
        with contextlib.suppress(ConnectionError, OSError):
            await self.writer.wait_closed()

    async def _read_replies(self) -> None:
        reader = self.reader
        try:
            while True:
                try:
                    raw = await reader.readexactly(SIMPLE_REPLY.size)
                except asyncio.IncompleteReadError as exc:
                    if exc.partial:
                        raise NbdClientError("connection closed inside a reply") from exc
                    raise NbdClientError("connection closed by the server") from None
                magic, error, handle = SIMPLE_REPLY.unpack(raw)
                if magic != SIMPLE_REPLY_MAGIC:
                    raise NbdClientError(f"bad reply magic {magic:#x}")
                entry = self._pending.pop(handle, None)
                if entry is None:
                    raise NbdClientError(f"reply for unknown handle {handle}")
                command, length, fut = entry
                payload = b""
                if command == Command.READ and error == 0 and length:
                    payload = await reader.readexactly(length)
                if fut.done():
                    continue
                if error:
                    fut.set_exception(NbdError(command, error))
                else:
                    fut.set_result(payload)
        except (NbdClientError, OSError, asyncio.IncompleteReadError) as exc:
            self._fail(exc)
        except asyncio.CancelledError:
            self._fail(NbdClientError("client closed"))
            raise

    def _fail(self, exc: BaseException) -> None:
        self._failure = exc
        for _, _, fut in self._pending.values():
            if not fut.done():
                fut.set_exception(NbdClientError(f"connection failed: {exc}"))
        self._pending.clear()
