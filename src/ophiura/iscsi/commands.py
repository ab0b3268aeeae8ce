"""SCSI commands on the target (RFC 7143 §11.3-11.8): the connection's per-command path.

A SCSI Command PDU becomes a `Task`. Write data is collected first (immediate data, unsolicited
Data-Out, then R2T-solicited Data-Out within MaxOutstandingR2T and the connection's write
budget); a task is delivered to the device server once it holds all its data and its CmdSN turn
has come, honouring task attributes (a SIMPLE task may pass a waiting one, nothing passes an
ORDERED or HEAD OF QUEUE one). Its completion goes out as Data-In and/or a SCSI Response built
by `task.build_completion`, with one `writelines`. A Data-Out error ends the task with CHECK
CONDITION.

This is the hot path: the common case (one command in CmdSN order, nothing waiting) goes
straight from `_on_scsi_command` to `_deliver`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from typing import Any

from ophiura.iscsi import pdu as P
from ophiura.iscsi.session import DELIVER, QUEUED, Session
from ophiura.iscsi.task import (
    SENSE_INTERNAL_FAILURE,
    SENSE_INVALID_FIELD_IN_CDB,
    DataOutError,
    R2TState,
    Task,
    build_completion,
    unsolicited_length,
)
from ophiura.scsi.api import Command, Response, TaskAborted, TaskAttribute

log = logging.getLogger(__name__)

_ATTRS = {a.value: a for a in TaskAttribute}
TASK_SET_FULL = 0x28


class CommandsMixin:
    """Mixed into IscsiConnection; uses its window, device server, encoder and writer."""

    # provided by IscsiConnection
    server: Any
    loop: asyncio.AbstractEventLoop
    transport: Any
    peer: str
    session: Session | None
    window: Any
    closed: bool
    enc: P.PduEncoder
    statsn: int
    tasks: dict[int, Task]
    _order: deque[Task]
    _budget_wait: deque[Task]
    _reserved: int
    _immediate: int
    _unsolicited: int
    _aborted_cmdsn: set[int]
    _mrdsl: int
    _max_burst: int
    _first_burst: int
    _initial_r2t: bool
    _immediate_data: bool
    _max_r2t: int
    _device: Any
    _nexus: Any

    # ---- arrival, CmdSN order, execution, completion -------------------------------------
    def _on_scsi_command(self, pdu: P.Pdu) -> None:
        session = self.session
        assert session is not None and self.window is not None
        if session.discovery:
            self._reject(P.RejectReason.PROTOCOL_ERROR, pdu.header)
            return
        if pdu.itt in self.tasks:
            self._reject(P.RejectReason.TASK_IN_PROGRESS, pdu.header)
            return
        # What this command would make us hold before the device server takes it: decided
        # before anything is allocated, so a refused command costs nothing (see server.py).
        edtl = pdu.w20
        held = 0
        if pdu.flags & P.F_WRITE and edtl:
            held = unsolicited_length(
                edtl, len(pdu.data), pdu.final, self._initial_r2t, self._first_burst
            )
        over = self._unsolicited > 0 and self._unsolicited + held > self.server.unsolicited_budget
        if pdu.immediate and (over or self._immediate >= self.server.max_immediate):
            why = "unsolicited-budget" if over else "too-many-immediate"
            self.server.counters[f"immediate-rejected:{why}"] += 1
            log.debug("connection %s: immediate command refused (%s)", self.peer, why)
            self._reject(P.RejectReason.IMMEDIATE_COMMAND_REJECT, pdu.header)
            return
        cdb = pdu.cdb
        if pdu.ahs:
            cdb = cdb + P.extended_cdb(pdu.ahs)
        task = Task(
            pdu.itt,
            pdu.lun_raw,
            P.decode_lun(pdu.lun_raw),
            cdb,
            pdu.flags,
            edtl,
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
            self._immediate += 1
        self.tasks[task.itt] = task
        if over or (task.is_write and task.edtl):
            failure = self._start_write(task, pdu) if not over else None
            if over or failure is not None:
                if failure is not None:
                    self._fail(task, *failure)
                else:  # its CmdSN is taken; the initiator retries it later
                    self.server.counters["task-set-full"] += 1
                    self._fail(task, b"", "unsolicited data budget full", TASK_SET_FULL)
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
        task.unsol_held = task.unsol_end
        self._unsolicited += task.unsol_held
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
            if task.immediate:
                self._immediate -= 1
        if task.unsol_held:
            self._unsolicited -= task.unsol_held
            task.unsol_held = 0
        if task.counted:
            task.counted = False
            self.window.inflight -= 1  # type: ignore[union-attr]
        if task.reserved:
            self._reserved -= task.reserved
            task.reserved = 0
            if self._budget_wait:
                self._retry_budget()
        task.data = None

    def _fail(self, task: Task, sense: bytes, why: str, status: int = 0x02) -> None:
        log.warning("connection %s: task 0x%08x failed: %s", self.peer, task.itt, why)
        with contextlib.suppress(ValueError):
            self._order.remove(task)
        task.is_write = False
        task.is_read = False
        self._complete(task, Response(status=status, sense=sense))
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
