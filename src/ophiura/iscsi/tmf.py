"""Task management on the target (RFC 7143 §11.5, SAM-5 §7): `TaskManagement`, held by the
connection of a normal session.

A TMF runs as its own asyncio task so that the connection keeps reading. Tasks that never
reached the device server (still collecting Data-Out, or waiting for their CmdSN turn) are ended
here, through the `CommandPath` that holds them; the rest is the device server's job
(`task_management`), after which we wait (bounded) for the affected tasks to end, so the TMF
response follows them on the wire. Aborted tasks get no response. ABORT TASK honours RefCmdSN:
a referenced command that has not arrived yet counts as aborted (it is discarded when it comes),
one that already completed does not exist.
"""

from __future__ import annotations

import asyncio

from ophiura.iscsi import pdu as P
from ophiura.iscsi.commands import CommandPath
from ophiura.iscsi.link import Limits, Link
from ophiura.iscsi.task import Task
from ophiura.scsi.api import DeviceServer, Nexus, TmfFunction, TmfResult

TMF_RESPONSE = 0x22


def reply_rejected(link: Link, pdu: P.Pdu) -> None:
    """A TMF Response "Function rejected" (also what a discovery session gets)."""
    link.reply(TMF_RESPONSE, 0x80, int(TmfResult.REJECTED) << 8, 0, pdu.itt, 0)


class TaskManagement:
    """The TMF requests of one connection, acting on its `CommandPath` and device server."""

    def __init__(
        self,
        link: Link,
        limits: Limits,
        commands: CommandPath,
        device: DeviceServer,
        nexus: Nexus,
    ) -> None:
        self.link = link
        self.limits = limits
        self.commands = commands
        self.device = device
        self.nexus = nexus
        self.running = 0  # TMFs in progress: at most limits.max_immediate

    def on_request(self, pdu: P.Pdu) -> None:
        """A Task Management Function Request, immediate or in its CmdSN turn."""
        # Each TMF may wait (up to tmf_wait) for the tasks it ends, and neither immediate TMFs
        # nor ones in CmdSN order hold a window slot: bound how many run at once.
        if self.running >= self.limits.max_immediate:
            self.limits.counters["tmf-rejected"] += 1
            if pdu.immediate:
                self.link.reject(P.RejectReason.IMMEDIATE_COMMAND_REJECT, pdu.header)
            else:
                reply_rejected(self.link, pdu)
            return
        self.running += 1
        self.link.spawn(self._run(pdu))

    async def _run(self, pdu: P.Pdu) -> None:
        function = pdu.flags & 0x7F
        lun = P.decode_lun(pdu.lun_raw)
        try:
            result = await self._result(function, lun, pdu)
        finally:
            self.running -= 1
        link = self.link
        if link.closed:
            return
        link.reply(TMF_RESPONSE, 0x80, int(result) << 8, 0, pdu.itt, 0)
        if function == TmfFunction.TARGET_COLD_RESET and result == TmfResult.COMPLETE:
            link.close("target cold reset")

    async def _result(self, function: int, lun: int, pdu: P.Pdu) -> TmfResult:
        try:
            fn = TmfFunction(function)
        except ValueError:
            return TmfResult.NOT_SUPPORTED
        if fn == TmfFunction.TASK_REASSIGN:
            return TmfResult.REASSIGNMENT_NOT_SUPPORTED
        commands = self.commands
        if fn == TmfFunction.ABORT_TASK:
            rtt = pdu.w20
            task = commands.tasks.get(rtt)
            if task is None:
                if commands.abort_unarrived(pdu.w32, pdu.cmdsn):
                    return TmfResult.COMPLETE  # not yet arrived: consider it aborted
                return TmfResult.TASK_DOES_NOT_EXIST
            if not task.delivered:
                commands.drop_local(task)
                return TmfResult.COMPLETE
            result = await self.device.task_management(self.nexus, fn, lun, rtt)
            await self._wait_tasks([task])
            return result
        # Task-set wide functions: end what never reached the device server ourselves.
        scope = [
            t
            for t in commands.tasks.values()
            if fn >= TmfFunction.TARGET_WARM_RESET or t.lun == lun
        ]
        for t in scope:
            if not t.delivered:
                commands.drop_local(t)
        result = await self.device.task_management(self.nexus, fn, lun, None)
        await self._wait_tasks([t for t in scope if t.delivered])
        return result

    async def _wait_tasks(self, tasks: list[Task]) -> None:
        futures = [t.future for t in tasks if t.future is not None and not t.future.done()]
        if futures:
            await asyncio.wait(futures, timeout=self.limits.tmf_wait)
