"""Helpers for the storage-element tests (no tests here): in-process and subprocess SEs."""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from ophiura.replication.se.storage_element import StorageElement
from ophiura.replication.wire.client import SeClient
from ophiura.testkit.procs import kill9, stop

SECRET = b"test-secret-0123456789abcdef"
MiB = 1 << 20


@asynccontextmanager
async def running_se(
    tmp: Path, name: str = "se1", **kwargs: object
) -> AsyncIterator[StorageElement]:
    se = StorageElement(name, tmp / name, "127.0.0.1", 0, SECRET, **kwargs)  # type: ignore[arg-type]
    await se.start()
    try:
        yield se
    finally:
        await se.stop()


@asynccontextmanager
async def client_for(se: StorageElement | int, **kwargs: object) -> AsyncIterator[SeClient]:
    port = se if isinstance(se, int) else se.port
    name = "se" if isinstance(se, int) else se.name
    client = await SeClient.connect(name, "127.0.0.1", port, SECRET, **kwargs)  # type: ignore[arg-type]
    try:
        yield client
    finally:
        await client.close()


def block(seq: int, size: int = 4096) -> bytes:
    """Recognisable data for write `seq`."""
    return hashlib.sha256(seq.to_bytes(8, "little")).digest() * (size // 32)


def file_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


class SeProcess:
    """`ophiura se` as a subprocess (for kill -9). Stopped only through its own PID."""

    def __init__(
        self, tmp: Path, name: str = "se1", extra: tuple[str, ...] = (), prelude: str = ""
    ) -> None:
        self.tmp = tmp
        self.name = name
        self.extra = extra
        self.prelude = prelude  # Python run before the CLI (e.g. to change a module constant)
        self.port = 0
        self.proc: subprocess.Popen[str] | None = None
        self.secret_file = tmp / "secret"
        if not self.secret_file.exists():
            self.secret_file.write_bytes(SECRET)
            self.secret_file.chmod(0o600)

    def start(self, timeout: float = 20.0) -> int:
        listen = f"127.0.0.1:{self.port}"
        if self.prelude:
            code = f"{self.prelude}\nfrom ophiura.cli import main\nmain()"
            launcher = [sys.executable, "-c", code]
        else:
            launcher = [sys.executable, "-m", "ophiura.cli"]
        cmd = [
            *launcher,
            "se",
            "--name",
            self.name,
            "--data-dir",
            str(self.tmp / self.name),
            "--listen",
            listen,
            "--secret-file",
            str(self.secret_file),
            *self.extra,
        ]
        self.proc = subprocess.Popen(
            cmd,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        deadline = time.monotonic() + timeout
        assert self.proc.stdout is not None
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                raise RuntimeError(f"ophiura se exited with {self.proc.wait()}")
            m = re.search(r"listening on 127\.0\.0\.1:(\d+)", line)
            if m:
                self.port = int(m.group(1))
                # Keep reading its output: a full pipe (64 KiB of log lines) would block the
                # SE in a write() and hang the test.
                threading.Thread(target=self.proc.stdout.read, daemon=True).start()
                return self.port
        raise RuntimeError("ophiura se did not start in time")

    def kill9(self) -> None:
        assert self.proc is not None
        kill9(self.proc, 10)
        self.proc = None

    def terminate(self) -> int | None:
        assert self.proc is not None
        rc = stop(self.proc, 20)
        self.proc = None
        return rc
