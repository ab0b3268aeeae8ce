"""One iSCSI connection on the target: an asyncio.Protocol that only moves bytes.

Bytes go into the sans-I/O `PduDecoder`; PDUs are dispatched by opcode; replies are encoded
with `PduEncoder` and written with one `transport.writelines` per reply (data buffers are not
copied). Login is delegated to `LoginMachine`, the CmdSN window to `CmdWindow`, Data-Out
collection and completion PDUs to `task`. A malformed PDU gets a Reject (and, when the byte
stream can no longer be trusted, the connection is closed); an unexpected exception closes this
connection only, never the server.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from typing import TYPE_CHECKING, Any

from ophiura.iscsi import pdu as P
from ophiura.iscsi.login import LoginMachine, LoginReply, Status, login_request_from_pdu
from ophiura.iscsi.session import DELIVER, QUEUED, CmdWindow, Session
from ophiura.iscsi.task import (
    SENSE_INTERNAL_FAILURE,
    SENSE_INVALID_FIELD_IN_CDB,
    DataOutError,
    R2TState,
    Task,
    build_completion,
)
from ophiura.iscsi.text import TextError, encode_text, parse_text
from ophiura.iscsi.tmf import TmfMixin
from ophiura.scsi.api import Command, Response, TaskAborted, TaskAttribute

if TYPE_CHECKING:
    from ophiura.iscsi.server import IscsiServer

log = logging.getLogger(__name__)

NO_TAG = P.NO_TAG
_ATTRS = {a.value: a for a in TaskAttribute}


class IscsiConnection(TmfMixin, asyncio.Protocol):
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
        self._reserved = 0
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
        exp, mx = self._serials()
        self._write(
            self.enc.encode(
                0x3F,
                0x80,
                reason << 8,
                0,
                NO_TAG,
                0,
                self._take_statsn(),
                exp,
                mx,
                data=P.reject_header_data(header),
            )
        )

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
            except _LoginRefused as exc:
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
        hd = params.header_digest == "CRC32C"
        dd = params.data_digest == "CRC32C"
        self.decoder.header_digest = hd
        self.decoder.data_digest = dd
        self.decoder.max_data_segment = params.target_mrdsl
        self.enc = P.PduEncoder(hd, dd)
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

    # ---- SCSI commands -------------------------------------------------------------------
    def _on_scsi_command(self, pdu: P.Pdu) -> None:
        session = self.session
        assert session is not None and self.window is not None
        if session.discovery:
            self._reject(P.RejectReason.PROTOCOL_ERROR, pdu.header)
            return
        if pdu.itt in self.tasks:
            self._reject(P.RejectReason.TASK_IN_PROGRESS, pdu.header)
            return
        cdb = pdu.cdb
        if pdu.ahs:
            cdb = cdb + _extended_cdb(pdu.ahs)
        task = Task(
            pdu.itt,
            pdu.lun_raw,
            P.decode_lun(pdu.lun_raw),
            cdb,
            pdu.flags,
            pdu.w20,
            pdu.cmdsn,
            pdu.immediate,
        )
        if not pdu.immediate:
            verdict, ready = self.window.accept(pdu.cmdsn, task)
            if verdict != DELIVER and verdict != QUEUED:
                log.debug("connection %s: CmdSN 0x%08x outside window", self.peer, pdu.cmdsn)
                return
            task.counted = True
            self.window.inflight += 1
        else:
            ready = [task]
        self.tasks[task.itt] = task
        if task.is_write and task.edtl:
            failure = self._start_write(task, pdu)
            if failure is not None:
                self._fail(task, *failure)
                rest = [t for t in ready if t is not task]
                if rest:
                    self._run_ready(rest)
                return
        if ready:
            if len(ready) == 1 and not self._order and task.ready:
                self._deliver(task)  # the common case: in order, nothing waiting
            else:
                self._run_ready(ready)

    def _start_write(self, task: Task, pdu: P.Pdu) -> tuple[bytes, str] | None:
        if task.edtl > self.server.max_edtl:
            return SENSE_INVALID_FIELD_IN_CDB, f"EDTL {task.edtl} too large"
        data = pdu.data
        if data and not self._immediate_data:
            return SENSE_INVALID_FIELD_IN_CDB, "immediate data not negotiated"
        try:
            task.start_write(data, pdu.final, self._initial_r2t, self._first_burst)
        except DataOutError as exc:
            return exc.sense, str(exc)
        task.reserved = task.unsol_end
        self._reserved += task.reserved
        if not task.ready:
            self._issue_r2ts(task)
        return None

    def _queue_task(self, task: Task) -> None:
        if self.tasks.get(task.itt) is not task:
            return  # ended (failed or aborted) while it waited for its CmdSN turn
        if task.cmdsn in self._aborted_cmdsn:
            self._aborted_cmdsn.discard(task.cmdsn)
            self._finish(task)
            return
        self._order.append(task)

    def _pump(self) -> None:
        order = self._order
        if not order:
            return
        earlier_any = earlier_strict = False
        remaining: deque[Task] = deque()
        for t in order:
            if t.ready and (not earlier_any or (t.simple and not earlier_strict)):
                self._deliver(t)
            else:
                remaining.append(t)
                earlier_any = True
                earlier_strict = earlier_strict or not t.simple
        self._order = remaining

    def _deliver(self, task: Task) -> None:
        if self.closed:
            return
        task.delivered = True
        data = task.data
        cmd = Command(
            self._nexus,  # type: ignore[arg-type]
            task.lun,
            task.itt,
            task.cdb,
            _ATTRS.get(task.attr, TaskAttribute.SIMPLE),
            data if data is not None else b"",
            task.edtl,
            task.is_write,
            task.is_read,
        )
        task.future = self.loop.create_task(self._execute(task, cmd))

    async def _execute(self, task: Task, cmd: Command) -> None:
        try:
            rsp = await self._device.execute(cmd)  # type: ignore[union-attr]
        except TaskAborted:
            self._finish(task)
            return
        except asyncio.CancelledError:
            self._finish(task)
            raise
        except Exception:
            log.exception("device server failed on CDB %s", bytes(cmd.cdb[:16]).hex())
            rsp = Response(status=0x02, sense=SENSE_INTERNAL_FAILURE)
        self._complete(task, rsp)

    def _complete(self, task: Task, rsp: Response) -> None:
        self._finish(task)
        if self.closed:
            return
        window = self.window
        assert window is not None
        bufs = build_completion(
            self.enc,
            task,
            rsp.status,
            rsp.data_in,
            rsp.sense,
            rsp.data_out_length,
            self._take_statsn(),
            window.exp,
            window.max_cmdsn,
            self._mrdsl,
            self._max_burst,
        )
        self.transport.writelines(bufs)  # type: ignore[union-attr]

    def _finish(self, task: Task) -> None:
        """Forget a task (completed, failed or aborted) and give back what it held."""
        if self.tasks.get(task.itt) is task:
            del self.tasks[task.itt]
        if task.counted:
            task.counted = False
            self.window.inflight -= 1  # type: ignore[union-attr]
        if task.reserved:
            self._reserved -= task.reserved
            task.reserved = 0
            if self._budget_wait:
                self._retry_budget()
        task.data = None

    def _fail(self, task: Task, sense: bytes, why: str) -> None:
        log.warning("connection %s: task 0x%08x failed: %s", self.peer, task.itt, why)
        with contextlib.suppress(ValueError):
            self._order.remove(task)
        task.is_write = False
        task.is_read = False
        self._complete(task, Response(status=0x02, sense=sense))
        self._pump()

    # ---- Data-Out / R2T ------------------------------------------------------------------
    def _issue_r2ts(self, task: Task) -> None:
        budget = self.server.write_budget
        out: list[Any] = []
        while len(task.r2ts) < self._max_r2t and task.r2t_next < task.edtl:
            length = min(self._max_burst, task.edtl - task.r2t_next)
            if self._reserved + length > budget and (self._reserved or task.r2ts):
                if not task.waiting_budget:
                    task.waiting_budget = True
                    self._budget_wait.append(task)
                break
            self._reserved += length
            task.reserved += length
            ttt = self._next_ttt()
            offset = task.r2t_next
            task.r2ts[ttt] = R2TState(offset, offset + length)
            task.r2t_next = offset + length
            exp, mx = self._serials()
            out += self.enc.encode(
                0x31,
                0x80,
                0,
                task.lun_raw,
                task.itt,
                ttt,
                self.statsn,
                exp,
                mx,
                task.r2tsn,
                offset,
                length,
            )
            task.r2tsn += 1
        if out:
            self._write(out)

    def _retry_budget(self) -> None:
        waiting = self._budget_wait
        for _ in range(len(waiting)):
            task = waiting.popleft()
            task.waiting_budget = False
            if self.tasks.get(task.itt) is task:
                self._issue_r2ts(task)
            if self._budget_wait and self._budget_wait[-1] is task:
                break

    def _on_data_out(self, pdu: P.Pdu) -> None:
        task = self.tasks.get(pdu.itt)
        if task is None or task.data is None or task.delivered:
            # A task that already ended (failed, aborted, dropped by the CmdSN window).
            log.debug("connection %s: Data-Out for finished ITT 0x%08x", self.peer, pdu.itt)
            return
        try:
            seq_done = task.data_out(pdu.w20, pdu.w36, pdu.w40, pdu.data, pdu.final)
        except DataOutError as exc:
            self._fail(task, exc.sense, str(exc))
            return
        if task.ready:
            # Delivered now if the CmdSN window already released it, else when it does.
            if task in self._order:
                self._pump()
        elif seq_done:
            self._issue_r2ts(task)

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
        exp, mx = self._serials()
        self._write(
            self.enc.encode(
                0x20,
                0x80,
                0,
                pdu.lun_raw,
                pdu.itt,
                NO_TAG,
                self._take_statsn(),
                exp,
                mx,
                data=pdu.data,
            )
        )

    def _on_text(self, pdu: P.Pdu) -> None:
        session = self.session
        assert session is not None
        exp, mx = self._serials()
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
        self._write(
            self.enc.encode(
                0x24,
                flags,
                0,
                pdu.lun_raw,
                pdu.itt,
                ttt,
                self._take_statsn(),
                exp,
                mx,
                data=chunk,
            )
        )

    def _on_logout(self, pdu: P.Pdu) -> None:
        reason = pdu.flags & 0x7F
        response = 0
        if reason == 2:
            response = 2  # connection recovery is not supported (ErrorRecoveryLevel=0)
        elif reason == 1 and pdu.cid != (self.login.cid if self.login else 0):
            response = 1  # CID not found: we have only this connection
        exp, mx = self._serials()
        self._write(
            self.enc.encode(
                0x26,
                0x80,
                response << 8,
                0,
                pdu.itt,
                0,
                self._take_statsn(),
                exp,
                mx,
                0,
                0,
                0,
            )
        )
        if response == 0:
            self._logged_out = True
            self.close_after_flush()
            self._teardown("logout")

    _NON_SCSI = {0x02: TmfMixin._on_tmf, 0x04: _on_text, 0x06: _on_logout}


class _LoginRefused(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def _extended_cdb(ahs: bytes) -> bytes:
    """AHS type 1 (extended CDB) carries CDB bytes beyond the first 16."""
    pos = 0
    while pos + 4 <= len(ahs):
        length = int.from_bytes(ahs[pos : pos + 2], "big")
        kind = ahs[pos + 2]
        if kind == 1:
            return bytes(ahs[pos + 4 : pos + 3 + length])
        pos += (3 + length + 3) & ~3
    return b""


LoginRefused = _LoginRefused
