"""SCSI commands on the target (RFC 7143 §11.3-11.8): `CommandPath`, held by the connection.

A SCSI Command PDU becomes a `Task`. Write data is collected first (immediate data, unsolicited
Data-Out, then R2T-solicited Data-Out within MaxOutstandingR2T and the connection's write
budget); a task is delivered to the device server once it holds all its data and its CmdSN turn
has come, honouring task attributes (a SIMPLE task may pass a waiting one, nothing passes an
ORDERED or HEAD OF QUEUE one). Its completion goes out as Data-In and/or a SCSI Response built
by `task.build_completion`, with one `writelines`. A Data-Out error ends the task with CHECK
CONDITION.

The connection creates one `CommandPath` when a normal session reaches full feature phase (a
discovery session has none) and hands it SCSI Command and Data-Out PDUs; it answers through the
connection's `Link`. Task management (`tmf.TaskManagement`) ends tasks through it.

This is the hot path: the common case (one command in CmdSN order, nothing waiting) goes
straight from `on_command` to `_deliver`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from typing import Any

from ophiura.iscsi import pdu as P
from ophiura.iscsi.link import Limits, Link
from ophiura.iscsi.session import DELIVER, QUEUED, CmdWindow, sn_diff
from ophiura.iscsi.task import (
    SENSE_INTERNAL_FAILURE,
    SENSE_INVALID_FIELD_IN_CDB,
    DataOutError,
    R2TState,
    Task,
    build_completion,
    unsolicited_length,
)
from ophiura.iscsi.text import SessionParams
from ophiura.scsi.api import (
    Command,
    DeviceServer,
    Nexus,
    Response,
    TaskAborted,
    TaskAttribute,
)

log = logging.getLogger(__name__)

_ATTRS = {a.value: a for a in TaskAttribute}
TASK_SET_FULL = 0x28


class CommandPath:
    """The SCSI tasks of one normal session's connection, from Command PDU to completion.

    It owns the connection's task set (by ITT), the queue of tasks released by the CmdSN window
    but not yet delivered, and what they hold against the server's `Limits` (write bytes promised,
    unsolicited bytes, immediate commands). Task management reaches tasks only through it.
    """

    def __init__(
        self,
        link: Link,
        limits: Limits,
        window: CmdWindow,
        enc: P.PduEncoder,
        params: SessionParams,
        device: DeviceServer,
        nexus: Nexus,
    ) -> None:
        self.link = link
        self.limits = limits
        self.window = window
        self.enc = enc
        self.device = device
        self.nexus = nexus
        self.loop = asyncio.get_running_loop()
        self.tasks: dict[int, Task] = {}
        self.aborted_cmdsn: set[int] = set()  # ABORT TASK for a command not yet arrived
        self._order: deque[Task] = deque()  # released by the window, not yet delivered
        self._budget_wait: deque[Task] = deque()  # waiting for write_budget to issue R2Ts
        self._reserved = 0  # write bytes promised to tasks (unsolicited + R2T'd): write_budget
        self._immediate = 0  # outstanding immediate SCSI commands: max_immediate
        self._unsolicited = 0  # unsolicited bytes of unfinished tasks: unsolicited_budget
        # negotiated values used on the hot path
        self._mrdsl = params.initiator_mrdsl
        self._max_burst = params.max_burst
        self._first_burst = params.first_burst
        self._initial_r2t = params.initial_r2t
        self._immediate_data = params.immediate_data
        self._max_r2t = params.max_r2t

    # ---- what the connection and task management ask -------------------------------------
    def held_bytes(self) -> int:
        """Write data held right now for unfinished tasks."""
        return sum(len(t.data) for t in self.tasks.values() if t.data is not None)

    def running(self) -> list[asyncio.Task[None]]:
        """Tasks the device server is executing."""
        return [
            t.future for t in self.tasks.values() if t.future is not None and not t.future.done()
        ]

    def abort_unarrived(self, ref_cmdsn: int, tmf_cmdsn: int) -> bool:
        """ABORT TASK for a command that has not arrived: remember its CmdSN, so it is discarded
        when it comes, if the initiator may have sent it (earlier than the TMF and inside the
        window; the set stays within queue_depth entries)."""
        if self.window.in_window(ref_cmdsn) and sn_diff(ref_cmdsn, tmf_cmdsn) < 0:
            self.aborted_cmdsn.add(ref_cmdsn)
            return True
        return False

    def drop_local(self, task: Task) -> None:
        """End a task that never reached the device server (collecting Data-Out, or waiting for
        its CmdSN turn): it gets no response."""
        with contextlib.suppress(ValueError):
            self._order.remove(task)
        self._finish(task)
        self._pump()

    def close(self) -> None:
        """The connection is gone: give back what undelivered tasks hold. Delivered ones end
        when the device server is done with them (the nexus loss aborts them)."""
        for task in list(self.tasks.values()):
            if not task.delivered:
                self._finish(task)
        self._order.clear()
        self._budget_wait.clear()

    # ---- arrival, CmdSN order, execution, completion -------------------------------------
    def on_command(self, pdu: P.Pdu) -> None:
        """A SCSI Command PDU."""
        link = self.link
        if pdu.itt in self.tasks:
            link.reject(P.RejectReason.TASK_IN_PROGRESS, pdu.header)
            return
        # What this command would make us hold before the device server takes it: decided
        # before anything is allocated, so a refused command costs nothing (see server.py).
        edtl = pdu.w20
        held = 0
        if pdu.flags & P.F_WRITE and edtl:
            held = unsolicited_length(
                edtl, len(pdu.data), pdu.final, self._initial_r2t, self._first_burst
            )
        limits = self.limits
        over = self._unsolicited > 0 and self._unsolicited + held > limits.unsolicited_budget
        if pdu.immediate and (over or self._immediate >= limits.max_immediate):
            why = "unsolicited-budget" if over else "too-many-immediate"
            limits.counters[f"immediate-rejected:{why}"] += 1
            log.debug("connection %s: immediate command refused (%s)", link.peer, why)
            link.reject(P.RejectReason.IMMEDIATE_COMMAND_REJECT, pdu.header)
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
                log.debug("connection %s: CmdSN 0x%08x outside window", link.peer, pdu.cmdsn)
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
                    limits.counters["task-set-full"] += 1
                    self._fail(task, b"", "unsolicited data budget full", TASK_SET_FULL)
                rest = [t for t in ready if t is not task]
                if rest:
                    self.run_ready(rest)
                return
        if ready:
            if len(ready) == 1 and not self._order and task.ready:
                self._deliver(task)  # the common case: in order, nothing waiting
            else:
                self.run_ready(ready)

    def _start_write(self, task: Task, pdu: P.Pdu) -> tuple[bytes, str] | None:
        if task.edtl > self.limits.max_edtl:
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
        if task.cmdsn in self.aborted_cmdsn:
            self.aborted_cmdsn.discard(task.cmdsn)
            self._finish(task)
            return
        self._order.append(task)

    def run_ready(self, ready: list[Any]) -> None:
        """Run what the CmdSN window released, in CmdSN order: tasks join the delivery queue,
        other requests (queued there by the connection as callables) run now."""
        for item in ready:
            if isinstance(item, Task):
                self._queue_task(item)
            else:
                item()
        self._pump()

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
        if self.link.closed:
            return
        task.delivered = True
        data = task.data
        cmd = Command(
            self.nexus,
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
            rsp = await self.device.execute(cmd)
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
        link = self.link
        if link.closed:
            return
        window = self.window
        bufs = build_completion(
            self.enc,
            task,
            rsp.status,
            rsp.data_in,
            rsp.sense,
            rsp.data_out_length,
            link.take_statsn(),
            window.exp,
            window.max_cmdsn,
            self._mrdsl,
            self._max_burst,
        )
        link.send(bufs)

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
            self.window.inflight -= 1
        if task.reserved:
            self._reserved -= task.reserved
            task.reserved = 0
            if self._budget_wait:
                self._retry_budget()
        task.data = None

    def _fail(self, task: Task, sense: bytes, why: str, status: int = 0x02) -> None:
        log.warning("connection %s: task 0x%08x failed: %s", self.link.peer, task.itt, why)
        with contextlib.suppress(ValueError):
            self._order.remove(task)
        task.is_write = False
        task.is_read = False
        self._complete(task, Response(status=status, sense=sense))
        self._pump()

    # ---- Data-Out / R2T ------------------------------------------------------------------
    def _issue_r2ts(self, task: Task) -> None:
        budget = self.limits.write_budget
        link = self.link
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
            ttt = link.next_ttt()
            offset = task.r2t_next
            task.r2ts[ttt] = R2TState(offset, offset + length)
            task.r2t_next = offset + length
            window = self.window
            out += self.enc.encode(
                0x31,
                0x80,
                0,
                task.lun_raw,
                task.itt,
                ttt,
                link.statsn,
                window.exp,
                window.max_cmdsn,
                task.r2tsn,
                offset,
                length,
            )
            task.r2tsn += 1
        if out:
            link.send(out)

    def _retry_budget(self) -> None:
        waiting = self._budget_wait
        for _ in range(len(waiting)):
            task = waiting.popleft()
            task.waiting_budget = False
            if self.tasks.get(task.itt) is task:
                self._issue_r2ts(task)
            if self._budget_wait and self._budget_wait[-1] is task:
                break

    def on_data_out(self, pdu: P.Pdu) -> None:
        """A SCSI Data-Out PDU."""
        task = self.tasks.get(pdu.itt)
        if task is None or task.data is None or task.delivered:
            # A task that already ended (failed, aborted, dropped by the CmdSN window).
            log.debug("connection %s: Data-Out for finished ITT 0x%08x", self.link.peer, pdu.itt)
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
