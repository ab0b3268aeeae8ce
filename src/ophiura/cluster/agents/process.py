"""`process`: run a command and supervise it (the daemon is ours; no init script needed).

Params: `command` (required; split like a shell would, not run through one), `check` (optional
command line run by monitor with `/bin/sh -c`: exit 0 = healthy), `cwd` (default /), `log`
(file for its output, default `<state dir>/<name>.log`, appended), `grace` (seconds between
SIGTERM and SIGKILL on stop, default 10, never past the stop timeout), `start_wait` (seconds it
must stay alive for start to succeed, default 0.2), `netns`.

- The process leads its own session (process group), so stop signals the whole group and a
  crash of the cluster daemon (kill -9) leaves it running: the next daemon finds it by pidfile.
- The pidfile (`<state dir>/process-<name>.pid`) holds "PID STARTTIME" (field 22 of
  /proc/PID/stat), so a recycled PID is never mistaken for ours.
- monitor: pidfile absent -> NOT_RUNNING; process gone or a zombie -> ERR_GENERIC (it died; its
  exit status is in the reason when we were its parent); `check` failing -> ERR_GENERIC.
- stop: SIGTERM to the group, wait `grace`, SIGKILL, wait; stopped or absent -> SUCCESS.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ophiura.cluster.agents.base import OcfCode, Outcome, Resource
from ophiura.cluster.agents.params import (
    ParamError,
    Params,
    config_error,
    done,
    safe_name,
    state_dir,
)
from ophiura.cluster.agents.process_runner import netns_prefix, run_process, to_outcome

log = logging.getLogger(__name__)

POLL = 0.05


def proc_starttime(pid: int) -> int | None:
    """Start time of `pid` in clock ticks since boot, None if gone (a zombie counts as gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # comm may contain spaces and parens: split after the last ')'
    fields = stat[stat.rfind(")") + 2 :].split()
    if fields[0] in ("Z", "X"):
        return None
    return int(fields[19])


@dataclass(frozen=True)
class PidRecord:
    pid: int
    starttime: int

    def alive(self) -> bool:
        return proc_starttime(self.pid) == self.starttime


def read_pidfile(path: Path) -> PidRecord | None:
    try:
        words = path.read_text().split()
        return PidRecord(int(words[0]), int(words[1]))
    except (OSError, ValueError, IndexError):
        return None


def write_pidfile(path: Path, rec: PidRecord) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(f"{rec.pid} {rec.starttime}\n")
    os.replace(tmp, path)


def signal_tree(rec: PidRecord, sig: int) -> None:
    """Signal the process's group if it leads one (it does when we started it), else it."""
    if not rec.alive():
        return
    with contextlib.suppress(ProcessLookupError, PermissionError):
        if os.getpgid(rec.pid) == rec.pid:
            os.killpg(rec.pid, sig)
        else:
            os.kill(rec.pid, sig)


async def wait_gone(rec: PidRecord, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while rec.alive():
        if time.monotonic() >= deadline:
            return False
        await asyncio.sleep(POLL)
    return True


async def terminate(rec: PidRecord, grace: float, timeout: float) -> tuple[bool, str]:
    """SIGTERM, `grace`, SIGKILL; (gone, what happened)."""
    t0 = time.monotonic()
    signal_tree(rec, signal.SIGTERM)
    if await wait_gone(rec, min(grace, timeout)):
        return True, "stopped by SIGTERM"
    signal_tree(rec, signal.SIGKILL)
    left = max(0.2, timeout - (time.monotonic() - t0))
    if await wait_gone(rec, left):
        return True, f"did not stop within {grace:g}s of SIGTERM: killed with SIGKILL"
    return False, f"pid {rec.pid} survived SIGKILL (stuck in the kernel?)"


class ProcessAgent:
    def __init__(self, rsctmp: Path | str | None = None) -> None:
        self._rsctmp = Path(rsctmp) if rsctmp else None
        self._children: dict[int, asyncio.subprocess.Process] = {}
        self._exits: dict[int, int] = {}  # pid -> exit status, for the reason of a failure
        self._waiters: set[asyncio.Task[None]] = set()

    def dir(self) -> Path:
        path = self._rsctmp or state_dir()
        path.mkdir(parents=True, exist_ok=True)
        return path

    def pidfile(self, resource: Resource) -> Path:
        return self.dir() / f"process-{safe_name(resource.name)}.pid"

    def _reap(self, proc: asyncio.subprocess.Process) -> None:
        async def wait() -> None:
            rc = await proc.wait()
            self._children.pop(proc.pid, None)
            self._exits[proc.pid] = rc
            while len(self._exits) > 256:
                self._exits.pop(next(iter(self._exits)))

        task = asyncio.get_running_loop().create_task(wait())
        self._waiters.add(task)
        task.add_done_callback(self._waiters.discard)

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
                pid = await self._launch([*netns_prefix(p.netns), *argv], cwd, out)
        except FileNotFoundError as exc:
            return done(OcfCode.ERR_INSTALLED, t0, f"{argv[0]}: not found ({exc.strerror})")
        except PermissionError as exc:
            return done(OcfCode.ERR_PERM, t0, f"{argv[0]}: {exc.strerror}")
        except OSError as exc:
            return done(OcfCode.ERR_GENERIC, t0, f"{argv[0]}: {exc}")
        st = proc_starttime(pid)
        if st is not None:
            write_pidfile(pidfile, PidRecord(pid, st))
            wait = min(start_wait, max(0.0, timeout - (time.monotonic() - t0)))
        else:  # already gone: wait (briefly) for its exit status
            wait = min(1.0, max(0.0, timeout - (time.monotonic() - t0)))
        returncode = await self._exit_within(pid, wait)
        if returncode is not None or st is None:
            pidfile.unlink(missing_ok=True)
            return done(
                OcfCode.ERR_GENERIC,
                t0,
                f"{argv[0]} exited with status {returncode} within {start_wait:g}s",
                _tail(logfile),
            )
        return done(OcfCode.SUCCESS, t0)

    async def _launch(self, cmd: list[str], cwd: str, out: Any) -> int:
        """Start the daemon in a session of its own, output to `out`; its pid. The child stays
        this agent's to reap (`_reap`): the node daemon outlives it."""
        proc = await asyncio.create_subprocess_exec(
            *cmd,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=out,
            stderr=asyncio.subprocess.STDOUT,
            cwd=cwd,
            start_new_session=True,
        )
        self._children[proc.pid] = proc
        self._reap(proc)
        return proc.pid

    async def _exit_within(self, pid: int, wait: float) -> int | None:
        """The child's exit status if it exits within `wait` seconds, else None."""
        proc = self._children.get(pid)
        if proc is None:  # already reaped
            return self._exits.get(pid)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(proc.wait(), wait)
        return proc.returncode

    async def stop(self, resource: Resource, timeout: float) -> Outcome:
        t0 = time.monotonic()
        p = Params(resource)
        try:
            grace = p.number("grace", 10.0)
        except ParamError as exc:
            return config_error(exc, t0)
        pidfile = self.pidfile(resource)
        rec = read_pidfile(pidfile)
        if rec is None or not rec.alive():
            pidfile.unlink(missing_ok=True)
            return done(OcfCode.SUCCESS, t0)
        # leave a little of the timeout for the SIGKILL step
        grace = min(grace, max(0.0, timeout * 0.8))
        gone, what = await terminate(rec, grace, timeout - (time.monotonic() - t0))
        if not gone:
            return Outcome(OcfCode.ERR_GENERIC, time.monotonic() - t0, timed_out=True, reason=what)
        pidfile.unlink(missing_ok=True)
        return done(OcfCode.SUCCESS, t0, what)

    async def monitor(self, resource: Resource, timeout: float) -> Outcome:
        t0 = time.monotonic()
        p = Params(resource)
        rec = read_pidfile(self.pidfile(resource))
        if rec is None:
            return done(OcfCode.NOT_RUNNING, t0)
        if not rec.alive():
            await asyncio.sleep(0)  # let the reaper record the exit status
            status = self._exits.get(rec.pid)
            how = f" (exit status {status})" if status is not None else ""
            return done(OcfCode.ERR_GENERIC, t0, f"pid {rec.pid} is gone{how}")
        check = p.opt("check")
        if check:
            argv = [*netns_prefix(p.netns), "/bin/sh", "-c", check]
            res = await run_process(argv, max(0.1, timeout - (time.monotonic() - t0)))
            out = to_outcome(
                res,
                lambda rc: OcfCode.SUCCESS if rc == 0 else OcfCode.ERR_GENERIC,
                f"{resource.name} check",
            )
            if not out.ok:
                return Outcome(
                    out.code, time.monotonic() - t0, out.output, out.timed_out, out.reason
                )
        return done(OcfCode.SUCCESS, t0)

    async def validate(self, resource: Resource, timeout: float) -> Outcome:
        t0 = time.monotonic()
        p = Params(resource)
        try:
            p.argv("command")
            p.number("grace", 10.0)
            p.number("start_wait", 0.2)
            cwd = p.text("cwd", "/")
        except ParamError as exc:
            return config_error(exc, t0)
        if not os.path.isdir(cwd):
            return done(OcfCode.ERR_CONFIGURED, t0, f"cwd {cwd!r} is not a directory")
        return done(OcfCode.SUCCESS, t0)


def _tail(path: Path, limit: int = 4096) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - limit))
            return f.read().decode(errors="replace")
    except OSError:
        return ""
