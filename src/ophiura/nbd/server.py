"""The NBD server: a listening socket, the exports behind it, and one connection per client.

    server = NbdServer({"disk": device}, "127.0.0.1", 0)
    await server.start(); print(server.port); ...; await server.stop()

This module only moves bytes: `protocol.ServerConnection` decides what they mean and
`commands.execute` runs each request against its BlockDevice. Every request runs in its own task,
so a slow read never holds up a fast one; replies go out as they complete, matched by handle.
Each connection bounds its requests in flight (count and bytes): at the bound it stops reading
the socket, and the client's own TCP window pushes back (StarFish: stop accepting host I/O).
A protocol violation closes that connection only; the others never notice.

Access (`security=`, an `NbdSecurity`): a connection from outside the allow-list, or beyond the
connection cap, is closed before the greeting with a log line naming the address and why. TLS:
when the core says `StartTls`, reading stops, the ACK goes out in plaintext, and
`loop.start_tls` swaps the transport for an encrypted one under this same protocol object; a
failed handshake (no certificate when one is required, another CA's) closes that connection.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Mapping
from typing import cast

from ophiura.block.device import BlockDevice
from ophiura.nbd.commands import execute, export_info
from ophiura.nbd.constants import DEFAULT_PORT, MAX_REQUEST, Command, Errno, Reply
from ophiura.nbd.protocol import (
    NEED_DATA,
    TLS_REQUIRED,
    ConnectionClosed,
    Disconnect,
    ExportChosen,
    ExportInfo,
    ExportRefused,
    NbdProtocolError,
    OptionAnswered,
    Request,
    ServerConnection,
    SessionAborted,
    StartTls,
    encode_simple_reply,
)
from ophiura.nbd.security import NbdSecurity

log = logging.getLogger(__name__)

_SMALL_REPLY = 64 * 1024  # join header and data below this (one send); above, two writes


class NbdConnection(asyncio.Protocol):
    """One client: feeds the sans-I/O core, runs requests as tasks, writes replies."""

    def __init__(self, server: NbdServer) -> None:
        self.server = server
        self.core = ServerConnection(
            server.catalog(),
            default_export=server.default_export,
            max_request=server.max_request,
            tls=server.security.tls,
        )
        self.transport: asyncio.Transport | None = None
        self.peer: object = None
        self.device: BlockDevice | None = None
        self.export_name: str | None = None
        self.tasks: set[asyncio.Task[None]] = set()
        self.in_flight_bytes = 0
        self.peak_in_flight = 0  # observable by tests: the bound holds
        self.closing = False  # DISC, EOF or stop(): take no new requests
        self._reading_paused = False
        self._writing_paused = False
        self._timer: asyncio.TimerHandle | None = None
        self._refused = False  # closed at connection_made by the access policy
        self._upgrading = False  # TLS handshake under way: the core must not be fed
        self._early: list[bytes] = []  # decrypted bytes that beat start_tls's return to us
        self._told_tls_required = False

    # ---- asyncio.Protocol ----------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # (uvloop's transports quack like asyncio.Transport without subclassing it)
        self.transport = cast(asyncio.Transport, transport)
        self.peer = transport.get_extra_info("peername")
        reason = self.server.security.refusal(self.peer, len(self.server.connections))
        if reason is not None:
            self._refused = self.closing = True
            self.server.refused += 1
            log.warning("NBD connection from %s refused: %s", _addr(self.peer), reason)
            self.transport.abort()  # nothing to flush: not even the greeting went out
            return
        self.server.connections.add(self)
        self.transport.write(self.core.greeting())
        loop = asyncio.get_running_loop()
        self._timer = loop.call_later(self.server.handshake_timeout, self._handshake_expired)

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return
        if self._upgrading:
            # Reading stopped at STARTTLS; what arrives now came through the new TLS layer
            # (the handshake is done, our task has not resumed yet): hold it for the core.
            self._early.append(data)
            return
        self.core.receive_data(data)
        self._pump()

    def eof_received(self) -> bool:
        if self._refused:
            return False
        if self._upgrading:
            self._early.append(b"")
            return False
        self.core.receive_data(b"")
        self._pump()
        # keep our side open until the replies in flight are written (TLS closes regardless)
        return not self.core.tls_active

    def connection_lost(self, exc: Exception | None) -> None:
        self.closing = True
        if self._timer is not None:
            self._timer.cancel()
        self.server.connections.discard(self)
        if exc is not None and not self._refused:
            log.info("NBD connection from %s lost: %s", _addr(self.peer), exc)

    def pause_writing(self) -> None:
        self._writing_paused = True
        self._update_reading()

    def resume_writing(self) -> None:
        self._writing_paused = False
        self._update_reading()
        self._pump()

    # ---- the pump: bytes -> events -> tasks ----------------------------------------------
    def _full(self) -> bool:
        server = self.server
        return (
            len(self.tasks) >= server.max_in_flight
            or self.in_flight_bytes >= server.max_in_flight_bytes
            or self._writing_paused
        )

    def _update_reading(self) -> None:
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        want_pause = self._full() and not self.closing
        if want_pause and not self._reading_paused:
            transport.pause_reading()
            self._reading_paused = True
        elif not want_pause and self._reading_paused:
            transport.resume_reading()
            self._reading_paused = False

    def _pump(self) -> None:
        core = self.core
        while not self.closing and not self._full():
            try:
                event = core.next_event()
            except NbdProtocolError as exc:
                log.warning("NBD protocol error from %s, closing: %s", _addr(self.peer), exc)
                self._send(core.data_to_send())
                self._abort()
                return
            if event is NEED_DATA:
                break
            if isinstance(event, Request):
                self._start(event)
            else:
                self._handle(event)
        self._send(core.data_to_send())
        self._update_reading()

    def _handle(self, event: object) -> None:
        if isinstance(event, ExportChosen):
            self._chosen(event.export)
        elif isinstance(event, StartTls):
            self._start_tls()
        elif isinstance(event, OptionAnswered):
            if event.reply == Reply.ERR_TLS_REQD and not self._told_tls_required:
                self._told_tls_required = True  # one line per connection, not per option
                log.warning(
                    "NBD client %s refused: TLS required, it sent option %d without STARTTLS",
                    _addr(self.peer),
                    event.option,
                )
        elif isinstance(event, SessionAborted):
            self._send(self.core.data_to_send())
            self._close_when_idle()
        elif isinstance(event, ExportRefused):
            if event.reason == TLS_REQUIRED:
                log.warning(
                    "NBD client %s refused: TLS required, it sent NBD_OPT_EXPORT_NAME without "
                    "STARTTLS",
                    _addr(self.peer),
                )
            else:
                log.info("NBD client %s asked for unknown export %r", _addr(self.peer), event.name)
            self._abort()
        elif isinstance(event, Disconnect | ConnectionClosed):
            self._close_when_idle()

    def _chosen(self, export: ExportInfo) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.device = self.server.exports[export.name]
        self.export_name = export.name
        log.info("NBD client %s uses export %r", _addr(self.peer), export.name)

    # ---- TLS ---------------------------------------------------------------------------
    def _start_tls(self) -> None:
        """STARTTLS was acknowledged: flush the ACK, stop reading, upgrade in a task."""
        transport = self.transport
        assert transport is not None
        self._send(self.core.data_to_send())
        self._upgrading = True
        if not self._reading_paused:
            transport.pause_reading()  # nothing more may reach the core in plaintext
        task = asyncio.get_running_loop().create_task(self._upgrade(transport))
        self.tasks.add(task)

    async def _upgrade(self, raw: asyncio.Transport) -> None:
        server = self.server
        context = server.ssl_context
        assert context is not None
        if self.closing:  # a protocol error (plaintext after STARTTLS) or stop() came first
            self._upgrading = False
            self.tasks.discard(asyncio.current_task())  # type: ignore[arg-type]
            return
        try:
            tls = await asyncio.get_running_loop().start_tls(
                raw,
                self,
                context,
                server_side=True,
                ssl_handshake_timeout=server.handshake_timeout,
            )
        except Exception as exc:  # whatever the handshake raised, only this client goes
            log.warning(
                "NBD client %s refused: TLS handshake failed: %s", _addr(self.peer), _why(exc)
            )
            self.tasks.discard(asyncio.current_task())  # type: ignore[arg-type]
            self._refused = True  # said once above; connection_lost need not say it again
            self.closing = True
            raw.close()  # close, not abort: the TLS alert (why) still reaches the client
            return
        finally:
            self._upgrading = False
        self.tasks.discard(asyncio.current_task())  # type: ignore[arg-type]
        if tls is None or self.closing:  # stop() or the handshake timer got there first
            if tls is not None:
                tls.abort()
            return
        self.transport = cast(asyncio.Transport, tls)
        self._reading_paused = False  # start_tls resumes reading on the new transport
        self.core.tls_established()
        for data in self._early:
            self.core.receive_data(data)
        self._early.clear()
        cert = tls.get_extra_info("peercert")
        log.info(
            "NBD client %s: TLS up (%s%s)",
            _addr(self.peer),
            tls.get_extra_info("cipher", ("?",))[0],
            f", client {_subject(cert)}" if cert else ", no client certificate",
        )
        self._pump()

    def _handshake_expired(self) -> None:
        if self.device is None and not self.closing:
            log.warning("NBD client %s did not finish its handshake in time", _addr(self.peer))
            self._abort()

    # ---- requests ------------------------------------------------------------------------
    def _start(self, req: Request) -> None:
        cost = req.length if req.command in (Command.READ, Command.WRITE) else 0
        self.in_flight_bytes += cost
        task = asyncio.get_running_loop().create_task(self._run(req, cost))
        self.tasks.add(task)
        self.peak_in_flight = max(self.peak_in_flight, len(self.tasks))

    async def _run(self, req: Request, cost: int) -> None:
        device = self.device
        assert device is not None
        try:
            error, data = await execute(device, req, self.server.max_request)
        except Exception:  # a backend bug must not leave the client waiting forever
            log.exception("NBD request %s failed unexpectedly", req)
            error, data = Errno.EIO, None
        header = encode_simple_reply(req.handle, error)
        if data is not None and error == Errno.OK and len(data):
            if len(data) <= _SMALL_REPLY:
                self._send(header + data)
            else:
                self._send(header)
                self._send(data)
        else:
            self._send(header)
        self.in_flight_bytes -= cost
        self.tasks.discard(asyncio.current_task())  # type: ignore[arg-type]
        if self.closing:
            if not self.tasks:
                self._close()
        elif self._reading_paused or self.core.buffered:
            self._update_reading()
            self._pump()

    # ---- output and closing --------------------------------------------------------------
    def _send(self, data: bytes | bytearray | memoryview) -> None:
        transport = self.transport
        if data and transport is not None and not transport.is_closing():
            transport.write(data)

    def _close_when_idle(self) -> None:
        self.closing = True
        if not self.tasks:
            self._close()

    def _close(self) -> None:
        self.closing = True
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()  # flushes what is buffered, then closes

    def _abort(self) -> None:
        self.closing = True
        if self.transport is not None:
            self.transport.abort()


class NbdServer:
    """Serves each BlockDevice in `exports` as the NBD export of that name."""

    def __init__(
        self,
        exports: Mapping[str, BlockDevice],
        host: str = "127.0.0.1",
        port: int = DEFAULT_PORT,
        *,
        descriptions: Mapping[str, str] | None = None,
        default_export: str | None = None,
        max_in_flight: int = 64,
        max_in_flight_bytes: int = 64 * 1024 * 1024,
        max_request: int = MAX_REQUEST,
        handshake_timeout: float = 30.0,
        security: NbdSecurity | None = None,
    ) -> None:
        if default_export is not None and default_export not in exports:
            raise ValueError(f"default export {default_export!r} is not an export")
        if max_in_flight < 1 or max_in_flight_bytes < max_request:
            raise ValueError("in-flight bounds must allow at least one largest request")
        self.exports: dict[str, BlockDevice] = dict(exports)
        self.host = host
        self.requested_port = port
        self.descriptions = dict(descriptions or {})
        self.default_export = default_export
        self.max_in_flight = max_in_flight
        self.max_in_flight_bytes = max_in_flight_bytes
        self.max_request = max_request
        self.handshake_timeout = handshake_timeout
        self.security = security or NbdSecurity()
        self.ssl_context: ssl.SSLContext | None = None
        self.connections: set[NbdConnection] = set()
        self.refused = 0  # connections closed at once by the access policy (tests, metrics)
        self.warning: str | None = None  # the exposure warning logged at start, if any
        self._server: asyncio.base_events.Server | None = None

    def add_export(self, name: str, device: BlockDevice, description: str = "") -> None:
        """Serve one more export (or replace one): connections opened from now on see it."""
        self.exports[name] = device
        self.descriptions[name] = description

    def remove_export(self, name: str) -> None:
        """Offer an export no more to new connections; ones already serving it keep it."""
        if name == self.default_export:
            self.default_export = None
        self.exports.pop(name, None)
        self.descriptions.pop(name, None)

    def catalog(self) -> dict[str, ExportInfo]:
        """A snapshot per connection: exports added or resized later show up on new ones."""
        return {
            name: export_info(name, device, self.descriptions.get(name, ""), self.max_request)
            for name, device in self.exports.items()
        }

    async def start(self) -> None:
        """Load the TLS certificates (a bad directory fails here, before binding), listen."""
        self.ssl_context = self.security.server_context()
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: NbdConnection(self),
            self.host,
            self.requested_port,
            reuse_address=True,
            backlog=128,
        )
        log.info(
            "NBD server listening on %s:%d (%s; %s)",
            self.host,
            self.port,
            ", ".join(self.exports),
            self.security.describe(),
        )
        self.warning = self.security.exposure_warning(self.host)
        if self.warning:
            log.warning("%s", self.warning)

    @property
    def port(self) -> int:
        assert self._server is not None, "server not started"
        return self._server.sockets[0].getsockname()[1]

    async def stop(self, grace: float = 5.0) -> None:
        """Stop listening, let requests in flight finish (bounded by `grace`), then close."""
        if self._server is not None:
            self._server.close()
        connections = list(self.connections)
        for conn in connections:
            conn.closing = True
        pending = [t for conn in connections for t in conn.tasks]
        if pending:
            _, late = await asyncio.wait(pending, timeout=grace)
            for task in late:
                task.cancel()
        for conn in connections:
            conn._close()
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None

    async def __aenter__(self) -> NbdServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()


def _addr(peer: object) -> str:
    """host:port of a peername for log lines (the address is what an operator greps for)."""
    if isinstance(peer, tuple) and len(peer) >= 2:
        host = str(peer[0])
        return f"[{host}]:{peer[1]}" if ":" in host else f"{host}:{peer[1]}"
    return str(peer)


def _why(exc: BaseException) -> str:
    """A handshake failure in a few words (the ssl module's reason, not its repr)."""
    if isinstance(exc, ssl.SSLError):
        return exc.reason or exc.strerror or str(exc)
    return str(exc) or type(exc).__name__


def _subject(cert: dict[str, object]) -> str:
    """The CN of a verified peer certificate (getpeercert()'s nested tuples)."""
    for rdn in cert.get("subject", ()):  # type: ignore[union-attr]
        for key, value in rdn:
            if key == "commonName":
                return f"CN={value}"
    return "certificate"
