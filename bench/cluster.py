"""Start and stop StarFish processes for `python -m bench replication`: SEs and HEs.

Same rules as `bench/servers.py`: free ports on 127.0.0.1, a bounded wait for the port, output
to a log file, stop by PID only (SIGTERM, then SIGKILL). The HE's status comes from its control
API (`ophiura.replication.he.control.control_call`, what `ophiura status --json` prints) so a
recovery can be polled every few milliseconds without starting a Python process per poll.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.servers import ServerError, ophiura_command
from bench.servers import wait_for_port as _wait_for_port
from ophiura.testkit.ports import HOST, free_port
from ophiura.testkit.procs import kill9, log_tail, stop

START_TIMEOUT = 30.0


@dataclass
class Proc:
    """One process we started: its command, log, and how to stop or kill it."""

    name: str
    cmd: list[str]
    log_path: Path
    port: int
    proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = START_TIMEOUT) -> Proc:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            log.write(("$ " + " ".join(self.cmd) + "\n").encode())
            log.flush()
            self.proc = subprocess.Popen(
                self.cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT
            )
        try:
            _wait_for_port(self.port, timeout, self.proc)
        except ServerError as exc:
            self.stop()
            raise ServerError(
                f"{self.name} did not start: {exc}\n--- log ---\n{self.log()}"
            ) from exc
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log(self, lines: int = 40) -> str:
        return log_tail(self.log_path, lines)

    def kill9(self) -> None:
        """SIGKILL (a crash), by PID; reaped at once."""
        if self.proc is not None:
            kill9(self.proc, 10)

    def stop(self, timeout: float = 10.0) -> int | None:
        if self.proc is None:
            return None
        return stop(self.proc, timeout)


def write_secret(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists():
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(os.urandom(24).hex() + "\n")
    return path


def se_proc(
    name: str,
    data_dir: Path,
    secret_file: Path,
    log_dir: Path,
    *,
    port: int = 0,
    log_size: str = "256M",
) -> Proc:
    port = port or free_port()
    data_dir.mkdir(parents=True, exist_ok=True)
    cmd = [
        *ophiura_command(),
        "se",
        "--name",
        name,
        "--data-dir",
        str(data_dir),
        "--listen",
        f"{HOST}:{port}",
        "--log-size",
        log_size,
        "--secret-file",
        str(secret_file),
    ]
    return Proc(f"se {name}", cmd, log_dir / f"se-{name}.log", port)


@dataclass(frozen=True)
class SeLink:
    """An SE as the HE sees it: name, port and the emulated link to it."""

    name: str
    port: int
    delay_ms: float = 0.0
    rate_mbit: float | None = None

    def spec(self) -> str:
        text = f"{self.name}={HOST}:{self.port}"
        if self.delay_ms:
            text += f",delay={self.delay_ms:g}"
        if self.rate_mbit:
            text += f",rate={self.rate_mbit:g}"
        return text


def he_proc(
    links: list[SeLink],
    *,
    quorum: int,
    volume: str,
    size_mib: int,
    secret_file: Path,
    log_path: Path,
    state_dir: Path,
    cache: str = "64M",
    queue: str = "64M",
) -> Proc:
    nbd, control = free_port(), free_port()
    cmd = [*ophiura_command(), "he"]
    for link in links:
        cmd += ["--se", link.spec()]
    cmd += [
        "--quorum",
        str(quorum),
        "--volume",
        f"{volume}:{size_mib}M",
        "--nbd",
        f"{HOST}:{nbd}",
        "--control",
        f"{HOST}:{control}",
        "--cache",
        cache,
        "--queue",
        queue,
        "--secret-file",
        str(secret_file),
        "--state-dir",
        str(state_dir),
    ]
    proc = Proc("ophiura he", cmd, log_path, nbd)
    proc.control_port = control  # type: ignore[attr-defined]
    return proc


def he_status(control_port: int, secret_file: Path, timeout: float = 10.0) -> dict[str, Any]:
    from ophiura.replication.he.control import control_call
    from ophiura.replication.wire.secret import load_secret

    secret = load_secret(secret_file)
    return asyncio.run(control_call(HOST, control_port, secret, "status", timeout=timeout))


def se_states(status: dict[str, Any], volume: str) -> dict[str, str]:
    for v in status.get("volumes", []):
        if v["name"] == volume:
            return {s["name"]: s["state"] for s in v["ses"]}
    return {}


def wait_all_up(
    control_port: int, secret_file: Path, volume: str, n: int, timeout: float = 120.0
) -> dict[str, Any]:
    """Poll the HE until every SE of `volume` is `up` (recoveries done); the last status."""
    deadline = time.monotonic() + timeout
    last: dict[str, Any] = {}
    while time.monotonic() < deadline:
        try:
            last = he_status(control_port, secret_file)
        except Exception:  # the control port may not answer yet
            time.sleep(0.2)
            continue
        states = se_states(last, volume)
        if len(states) == n and all(s == "up" for s in states.values()):
            return last
        time.sleep(0.1)
    raise ServerError(
        f"SEs of {volume} not all up after {timeout:.0f} s: "
        f"{se_states(last, volume) if last else 'no status'}"
    )
