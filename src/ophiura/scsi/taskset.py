"""The task set of one logical unit: which (nexus, tag) commands are running, and aborting them.

A command is an asyncio task running `ScsiTarget.execute`. Aborting it means cancelling that task;
the record remembers *why* it was cancelled so execute() can tell an abort (raise TaskAborted, or
return TASK ABORTED status when TAS=1 and another nexus caused it) from a transport shutdown
(re-raise CancelledError). A task management function completes only after the aborted commands
have really ended (SAM-5 7.1), which is what `wait_ended` gives.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable

from ophiura.scsi.api import Nexus


class TaskRecord:
    __slots__ = ("aborted", "ended", "finished", "nexus", "report_aborted", "tag", "task")

    def __init__(self, task: asyncio.Task[object] | None, nexus: Nexus, tag: int) -> None:
        self.task = task
        self.nexus = nexus
        self.tag = tag
        self.aborted = False
        self.report_aborted = False  # TAS=1 and aborted by another nexus: TASK ABORTED status
        self.ended: asyncio.Future[None] | None = None  # created only when someone waits
        self.finished = False

    def abort(self, report: bool) -> None:
        if self.aborted or self.task is None:
            return
        self.aborted = True
        self.report_aborted = report
        self.task.cancel()

    def finish(self) -> None:
        self.finished = True
        if self.ended is not None and not self.ended.done():
            self.ended.set_result(None)


class TaskSet:
    """Running commands of one LU keyed by (nexus, tag)."""

    __slots__ = ("running",)

    def __init__(self) -> None:
        self.running: dict[tuple[Nexus, int], TaskRecord] = {}

    def select(self, nexus: Nexus | None = None) -> list[TaskRecord]:
        if nexus is None:
            return list(self.running.values())
        return [r for r in self.running.values() if r.nexus == nexus]

    def find(self, nexus: Nexus, tag: int) -> TaskRecord | None:
        return self.running.get((nexus, tag))

    def abort(self, records: Iterable[TaskRecord], by: Nexus | None, tas: bool) -> list[TaskRecord]:
        """Cancel the records; with TAS=1, other nexuses' commands end with TASK ABORTED."""
        done = []
        for record in records:
            if record.aborted:
                continue
            record.abort(report=tas and by is not None and record.nexus != by)
            done.append(record)
        return done


async def wait_ended(records: Iterable[TaskRecord], timeout: float = 30.0) -> None:
    """Wait until the aborted commands have left execute() (bounded: a stuck backend can't hang
    task management forever)."""
    loop = asyncio.get_running_loop()
    waits = []
    for record in records:
        if record.finished or record.task is None or record.task.done():
            continue
        if record.ended is None:
            record.ended = loop.create_future()
        if not record.ended.done():
            waits.append(record.ended)
    if waits:
        await asyncio.wait(waits, timeout=timeout)
