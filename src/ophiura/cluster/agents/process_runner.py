"""Run one external action (an OCF script, an init script, a command) under a hard time limit.

Every agent that shells out goes through `run_process`, so the same guarantees hold for all:
- the action runs in its own session (its own process group), so a timeout kills the action *and
  everything it forked* (SIGTERM to the group, then SIGKILL after `kill_grace`) — Pacemaker's
  "agent hung, its children lived on" is not possible;
- output (stdout and stderr merged, in order) is kept as a bounded tail: a chatty agent cannot
  grow our memory, and the tail is what the event log and notifications show;
- a start script that leaves a daemon holding our pipe does not hang the action: once the action
  itself has exited we drain the pipe for `drain` seconds, then hand it to a discarding reader
  (closing it would kill the daemon with SIGPIPE on its next write);
- cancelling the caller kills the group too, then re-raises.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from ophiura.cluster.agents.base import OcfCode, Outcome

log = logging.getLogger(__name__)

OUTPUT_LIMIT = 8192  # bytes of output tail kept per action
KILL_GRACE = 2.0  # seconds between SIGTERM and SIGKILL of a timed-out action's group
DRAIN = 0.3  # seconds to keep reading after the action exited (daemons holding the pipe)
_READ_CHUNK = 65536

# Pipes handed off to a discarding reader (see module docstring); strong refs keep them alive.
_discarders: set[asyncio.Task[None]] = set()


@dataclass(frozen=True)
class RunResult:
    """What one process run did. `returncode` is None when it could not be run or was killed."""

    returncode: int | None
    output: str
    elapsed: float
    timed_out: bool = False
    error: str = ""  # why it could not run (exec failure), empty otherwise
    missing: bool = False  # the program was not found
    denied: bool = False  # the program was not executable


class TailBuffer:
    """Keeps the last `limit` bytes written to it, and counts what it dropped."""

    def __init__(self, limit: int = OUTPUT_LIMIT) -> None:
        self.limit = limit
        self._buf = bytearray()
        self.dropped = 0

    def feed(self, data: bytes) -> None:
        self._buf += data
        excess = len(self._buf) - self.limit
        if excess > 0:
            del self._buf[:excess]
            self.dropped += excess

    def text(self) -> str:
        body = self._buf.decode(errors="replace")
        if self.dropped:
            return f"[... {self.dropped} bytes of output dropped ...]\n{body}"
        return body


def _signal_group(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


async def wait_exit(proc: asyncio.subprocess.Process) -> int:
    """Wait for the process itself to exit.

    Not `proc.wait()`: in Python 3.11 that also waits for every pipe to close, so a daemon the
    action left holding stdout would make a finished action look hung. A pidfd becomes readable
    when the process exits; the child watcher then reaps it and sets `returncode`.
    """
    if proc.returncode is not None:
        return proc.returncode
    loop = asyncio.get_running_loop()
    try:
        fd: int | None = os.pidfd_open(proc.pid)
    except OSError:  # already reaped (returncode is on its way), or no pidfd support
        fd = None
    if fd is not None:
        exited = loop.create_future()
        loop.add_reader(fd, lambda: exited.done() or exited.set_result(None))
        try:
            await exited
        finally:
            loop.remove_reader(fd)
            os.close(fd)
    delay = 0.001
    while proc.returncode is None:
        await asyncio.sleep(delay)
        delay = min(delay * 2, 0.05)
    return proc.returncode


async def _kill_group(proc: asyncio.subprocess.Process, grace: float) -> None:
    """SIGTERM the action's process group, wait `grace`, then SIGKILL what is left."""
    pgid = proc.pid  # start_new_session: the action leads its own group
    _signal_group(pgid, signal.SIGTERM)
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(wait_exit(proc), grace)
    # The leader may be gone while children linger in the group: kill them too.
    if proc.returncode is None or _group_alive(pgid):
        _signal_group(pgid, signal.SIGKILL)
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(wait_exit(proc), grace)


async def _pump(stream: asyncio.StreamReader, tail: TailBuffer) -> None:
    while True:
        chunk = await stream.read(_READ_CHUNK)
        if not chunk:
            return
        tail.feed(chunk)


async def _discard(stream: asyncio.StreamReader) -> None:
    with contextlib.suppress(Exception):
        while await stream.read(_READ_CHUNK):
            pass


def _hand_off(stream: asyncio.StreamReader) -> None:
    task = asyncio.get_running_loop().create_task(_discard(stream))
    _discarders.add(task)
    task.add_done_callback(_discarders.discard)


async def run_process(
    argv: Sequence[str],
    timeout: float,
    *,
    env: Mapping[str, str] | None = None,
    cwd: str | None = None,
    stdin: bytes | None = None,
    output_limit: int = OUTPUT_LIMIT,
    kill_grace: float = KILL_GRACE,
    drain: float = DRAIN,
) -> RunResult:
    """Run `argv` (no shell) for at most `timeout` seconds; see the module docstring."""
    t0 = time.monotonic()
    tail = TailBuffer(output_limit)
    # A cancel that lands while asyncio is still wiring the pipes would have asyncio SIGKILL only
    # the leader, orphaning its children: shield the spawn, then kill the group ourselves.
    spawn = asyncio.ensure_future(
        asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            env=dict(env) if env is not None else None,
            cwd=cwd,
            start_new_session=True,
        )
    )
    try:
        try:
            proc = await asyncio.shield(spawn)
        except asyncio.CancelledError:
            with contextlib.suppress(OSError):
                spawned = await spawn
                await _kill_group(spawned, kill_grace)
            raise
    except FileNotFoundError as exc:
        return RunResult(
            None, "", time.monotonic() - t0, error=f"{argv[0]}: not found ({exc})", missing=True
        )
    except PermissionError as exc:
        return RunResult(
            None, "", time.monotonic() - t0, error=f"{argv[0]}: not executable ({exc})", denied=True
        )
    except OSError as exc:
        return RunResult(None, "", time.monotonic() - t0, error=f"{argv[0]}: {exc}")
    assert proc.stdout is not None
    pump = asyncio.create_task(_pump(proc.stdout, tail))
    timed_out = False
    try:
        if stdin is not None:
            assert proc.stdin is not None
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                proc.stdin.write(stdin)
                await proc.stdin.drain()
            proc.stdin.close()
        try:
            await asyncio.wait_for(wait_exit(proc), max(0.0, timeout - (time.monotonic() - t0)))
        except TimeoutError:
            timed_out = True
            log.warning("%s: timed out after %.1fs, killing its process group", argv[0], timeout)
            await _kill_group(proc, kill_grace)
        # Output written just before exit is still in the pipe; a daemon may hold it forever.
        done, _ = await asyncio.wait({pump}, timeout=drain)
        if not done:
            pump.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await pump
            _hand_off(proc.stdout)
    except asyncio.CancelledError:
        if proc.returncode is None:
            await asyncio.shield(_kill_group(proc, kill_grace))
        pump.cancel()
        raise
    elapsed = time.monotonic() - t0
    return RunResult(
        None if timed_out else proc.returncode, tail.text(), elapsed, timed_out=timed_out
    )


def ocf_code(rc: int) -> OcfCode:
    """An exit status read as an OCF return code (anything outside 0-9, 190, 191 is generic)."""
    try:
        return OcfCode(rc)
    except ValueError:
        return OcfCode.ERR_GENERIC


def exit_reason(output: str) -> str:
    """The last `ocf-exit-reason:` line an OCF agent printed (ocf_exit_reason), if any."""
    reason = ""
    for line in output.splitlines():
        _, sep, rest = line.partition("ocf-exit-reason:")
        if sep:
            reason = rest.strip()
    return reason


def to_outcome(
    result: RunResult, mapper: Callable[[int], OcfCode] = ocf_code, what: str = ""
) -> Outcome:
    """Turn a run into an Outcome: exec failures, timeouts and signals get their own reasons."""
    label = f"{what}: " if what else ""
    if result.timed_out:
        return Outcome(
            OcfCode.ERR_GENERIC,
            result.elapsed,
            result.output,
            timed_out=True,
            reason=f"{label}timed out after {result.elapsed:.1f}s (process group killed)",
        )
    if result.returncode is None:
        code = (
            OcfCode.ERR_INSTALLED
            if result.missing
            else OcfCode.ERR_PERM
            if result.denied
            else OcfCode.ERR_GENERIC
        )
        return Outcome(code, result.elapsed, result.output, reason=label + result.error)
    rc = result.returncode
    if rc < 0:
        try:
            signame = signal.Signals(-rc).name
        except ValueError:
            signame = f"signal {-rc}"
        return Outcome(
            OcfCode.ERR_GENERIC, result.elapsed, result.output, reason=f"{label}killed by {signame}"
        )
    code = mapper(rc)
    reason = exit_reason(result.output)
    if not reason and code != OcfCode.SUCCESS:
        last = result.output.strip().splitlines()[-1:] or [""]
        reason = f"exit status {rc}" + (f": {last[0][:200]}" if last[0] else "")
    return Outcome(code, result.elapsed, result.output, reason=label + reason if reason else "")


async def run_action(
    argv: Sequence[str],
    timeout: float,
    mapper: Callable[[int], OcfCode] = ocf_code,
    *,
    what: str = "",
    **kw: object,
) -> Outcome:
    """`run_process` + `to_outcome`: the one-liner most agents need."""
    return to_outcome(await run_process(argv, timeout, **kw), mapper, what)  # type: ignore[arg-type]


def netns_prefix(netns: str | None) -> list[str]:
    """argv prefix that runs a command inside network namespace `netns` (empty for none)."""
    return ["ip", "netns", "exec", netns] if netns else []
