"""Task management on the target (RFC 7143 §11.5, SAM-5 §7): the connection's TMF handling.

A TMF runs as its own asyncio task so that the connection keeps reading. Tasks that never
reached the device server (still collecting Data-Out, or waiting for their CmdSN turn) are ended
here; the rest is the device server's job (`task_management`), after which we wait (bounded)
for the affected tasks to end, so the TMF response follows them on the wire. Aborted tasks get no
response. ABORT TASK honours RefCmdSN: a referenced command that has not arrived yet counts as
aborted (it is discarded when it comes), one that already completed does not exist.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from ophiura.iscsi import pdu as P
from ophiura.iscsi.session import sn_diff
from ophiura.iscsi.task import Task
from ophiura.scsi.api import TmfFunction, TmfResult


class TmfMixin:
    """Mixed into IscsiConnection; uses its tasks, window, device server and writer."""

    # provided by IscsiConnection
    tasks: dict[int, Task]
    session: Any
    window: Any
    closed: bool
    server: Any
    _device: Any
    _nexus: Any
    _order: Any
    _aborted_cmdsn: set[int]
    _tmfs: int

    def _on_tmf(self, pdu: P.Pdu) -> None:
        # Each TMF may wait (up to tmf_wait) for the tasks it ends, and neither immediate TMFs
        # nor ones in CmdSN order hold a window slot: bound how many run at once.
        if self._tmfs >= self.server.max_immediate:
            self.server.counters["tmf-rejected"] += 1
            if pdu.immediate:
                self._reject(P.RejectReason.IMMEDIATE_COMMAND_REJECT, pdu.header)
            else:
                self._reply(0x22, 0x80, int(TmfResult.REJECTED) << 8, 0, pdu.itt, 0)
            return
        self._tmfs += 1
        self._spawn(self._tmf(pdu))

    async def _tmf(self, pdu: P.Pdu) -> None:
        function = pdu.flags & 0x7F
        lun = P.decode_lun(pdu.lun_raw)
        try:
            result = await self._tmf_result(function, lun, pdu)
        finally:
            self._tmfs -= 1
        if self.closed:
            return
        self._reply(0x22, 0x80, int(result) << 8, 0, pdu.itt, 0)
        if function == TmfFunction.TARGET_COLD_RESET and result == TmfResult.COMPLETE:
            self.close_after_flush()
            self._teardown("target cold reset")

    async def _tmf_result(self, function: int, lun: int, pdu: P.Pdu) -> TmfResult:
        session = self.session
        assert session is not None and self.window is not None
        if session.discovery:
            return TmfResult.REJECTED
        try:
            fn = TmfFunction(function)
        except ValueError:
            return TmfResult.NOT_SUPPORTED
        if fn == TmfFunction.TASK_REASSIGN:
            return TmfResult.REASSIGNMENT_NOT_SUPPORTED
        device = self._device
        assert device is not None and self._nexus is not None
        if fn == TmfFunction.ABORT_TASK:
            rtt = pdu.w20
            task = self.tasks.get(rtt)
            if task is None:
                ref = pdu.w32
                # Only a CmdSN the initiator may have sent (in the window) is remembered, so
                # the set stays within queue_depth entries.
                if self.window.in_window(ref) and sn_diff(ref, pdu.cmdsn) < 0:
                    self._aborted_cmdsn.add(ref)  # not yet arrived: consider it aborted
                    return TmfResult.COMPLETE
                return TmfResult.TASK_DOES_NOT_EXIST
            if not task.delivered:
                self._drop_local(task)
                return TmfResult.COMPLETE
            result = await device.task_management(self._nexus, fn, lun, rtt)
            await self._wait_tasks([task])
            return result
        # Task-set wide functions: end what never reached the device server ourselves.
        scope = [
            t for t in self.tasks.values() if fn >= TmfFunction.TARGET_WARM_RESET or t.lun == lun
        ]
        for t in scope:
            if not t.delivered:
                self._drop_local(t)
        result = await device.task_management(self._nexus, fn, lun, None)
        await self._wait_tasks([t for t in scope if t.delivered])
        return result

    def _drop_local(self, task: Task) -> None:
        with contextlib.suppress(ValueError):
            self._order.remove(task)
        self._finish(task)
        self._pump()

    async def _wait_tasks(self, tasks: list[Task]) -> None:
        futures = [t.future for t in tasks if t.future is not None and not t.future.done()]
        if futures:
            await asyncio.wait(futures, timeout=self.server.tmf_wait)
