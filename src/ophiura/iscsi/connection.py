"""One iSCSI connection on the target: an asyncio.Protocol that only moves bytes.

Bytes go into the sans-I/O `PduDecoder`; PDUs are dispatched by opcode; replies are encoded
with `PduEncoder` and written with one `transport.writelines` per reply (data buffers are not
copied). Login is delegated to `LoginMachine`, the CmdSN window to `CmdWindow`. This module is
the connection itself: its life (login, keep-alive pings, teardown), the full feature phase
dispatch and the small requests (NOP, Text, Logout, Reject). SCSI Command and Data-Out PDUs go
to `commands.CommandsMixin` (Data-Out collection and completion PDUs are in `task`), task
management to `tmf.TmfMixin`. A malformed PDU gets a Reject (and, when the byte stream can no
longer be trusted, the connection is closed); an unexpected exception closes this connection
only, never the server.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from typing import TYPE_CHECKING, Any

from ophiura.iscsi import pdu as P
from ophiura.iscsi.commands import CommandsMixin
from ophiura.iscsi.login import LoginError, LoginMachine, LoginReply, Status, login_request_from_pdu
from ophiura.iscsi.session import DELIVER, QUEUED, CmdWindow, Session
from ophiura.iscsi.task import Task
from ophiura.iscsi.text import TextError, encode_text, parse_text
from ophiura.iscsi.tmf import TmfMixin

if TYPE_CHECKING:
    from ophiura.iscsi.server import IscsiServer

log = logging.getLogger(__name__)

NO_TAG = P.NO_TAG


class IscsiConnection(CommandsMixin, TmfMixin, asyncio.Protocol):
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
        self.tasks: dict[int, Task] = {}
        self._order: deque[Task] = deque()
        self._budget_wait: deque[Task] = deque()
        self._reserved = 0  # write bytes promised to tasks (unsolicited + R2T'd): write_budget
        self._immediate = 0  # outstanding immediate SCSI commands: max_immediate
        self._unsolicited = 0  # unsolicited bytes of unfinished tasks: unsolicited_budget
        self._tmfs = 0  # task management functions running: max_immediate
        self._ttt = 0
        self._text_rest: dict[int, bytes] = {}
        self._aborted_cmdsn: set[int] = set()
        self._last_rx = time.monotonic()
        self._ping_ttt: int | None = None
        self._ping_deadline = 0.0
        self._timer: asyncio.TimerHandle | None = None
        self._bg: set[asyncio.Task[Any]] = set()
        self._writing_paused = False
        self._logged_out = False
        # negotiated values used on the hot path
        self._mrdsl = 8192
        self._max_burst = 262144
        self._first_burst = 65536
        self._initial_r2t = True
        self._immediate_data = True
        self._max_r2t = 1
        self._device = None
        self._nexus = None

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
        self._teardown("connection lost" if exc is None else f"connection lost: {exc}")

    def pause_writing(self) -> None:
        # The initiator is not reading: stop reading its commands until it catches up.
        self._writing_paused = True
        if self.transport is not None:
            self.transport.pause_reading()

    def resume_writing(self) -> None:
        self._writing_paused = False
        if self.transport is not None and not self.closed:
            self.transport.resume_reading()

    # ---- plumbing ------------------------------------------------------------------------
    def _write(self, bufs: list[Any]) -> None:
        if not self.closed and self.transport is not None:
            self.transport.writelines(bufs)

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()
        self._teardown("aborted")

    def close_after_flush(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def _teardown(self, why: str) -> None:
        if self.closed:
            return
        self.closed = True
        if self._timer is not None:
            self._timer.cancel()
        self.server._connections.discard(self)
        session = self.session
        for task in list(self.tasks.values()):
            if not task.delivered:
                self._finish(task)
        self._order.clear()
        self._budget_wait.clear()
        if session is not None:
            log.info("connection %s of %s closed (%s)", self.peer, session.initiator_name, why)
            self.server._session_closed(session, self)

    def _next_ttt(self) -> int:
        self._ttt = (self._ttt + 1) & 0x7FFFFFFF
        return self._ttt

    def _serials(self) -> tuple[int, int]:
        w = self.window
        if w is None:
            return 0, 0
        return w.exp, w.max_cmdsn

    def _take_statsn(self) -> int:
        sn = self.statsn
        self.statsn = (sn + 1) & 0xFFFFFFFF
        return sn

    def _reply(
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
        self._write(
            self.enc.encode(
                opcode, flags, b2, lun_raw, itt, ttt, self._take_statsn(), exp, mx, w36, data=data
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
            ttt = self._next_ttt()
            self._ping_ttt = ttt
            self._ping_deadline = now + self.server.nop_timeout
            exp, mx = self._serials()
            self._write(self.enc.encode(0x20, 0x80, 0, 0, NO_TAG, ttt, self.statsn, exp, mx))
            self._schedule(self.server.nop_timeout)
        else:
            self._schedule(interval - idle)

    def _spawn(self, coro: Any) -> None:
        t = self.loop.create_task(coro)
        self._bg.add(t)
        t.add_done_callback(self._bg.discard)

    # ---- errors --------------------------------------------------------------------------
    def _protocol_error(self, exc: P.PduError) -> None:
        log.warning("connection %s: %s", self.peer, exc)
        if not self.full_feature:
            self._login_reject(Status.INITIATOR_ERROR, 0)
            return
        self._reject(exc.reason, exc.header)
        if exc.fatal or isinstance(exc, P.DataDigestError):
            self.close_after_flush()
            self._teardown(f"protocol error: {exc}")

    def _reject(self, reason: int, header: bytes) -> None:
        self._reply(0x3F, 0x80, reason << 8, 0, NO_TAG, 0, data=P.reject_header_data(header))

    def _login_reject(self, status: int, itt: int) -> None:
        self._write(self.enc.encode(0x23, 0, 0, 0, itt, 0, self.statsn, 0, 0, status << 16))
        self.close_after_flush()
        self._teardown(f"login failed 0x{status:04x}")

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
        if op == 0x01:
            self._on_scsi_command(pdu)
        elif op == 0x05:
            self._on_data_out(pdu)
        elif op == 0x00:
            self._on_nop_out(pdu)
        elif op == 0x02 or op == 0x04 or op == 0x06:
            self._ordered(pdu, self._NON_SCSI[op])
        elif op == 0x10:
            self._reject(P.RejectReason.SNACK_REJECT, pdu.header)
        else:  # a Login Request in full feature phase
            self._reject(P.RejectReason.PROTOCOL_ERROR, pdu.header)

    def _ordered(self, pdu: P.Pdu, handler: Any) -> None:
        """Non-SCSI requests: immediate ones now, others in CmdSN order."""
        if pdu.immediate:
            handler(self, pdu)
            return
        assert self.window is not None
        verdict, ready = self.window.accept(pdu.cmdsn, (handler, pdu))
        if verdict == DELIVER:
            self._run_ready(ready)
        elif verdict != QUEUED:
            log.debug("connection %s: %r outside the CmdSN window, dropped", self.peer, pdu)

    def _run_ready(self, ready: list[Any]) -> None:
        for item in ready:
            if isinstance(item, Task):
                self._queue_task(item)
            else:
                handler, pdu = item
                handler(self, pdu)
        self._pump()

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
        self._write(
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
            self.close_after_flush()
            self._teardown(f"login failed 0x{reply.status:04x}")
            return
        if reply.complete:
            self._enter_full_feature()

    def _enter_full_feature(self) -> None:
        session = self.session
        assert session is not None and self.login is not None
        params = session.params
        self.enc = P.negotiated_codec(self.decoder, *params.digests, params.target_mrdsl)
        self._mrdsl = params.initiator_mrdsl
        self._max_burst = params.max_burst
        self._first_burst = params.first_burst
        self._initial_r2t = params.initial_r2t
        self._immediate_data = params.immediate_data
        self._max_r2t = params.max_r2t
        self._device = session.device_server
        self._nexus = session.nexus
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
            verdict, ready = self.window.accept(pdu.cmdsn, (IscsiConnection._nop_reply, pdu))
            if verdict == DELIVER:
                self._run_ready(ready)
            return
        self._nop_reply(pdu)

    def _nop_reply(self, pdu: P.Pdu) -> None:
        self._reply(0x20, 0x80, 0, pdu.lun_raw, pdu.itt, NO_TAG, data=pdu.data)

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
                self._reject(P.RejectReason.PROTOCOL_ERROR, pdu.header)
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
            ttt = self._next_ttt()
            self._text_rest[ttt] = body[limit:]
            flags, chunk = P.F_TEXT_CONTINUE, body[:limit]
        else:
            ttt, flags, chunk = NO_TAG, P.F_FINAL, body
        self._reply(0x24, flags, 0, pdu.lun_raw, pdu.itt, ttt, data=chunk)

    def _on_logout(self, pdu: P.Pdu) -> None:
        reason = pdu.flags & 0x7F
        response = 0
        if reason == 2:
            response = 2  # connection recovery is not supported (ErrorRecoveryLevel=0)
        elif reason == 1 and pdu.cid != (self.login.cid if self.login else 0):
            response = 1  # CID not found: we have only this connection
        self._reply(0x26, 0x80, response << 8, 0, pdu.itt, 0)
        if response == 0:
            self._logged_out = True
            self.close_after_flush()
            self._teardown("logout")

    _NON_SCSI = {0x02: TmfMixin._on_tmf, 0x04: _on_text, 0x06: _on_logout}
