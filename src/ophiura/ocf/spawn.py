"""Spawn a daemon from a short-lived OCF action process, with the cluster's pidfile format.

The cluster's `ProcessAgent` spawns through asyncio, whose subprocess transport kills a child it
still owns when collected; that is right for a long-lived node daemon but wrong for an OCF `start`
action, which exits right after starting the daemon. So start uses `subprocess.Popen` (new
session, output to a log file) and writes the same "PID STARTTIME" pidfile; stop and monitor are
the `ProcessAgent`'s own, reading the pidfile this agent names.
"""

from __future__ import annotations

import asyncio
import subprocess
import time
from pathlib import Path

from ophiura.cluster.agents.base import OcfCode, Outcome, Resource
from ophiura.cluster.agents.params import (
    ParamError,
    Params,
    config_error,
    done,
    safe_name,
)
from ophiura.cluster.agents.process import (
    PidRecord,
    ProcessAgent,
    proc_starttime,
    read_pidfile,
    write_pidfile,
)
from ophiura.cluster.agents.process_runner import netns_prefix

POLL = 0.05


class DaemonAgent(ProcessAgent):
    """A `ProcessAgent` whose start outlives the calling process; `pidfile` pins the pidfile."""

    def __init__(self, rsctmp: Path | str | None = None, pidfile: Path | None = None) -> None:
        super().__init__(rsctmp)
        self._pinned = pidfile

    def pidfile(self, resource: Resource) -> Path:
        if self._pinned is not None:
            self._pinned.parent.mkdir(parents=True, exist_ok=True)
            return self._pinned
        return super().pidfile(resource)

    async def start(self, resource: Resource, timeout: float) -> Outcome:
        t0 = time.monotonic()
        p = Params(resource)
        try:
            argv = p.argv("command")
            cwd = p.text("cwd", "/")
            start_wait = p.number("start_wait", 0.2)
            logfile = Path(p.text("log", str(self.dir() / f"{safe_name(resource.name)}.log")))
        except ParamError as exc:
            return config_error(exc, t0)
        pidfile = self.pidfile(resource)
        rec = read_pidfile(pidfile)
        if rec is not None and rec.alive():
            return done(OcfCode.SUCCESS, t0, f"already running as pid {rec.pid}")
        try:
            with open(logfile, "ab") as out:
                proc = subprocess.Popen(
                    [*netns_prefix(p.netns), *argv],
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    cwd=cwd,
                    start_new_session=True,
                )
        except FileNotFoundError as exc:
            return done(OcfCode.ERR_INSTALLED, t0, f"{argv[0]}: not found ({exc.strerror})")
        except PermissionError as exc:
            return done(OcfCode.ERR_PERM, t0, f"{argv[0]}: {exc.strerror}")
        except OSError as exc:
            return done(OcfCode.ERR_GENERIC, t0, f"{argv[0]}: {exc}")
        st = proc_starttime(proc.pid)
        if st is not None:
            write_pidfile(pidfile, PidRecord(proc.pid, st))
        deadline = time.monotonic() + min(start_wait, max(0.0, timeout - (time.monotonic() - t0)))
        while proc.poll() is None and time.monotonic() < deadline:
            await asyncio.sleep(POLL)
        if proc.poll() is not None or st is None:
            pidfile.unlink(missing_ok=True)
            return done(
                OcfCode.ERR_GENERIC,
                t0,
                f"{argv[0]} exited with status {proc.returncode} within {start_wait:g}s "
                f"(log: {logfile})",
            )
        return done(OcfCode.SUCCESS, t0)
