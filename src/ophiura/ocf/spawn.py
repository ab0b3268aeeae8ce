"""Spawn a daemon from a short-lived OCF action process, with the cluster's pidfile format.

The cluster's `ProcessAgent` spawns through asyncio, whose subprocess transport kills a child it
still owns when collected; that is right for a long-lived node daemon but wrong for an OCF `start`
action, which exits right after starting the daemon. So this agent launches with
`subprocess.Popen` (`_launch`, `_exit_within`); the rest of start (parameters, the "PID
STARTTIME" pidfile, the exit check), stop and monitor are the `ProcessAgent`'s own.
"""

from __future__ import annotations

import asyncio
import subprocess
import time
from pathlib import Path
from typing import Any

from ophiura.cluster.agents.base import Resource
from ophiura.cluster.agents.process import (
    ProcessAgent,
)

POLL = 0.05


class DaemonAgent(ProcessAgent):
    """A `ProcessAgent` whose start outlives the calling process; `pidfile` pins the pidfile."""

    def __init__(self, rsctmp: Path | str | None = None, pidfile: Path | None = None) -> None:
        super().__init__(rsctmp)
        self._pinned = pidfile
        self._popen: dict[int, subprocess.Popen[bytes]] = {}

    def pidfile(self, resource: Resource) -> Path:
        if self._pinned is not None:
            self._pinned.parent.mkdir(parents=True, exist_ok=True)
            return self._pinned
        return super().pidfile(resource)

    async def _launch(self, cmd: list[str], cwd: str, out: Any) -> int:
        """Popen, not asyncio: the OCF action exits right after start, and the daemon with it
        would be killed when asyncio's transport for it is collected."""
        proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=cwd,
            start_new_session=True,
        )
        self._popen[proc.pid] = proc
        return proc.pid

    async def _exit_within(self, pid: int, wait: float) -> int | None:
        proc = self._popen.get(pid)
        if proc is None:
            return None
        deadline = time.monotonic() + wait
        while proc.poll() is None and time.monotonic() < deadline:
            await asyncio.sleep(POLL)
        return proc.poll()
