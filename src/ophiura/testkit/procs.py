"""Processes a test, a benchmark or the demo starts: spawn, wait for a port, stop by PID.

Every process is started by us and stopped by its PID only (never by name): SIGCONT (a paused
process cannot die of SIGTERM), SIGTERM, a bounded wait, then SIGKILL. Inside a network
namespace a process is started with `ip netns exec`, which execs it: the PID is the program's.
Each leads its own session (`start_new_session`), so a terminal's ^C reaches only the caller,
and its output goes to a log file whose tail the error messages show.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ophiura.testkit.ports import HOST

STEP = 0.05


class NotListening(RuntimeError):
    """A server did not accept connections in time, or exited before it did."""


def log_tail(path: Path | None, lines: int = 40) -> str:
    """The last `lines` lines of a log file ("" when there is none)."""
    if path is None:
        return ""
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def _exited(proc: subprocess.Popen[bytes] | None, port: int) -> NotListening | None:
    if proc is not None and proc.poll() is not None:
        return NotListening(
            f"process {proc.pid} exited with {proc.returncode} before listening on {port}"
        )
    return None


def wait_port(
    port: int,
    timeout: float = 20.0,
    proc: subprocess.Popen[bytes] | None = None,
    host: str = HOST,
) -> None:
    """Poll until `host:port` accepts a TCP connection; fail early if `proc` exits."""
    deadline = time.monotonic() + timeout
    while True:
        if err := _exited(proc, port):
            raise err
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise NotListening(f"nothing listens on {host}:{port} after {timeout:g} s")
        time.sleep(STEP)


async def wait_port_async(
    port: int,
    timeout: float = 20.0,
    proc: subprocess.Popen[bytes] | None = None,
    host: str = HOST,
) -> None:
    """`wait_port` for a coroutine (the event loop runs between attempts)."""
    deadline = time.monotonic() + timeout
    while True:
        if err := _exited(proc, port):
            raise err
        try:
            _, w = await asyncio.wait_for(asyncio.open_connection(host, port), 0.5)
            w.close()
            return
        except (OSError, TimeoutError):
            pass
        if time.monotonic() > deadline:
            raise NotListening(f"nothing listens on {host}:{port} after {timeout:g} s")
        await asyncio.sleep(STEP)


def signal_pid(proc: subprocess.Popen[bytes], sig: int) -> None:
    """Send `sig` to the process we started, if it still runs (never to a reused PID: a
    Popen we have not reaped keeps its PID)."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, sig)


def kill9(proc: subprocess.Popen[bytes], timeout: float = 5.0) -> int | None:
    """SIGKILL and reap (a zombie keeps its PID: pidfile checks would think it alive)."""
    signal_pid(proc, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout)
    return proc.poll()


def stop(proc: subprocess.Popen[bytes], timeout: float = 10.0) -> int | None:
    """SIGCONT + SIGTERM, wait up to `timeout`, then SIGKILL; the exit code."""
    if proc.poll() is None:
        signal_pid(proc, signal.SIGCONT)
        signal_pid(proc, signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            kill9(proc, timeout)
    return proc.poll()


def stop_all(procs: list[subprocess.Popen[bytes]], timeout: float = 10.0) -> None:
    """Stop several at once: SIGTERM to all, one shared deadline, then SIGKILL what is left."""
    for proc in procs:
        signal_pid(proc, signal.SIGCONT)
        signal_pid(proc, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    for proc in procs:
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(max(0.1, deadline - time.monotonic()))
    for proc in procs:
        if proc.poll() is None:
            kill9(proc)


@dataclass
class Proc:
    """A process we started (inside namespace `ns`, if any); stopped by PID only."""

    name: str
    popen: subprocess.Popen[bytes]
    log: Path | None = None
    ns: str | None = None

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def signal(self, sig: int) -> None:
        signal_pid(self.popen, sig)

    def kill9(self) -> None:
        kill9(self.popen)

    def stop(self, timeout: float = 10.0) -> int | None:
        return stop(self.popen, timeout)

    def tail(self, lines: int = 30) -> str:
        return log_tail(self.log, lines)

    def wait_port(self, port: int, timeout: float = 20.0, host: str = HOST) -> None:
        """Wait until `host:port` accepts connections (from our namespace: use it only for a
        process that is not in another one); the log's tail on failure."""
        try:
            wait_port(port, timeout, self.popen, host)
        except NotListening as exc:
            raise NotListening(f"{self.name}: {exc}\n{self.tail()}") from None


def spawn(
    argv: list[str],
    name: str = "",
    log: Path | None = None,
    env: dict[str, str] | None = None,
    cwd: Path | str | None = None,
    ns: str | None = None,
) -> Proc:
    """Start `argv` (inside network namespace `ns` with `ip netns exec`, which execs it: same
    PID), stdin closed, stdout and stderr appended to `log` (discarded without one), in a
    session of its own."""
    out: Any = subprocess.DEVNULL
    if log is not None:
        log.parent.mkdir(parents=True, exist_ok=True)
        out = log.open("ab")
    full = ["ip", "netns", "exec", ns, *argv] if ns else list(argv)
    try:
        popen = subprocess.Popen(
            full,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=cwd,
            start_new_session=True,
        )
    finally:
        if log is not None:
            out.close()
    return Proc(name or Path(argv[0]).name, popen, log, ns)
