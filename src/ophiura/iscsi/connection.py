"""One iSCSI connection on the target: an asyncio.Protocol that only moves bytes.

Bytes go into the sans-I/O `PduDecoder`; PDUs are dispatched by opcode; replies are encoded
with `PduEncoder` and written with one `transport.writelines` per reply (data buffers are not
copied). Login is delegated to `LoginMachine`, the CmdSN window to `CmdWindow`. This module is
the connection itself: its life (login, keep-alive pings, teardown), the full feature phase
dispatch and the small requests (NOP, Text, Logout, Reject). A normal session's connection, once
in full feature phase, holds a `CommandPath` (SCSI Command and Data-Out PDUs, R2T, completion;
the per-task pure part is `task`) and a `TaskManagement` (TMF requests, which end tasks through
the command path); both answer through the narrow `link.Link` this connection implements. A
discovery session holds neither: its SCSI commands are rejected. A malformed PDU gets a Reject
(and, when the byte stream can no longer be trusted, the connection is closed); an unexpected
exception closes this connection only, never the server.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Coroutine
from functools import partial
from typing import TYPE_CHECKING, Any

from ophiura.causes import describe
from ophiura.iscsi import pdu as P
from ophiura.iscsi.commands import CommandPath
from ophiura.iscsi.login import LoginError, LoginMachine, LoginReply, Status, login_request_from_pdu
from ophiura.iscsi.session import DELIVER, QUEUED, CmdWindow, Session
from ophiura.iscsi.text import TextError, encode_text, parse_text
from ophiura.iscsi.tmf import TaskManagement, reply_rejected

if TYPE_CHECKING:
    from ophiura.iscsi.server import IscsiServer

log = logging.getLogger(__name__)

NO_TAG = P.NO_TAG


class IscsiConnection(asyncio.Protocol):
    """One TCP connection (MaxConnections=1: also its session's only one). It implements
    `link.Link` for the `CommandPath` and `TaskManagement` it holds: they answer through it,
    so the StatSN and TTT counters and closing stay here."""

    def __init__(self, server: IscsiServer) -> None:
        self.server = server
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.peer = "?"
        self.decoder = P.PduDecoder("target", P.LOGIN_MAX_DATA)
        self.enc = P.PduEncoder()
        self.login: LoginMachine | None = None
        self.session: Session | None = None
        self.full_feature = False
        self.closed = False
        self.statsn = 0
        self.window: CmdWindow | None = None
        # full feature phase of a normal session only
        self.commands: CommandPath | None = None
        self.tmf: TaskManagement | None = None
        self._ttt = 0
        self._text_rest: dict[int, bytes] = {}
        self._last_rx = time.monotonic()
        self._ping_ttt: int | None = None
        self._ping_deadline = 0.0
        self._timer: asyncio.TimerHandle | None = None
        self._bg: set[asyncio.Task[Any]] = set()
        self._writing_paused = False
        self._logged_out = False
        self._mrdsl = 8192  # negotiated: Text responses are cut to it

    # ---- asyncio.Protocol ----------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is no subclass
        peer = transport.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if peer else "?"
        self.server._connections.add(self)
        self.login = LoginMachine(
            self.server.target_infos,
            self.server.policy,
            self.server.discovery_chap,
            self.server.challenges,
            peer=self.peer,
        )
        self._schedule(self.server.login_timeout)

    def data_received(self, data: bytes) -> None:
        if self.closed:
            return
        self._last_rx = time.monotonic()
        decoder = self.decoder
        decoder.feed(data)
        try:
            while not self.closed:
                try:
                    pdu = decoder.next_pdu()
                except P.PduError as exc:
                    self._protocol_error(exc)
                    continue
                if pdu is None:
                    break
                self._dispatch(pdu)
        except Exception:
            log.exception("connection %s: internal error; closing it", self.peer)
            self.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        self._teardown("connection lost" if exc is None else f"connection lost: {describe(exc)}")

    def pause_writing(self) -> None:
        # The initiator is not reading: stop reading its commands until it catches up.
        self._writing_paused = True
        if self.transport is not None:
            self.transport.pause_reading()

    def resume_writing(self) -> None:
        self._writing_paused = False
        if self.transport is not None and not self.closed:
            self.transport.resume_reading()

    # ---- what the command path and task management use (link.Link) -----------------------
    def send(self, bufs: list[Any]) -> None:
        if not self.closed and self.transport is not None:
            self.transport.writelines(bufs)

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()
        self._teardown("aborted")

    def close_after_flush(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def close(self, why: str) -> None:
        self.close_after_flush()
        self._teardown(why)

    def held_bytes(self) -> int:
        """Bytes an initiator makes us hold: PDU bytes read and not yet decoded, plus write data
        received for unfinished tasks."""
        held = self.decoder.buffered()
        if self.commands is not None:
            held += self.commands.held_bytes()
        return held

    def running(self) -> list[asyncio.Task[None]]:
        """Commands the device server is executing for this connection."""
        return [] if self.commands is None else self.commands.running()

    def _teardown(self, why: str) -> None:
        if self.closed:
            return
        self.closed = True
        if self._timer is not None:
            self._timer.cancel()
        self.server._connections.discard(self)
        session = self.session
        if self.commands is not None:
            self.commands.close()
        if session is not None:
            log.info("connection %s of %s closed (%s)", self.peer, session.initiator_name, why)
            self.server._session_closed(session, self)

    def next_ttt(self) -> int:
        self._ttt = (self._ttt + 1) & 0x7FFFFFFF
        return self._ttt

    def _serials(self) -> tuple[int, int]:
        w = self.window
        if w is None:
            return 0, 0
        return w.exp, w.max_cmdsn

    def take_statsn(self) -> int:
        sn = self.statsn
        self.statsn = (sn + 1) & 0xFFFFFFFF
        return sn

    def reply(
        self,
        opcode: int,
        flags: int,
        b2: int,
        lun_raw: int,
        itt: int,
        ttt: int,
        w36: int = 0,
        data: bytes = b"",
    ) -> None:
        """Send a response that takes a StatSN (NOP-In, Text, Logout, TMF, Reject)."""
        exp, mx = self._serials()
        self.send(
            self.enc.encode(
                opcode, flags, b2, lun_raw, itt, ttt, self.take_statsn(), exp, mx, w36, data=data
            )
        )

    def _schedule(self, delay: float | None) -> None:
        if delay is not None and delay > 0:
            self._timer = self.loop.call_later(delay, self._tick)

    def _tick(self) -> None:
        self._timer = None
        if self.closed:
            return
        now = time.monotonic()
        if not self.full_feature:
            log.warning("connection %s: login not completed in time; closing", self.peer)
            self.abort()
            return
        interval = self.server.nop_interval
        if interval is None:
            return
        if self._ping_ttt is not None:
            if now >= self._ping_deadline:
                log.warning("connection %s: no NOP-Out reply to our ping; closing", self.peer)
                self.abort()
                return
            self._schedule(max(0.05, self._ping_deadline - now))
            return
        idle = now - self._last_rx
        if idle >= interval:
            ttt = self.next_ttt()
            self._ping_ttt = ttt
            self._ping_deadline = now + self.server.nop_timeout
            exp, mx = self._serials()
            self.send(self.enc.encode(0x20, 0x80, 0, 0, NO_TAG, ttt, self.statsn, exp, mx))
            self._schedule(self.server.nop_timeout)
        else:
            self._schedule(interval - idle)

    def spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        t = self.loop.create_task(coro)
        self._bg.add(t)
        t.add_done_callback(self._bg.discard)

    # ---- errors --------------------------------------------------------------------------
    def _protocol_error(self, exc: P.PduError) -> None:
        log.warning("connection %s: %s", self.peer, exc)
        if not self.full_feature:
            self._login_reject(Status.INITIATOR_ERROR, 0)
            return
        self.reject(exc.reason, exc.header)
        if exc.fatal or isinstance(exc, P.DataDigestError):
            self.close(f"protocol error: {exc}")

    def reject(self, reason: int, header: bytes) -> None:
        self.reply(0x3F, 0x80, reason << 8, 0, NO_TAG, 0, data=P.reject_header_data(header))

    def _login_reject(self, status: int, itt: int) -> None:
        self.send(self.enc.encode(0x23, 0, 0, 0, itt, 0, self.statsn, 0, 0, status << 16))
        self.close(f"login failed 0x{status:04x}")

    # ---- dispatch ------------------------------------------------------------------------
    def _dispatch(self, pdu: P.Pdu) -> None:
        op = pdu.opcode
        if not self.full_feature:
            if op != P.Opcode.LOGIN_REQUEST:
                log.warning("connection %s: %r during login", self.peer, pdu)
                self._login_reject(Status.INVALID_DURING_LOGIN, pdu.itt)
                return
            self._on_login(pdu)
            return
        commands = self.commands
        if op == 0x01:
            if commands is not None:
                commands.on_command(pdu)
            else:  # a discovery session
                self.reject(P.RejectReason.PROTOCOL_ERROR, pdu.header)
        elif op == 0x05:
            if commands is not None:
                commands.on_data_out(pdu)
            else:
                log.debug("connection %s: Data-Out in a discovery session", self.peer)
        elif op == 0x00:
            self._on_nop_out(pdu)
        elif op == 0x02:
            self._ordered(pdu, self._on_tmf)
        elif op == 0x04:
            self._ordered(pdu, self._on_text)
        elif op == 0x06:
            self._ordered(pdu, self._on_logout)
        elif op == 0x10:
            self.reject(P.RejectReason.SNACK_REJECT, pdu.header)
        else:  # a Login Request in full feature phase
            self.reject(P.RejectReason.PROTOCOL_ERROR, pdu.header)

    def _ordered(self, pdu: P.Pdu, handler: Callable[[P.Pdu], None]) -> None:
        """Non-SCSI requests: immediate ones now, others in CmdSN order (the window holds them
        as callables beside the command path's tasks)."""
        if pdu.immediate:
            handler(pdu)
            return
        assert self.window is not None
        verdict, ready = self.window.accept(pdu.cmdsn, partial(handler, pdu))
        if verdict == DELIVER:
            self._run_ready(ready)
        elif verdict != QUEUED:
            log.debug("connection %s: %r outside the CmdSN window, dropped", self.peer, pdu)

    def _run_ready(self, ready: list[Any]) -> None:
        if self.commands is not None:
            self.commands.run_ready(ready)  # tasks may be among them
        else:
            for run in ready:
                run()

    # ---- login ---------------------------------------------------------------------------
    def _on_login(self, pdu: P.Pdu) -> None:
        assert self.login is not None
        req = login_request_from_pdu(pdu)
        if self.window is None:
            self.window = CmdWindow(req.cmdsn, self.server.queue_depth)
            self.statsn = self.server.initial_statsn()
        reply = self.login.receive(req)
        tsih = req.tsih
        if reply.complete:
            try:
                session = self.server._establish(self.login, self, req)
            except LoginError as exc:
                reply = LoginReply(False, req.csg, 0, exc.status, failed=True)
            else:
                self.session = session
                tsih = session.tsih
        exp, mx = self._serials()
        data = encode_text(reply.pairs)
        statsn = self.statsn
        if not reply.failed:
            self.statsn = (statsn + 1) & 0xFFFFFFFF
        self.send(
            self.enc.encode(
                0x23,
                reply.flags,
                0,
                (req.isid << 16) | tsih,
                req.itt,
                0,
                statsn,
                exp,
                mx,
                reply.status << 16,
                data=data,
            )
        )
        if reply.failed:
            self.close(f"login failed 0x{reply.status:04x}")
            return
        if reply.complete:
            self._enter_full_feature()

    def _enter_full_feature(self) -> None:
        session = self.session
        assert session is not None and self.login is not None
        params = session.params
        self.enc = P.negotiated_codec(self.decoder, *params.digests, params.target_mrdsl)
        self._mrdsl = params.initiator_mrdsl
        device, nexus = session.device_server, session.nexus
        if device is not None and nexus is not None:  # a normal session
            assert self.window is not None
            server = self.server
            self.commands = CommandPath(self, server, self.window, self.enc, params, device, nexus)
            self.tmf = TaskManagement(self, server, self.commands, device, nexus)
        self.full_feature = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._schedule(self.server.nop_interval)
        log.info(
            "connection %s: %s session %s -> %s (tsih %d) in full feature phase",
            self.peer,
            "discovery" if session.discovery else "normal",
            session.initiator_name,
            session.target_name,
            session.tsih,
        )

    # ---- NOP / text / logout / TMF -------------------------------------------------------
    def _on_nop_out(self, pdu: P.Pdu) -> None:
        if pdu.itt == NO_TAG:
            if pdu.w20 == self._ping_ttt:
                self._ping_ttt = None
            return  # a reply to our NOP-In: nothing to send
        if not pdu.immediate:
            assert self.window is not None
            verdict, ready = self.window.accept(pdu.cmdsn, partial(self._nop_reply, pdu))
            if verdict == DELIVER:
                self._run_ready(ready)
            return
        self._nop_reply(pdu)

    def _nop_reply(self, pdu: P.Pdu) -> None:
        self.reply(0x20, 0x80, 0, pdu.lun_raw, pdu.itt, NO_TAG, data=pdu.data)

    def _on_text(self, pdu: P.Pdu) -> None:
        session = self.session
        assert session is not None
        if pdu.w20 != NO_TAG and pdu.w20 in self._text_rest:
            body = self._text_rest.pop(pdu.w20)
        else:
            self._text_rest.clear()
            try:
                pairs = parse_text(pdu.data)
            except TextError as exc:
                log.warning("connection %s: bad text request: %s", self.peer, exc)
                self.reject(P.RejectReason.PROTOCOL_ERROR, pdu.header)
                return
            answer: list[tuple[str, str]] = []
            for key, value in pairs:
                if key == "SendTargets":
                    answer += self.server.send_targets(value, session, self)
                else:
                    answer.append((key, "NotUnderstood"))
            body = encode_text(answer)
        limit = self._mrdsl
        if len(body) > limit:
            ttt = self.next_ttt()
            self._text_rest[ttt] = body[limit:]
            flags, chunk = P.F_TEXT_CONTINUE, body[:limit]
        else:
            ttt, flags, chunk = NO_TAG, P.F_FINAL, body
        self.reply(0x24, flags, 0, pdu.lun_raw, pdu.itt, ttt, data=chunk)

    def _on_logout(self, pdu: P.Pdu) -> None:
        reason = pdu.flags & 0x7F
        response = 0
        if reason == 2:
            response = 2  # connection recovery is not supported (ErrorRecoveryLevel=0)
        elif reason == 1 and pdu.cid != (self.login.cid if self.login else 0):
            response = 1  # CID not found: we have only this connection
        self.reply(0x26, 0x80, response << 8, 0, pdu.itt, 0)
        if response == 0:
            self._logged_out = True
            self.close("logout")

    def _on_tmf(self, pdu: P.Pdu) -> None:
        if self.tmf is not None:
            self.tmf.on_request(pdu)
        else:  # a discovery session has no tasks to manage
            reply_rejected(self, pdu)
