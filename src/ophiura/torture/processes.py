"""The real processes of a run: `ophiura se` and `ophiura he` on free ports of 127.0.0.1.

Every process is started here and stopped here by its PID (SIGTERM, then SIGKILL); nothing is
found by name. Waits poll a condition with a deadline, never a fixed sleep.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ophiura.replication.he.control import ControlError, control_call

PLANT_ENV = "OPHIURA_TORTURE_PLANT"  # the HE's test-only bug switch (read by the HE once wired)
POWERLOSS_ENV = "OPHIURA_POWERLOSS_JOURNAL"
EIO_ENV = "OPHIURA_EIO_FLAG"


def _die_with_parent() -> None:
    """In the child before exec: SIGKILL when the harness dies (a backstop if the harness is
    itself killed before its `finally` stops everything by PID)."""
    import ctypes

    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def wait_port(port: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            _, w = await asyncio.open_connection("127.0.0.1", port)
            w.close()
            return True
        except OSError:
            await asyncio.sleep(0.05)
    return False


def _stop(
    proc: subprocess.Popen[bytes] | None, sig: int = signal.SIGTERM, wait: float = 10
) -> None:
    if proc is None or proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(proc.pid, signal.SIGCONT)  # a paused process cannot handle SIGTERM
        os.kill(proc.pid, sig)
    try:
        proc.wait(wait)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait(5)


@dataclass
class SeProc:
    name: str
    data_dir: Path
    secret_file: Path
    log_dir: Path
    log_size: str = "4M"
    port: int = field(default_factory=free_port)
    powerloss_dir: Path | None = None
    eio_flag: Path | None = None  # while this file exists the SE's disk fails (disk_io.py)
    proc: subprocess.Popen[bytes] | None = None
    paused: bool = False
    starts: int = 0

    def spawn(self) -> None:
        env = dict(os.environ)
        if self.powerloss_dir is not None:
            self.powerloss_dir.mkdir(parents=True, exist_ok=True)
            env[POWERLOSS_ENV] = str(self.powerloss_dir)
        if self.eio_flag is not None:
            env[EIO_ENV] = str(self.eio_flag)
        cmd = [sys.executable, "-m", "ophiura.cli", "se", "--name", self.name]
        cmd += ["--data-dir", str(self.data_dir), "--listen", f"127.0.0.1:{self.port}"]
        cmd += ["--log-size", self.log_size, "--secret-file", str(self.secret_file)]
        with open(self.log_dir / f"se-{self.name}.log", "ab") as log:
            self.proc = subprocess.Popen(
                cmd,
                stdout=subprocess.DEVNULL,
                stderr=log,
                env=env,
                preexec_fn=_die_with_parent,
            )
        self.paused = False
        self.starts += 1

    async def start(self, timeout: float = 15) -> None:
        self.spawn()
        if not await wait_port(self.port, timeout):
            raise RuntimeError(f"SE {self.name} not listening on {self.port} after {timeout}s")

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill9(self) -> None:
        if self.proc is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(5)
            self.proc = None
        self.paused = False

    def pause(self) -> None:
        if self.running and not self.paused:
            os.kill(self.proc.pid, signal.SIGSTOP)  # type: ignore[union-attr]
            self.paused = True

    def resume(self) -> None:
        if self.running and self.paused:
            os.kill(self.proc.pid, signal.SIGCONT)  # type: ignore[union-attr]
        self.paused = False

    def terminate(self) -> None:
        _stop(self.proc)
        self.proc = None
        self.paused = False

    def data_file(self, volume: str) -> Path:
        return self.data_dir / "volumes" / volume / "data"


@dataclass
class HeProc:
    """One `ophiura he --config FILE` (the same file for every HE) with its own ports."""

    index: int
    config: Path
    secret_file: Path
    secret: bytes
    log_dir: Path
    plant: str = ""
    nbd: int = field(default_factory=free_port)
    iscsi: int = field(default_factory=free_port)
    control: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None
    starts: int = 0

    @property
    def name(self) -> str:
        return f"he{self.index}"

    def spawn(self, standby: bool) -> None:
        cmd = [sys.executable, "-m", "ophiura.cli", "he", "--config", str(self.config)]
        cmd += ["--nbd", f"127.0.0.1:{self.nbd}", "--iscsi", f"127.0.0.1:{self.iscsi}"]
        cmd += ["--control", f"127.0.0.1:{self.control}"]
        cmd += ["--secret-file", str(self.secret_file)]
        cmd += ["--state-dir", str(self.log_dir / f"{self.name}-state-{self.starts}")]
        if standby:
            cmd.append("--standby")
        env = dict(os.environ)
        if self.plant:
            env[PLANT_ENV] = self.plant
        with open(self.log_dir / f"{self.name}.log", "ab") as log:
            self.proc = subprocess.Popen(
                cmd,
                stdout=subprocess.DEVNULL,
                stderr=log,
                env=env,
                preexec_fn=_die_with_parent,
            )
        self.starts += 1

    async def start(self, standby: bool, timeout: float = 20) -> None:
        self.spawn(standby)
        if not await wait_port(self.control, timeout):
            raise RuntimeError(f"{self.name} control port {self.control} not up after {timeout}s")
        if not standby and not await wait_port(self.nbd, timeout):
            raise RuntimeError(f"{self.name} NBD port {self.nbd} not up after {timeout}s")

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill9(self) -> None:
        if self.proc is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(5)
            self.proc = None

    def terminate(self) -> None:
        _stop(self.proc)
        self.proc = None

    async def call(self, op: str, timeout: float = 5, **args: Any) -> Any:
        """A control request; ControlError (or OSError) when the HE cannot answer."""
        return await control_call(
            "127.0.0.1", self.control, self.secret, op, timeout=timeout, **args
        )

    async def status(self, timeout: float = 2) -> dict[str, Any] | None:
        if not self.running:
            return None
        try:
            result: dict[str, Any] = await self.call("status", timeout=timeout)
            return result
        except (ControlError, OSError, TimeoutError, ValueError):
            return None


def write_he_config(
    path: Path,
    ses: list[SeProc],
    volume: tuple[str, int],
    cache: bool,
    se_delay_ms: dict[str, float],
    via: dict[str, int] | None = None,
    quorum: int = 2,
) -> None:
    """The TOML every HE reads (flags give each its own ports); `via` replaces an SE's port
    with its link forwarder's."""
    specs = []
    for s in ses:
        spec = f"{s.name}=127.0.0.1:{(via or {}).get(s.name, s.port)}"
        if se_delay_ms.get(s.name):
            spec += f",delay={se_delay_ms[s.name]:g}"
        specs.append(f'"{spec}"')
    path.write_text(
        f"quorum = {quorum}\n"
        f"se = [{', '.join(specs)}]\n"
        f'volume = ["{volume[0]}:{volume[1]}"]\n'
        f'cache = "{"4M" if cache else "0"}"\n'
        'queue = "4M"\n'
        "evict_wait = 0.5\n"
    )
