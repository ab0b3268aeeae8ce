"""Live HE tests: real StorageElements on 127.0.0.1 (in-process, or `ophiura se` subprocesses
for kill -9), an HE in-process, and an acknowledged-writes ledger."""

from __future__ import annotations

import asyncio
import hashlib
import os
import random
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ophiura.block.device import BlockDeviceError
from ophiura.replication.he_config import HeConfig
from ophiura.replication.host_element import HostElement
from ophiura.replication.se_session import SeSpec
from ophiura.replication.storage_element import StorageElement

SECRET = b"0123456789abcdef-test-secret"


@dataclass
class SeHandle:
    """One SE: in-process (`se`) or a subprocess (`proc`), restartable on the same port."""

    name: str
    data_dir: Path
    port: int = 0
    log_size: int = 8 << 20
    se: StorageElement | None = None
    proc: subprocess.Popen[bytes] | None = None
    secret_file: Path | None = None

    async def start(self) -> None:
        self.se = StorageElement(
            self.name, self.data_dir, "127.0.0.1", self.port, SECRET, log_size=self.log_size
        )
        await self.se.start()
        self.port = self.se.port

    async def stop(self) -> None:
        if self.se is not None:
            await self.se.stop()
            self.se = None

    def spawn(self) -> None:
        """Start as an `ophiura se` subprocess (so a test can kill -9 it)."""
        assert self.secret_file is not None and self.port
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "ophiura.cli",
                "se",
                "--name",
                self.name,
                "--data-dir",
                str(self.data_dir),
                "--listen",
                f"127.0.0.1:{self.port}",
                "--log-size",
                str(self.log_size),
                "--secret-file",
                str(self.secret_file),
            ],
            stdout=subprocess.DEVNULL,
            stderr=open(self.data_dir.parent / f"se-{self.name}.log", "ab"),  # noqa: SIM115
        )

    async def wait_listening(self, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                _, w = await asyncio.open_connection("127.0.0.1", self.port)
                w.close()
                return
            except OSError:
                await asyncio.sleep(0.05)
        raise TimeoutError(f"SE {self.name} not listening on {self.port}")

    def kill9(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(5)
        self.proc = None

    def terminate(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
            self.proc = None

    def spec(self, delay_ms: float = 0.0) -> SeSpec:
        return SeSpec(self.name, "127.0.0.1", self.port, delay_ms)


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def he_config(ses: list[SeHandle], quorum: int = 2, **kw: Any) -> HeConfig:
    base: dict[str, Any] = dict(
        ses=tuple(s.spec() for s in ses),
        quorum=quorum,
        volumes=(("vol", 8 << 20),),
        control=("127.0.0.1", 0),
        cache_bytes=1 << 20,
        queue_bytes=4 << 20,
        evict_wait=0.3,
    )
    base.update(kw)
    return HeConfig(**base)


async def start_he(config: HeConfig, tmp: Path) -> HostElement:
    from dataclasses import replace

    he = HostElement(replace(config, state_dir=config.state_dir or tmp / "he-state"), SECRET)
    await he.start()
    return he


@dataclass
class Ledger:
    """What the host was told is durable: block -> data of the last acknowledged write.

    A write that failed (or whose answer was lost with the HE) may or may not have reached
    the SEs, so after it the block may hold either the acknowledged data or that write's data.
    """

    block: int = 4096
    acked: dict[int, bytes] = field(default_factory=dict)
    maybe: dict[int, list[bytes]] = field(default_factory=dict)
    failed: int = 0
    errors: tuple[type[BaseException], ...] = (BlockDeviceError,)

    def pattern(self, blk: int, gen: int) -> bytes:
        head = f"blk {blk} gen {gen} ".encode()
        return (head * (self.block // len(head) + 1))[: self.block]

    async def write(self, dev: Any, blk: int, gen: int) -> bool:
        data = self.pattern(blk, gen)
        try:
            await dev.write(blk * self.block, data)
        except self.errors:
            self.failed += 1
            self.maybe.setdefault(blk, []).append(data)
            return False
        self.acked[blk] = data
        self.maybe.pop(blk, None)
        return True

    async def verify(self, dev: Any) -> list[int]:
        bad = []
        for blk, data in sorted(self.acked.items()):
            got = bytes(await dev.read(blk * self.block, self.block))
            if got != data and got not in self.maybe.get(blk, []):
                bad.append(blk)
        return bad


async def writer_loop(
    dev: Any, ledger: Ledger, blocks: int, stop: asyncio.Event, seed: int = 1, max_ops: int = 100000
) -> int:
    """Random 4 KiB writes until `stop` (bounded by max_ops); returns the ops done."""
    rng = random.Random(seed)
    n = 0
    while not stop.is_set() and n < max_ops:
        blk = rng.randrange(blocks)
        await ledger.write(dev, blk, n)
        n += 1
        if n % 16 == 0:
            await asyncio.sleep(0)
    return n


async def se_digest(he: HostElement, se_name: str, volume: str, size: int) -> str:
    """sha256 of the volume as one SE serves it (over the wire)."""
    sess = next(s for s in he.sessions if s.name == se_name)
    h = hashlib.sha256()
    step = 1 << 20
    for off in range(0, size, step):
        h.update(await sess.client.read(volume, off, min(step, size - off)))
    return h.hexdigest()


async def wait_for(pred: Any, timeout: float, what: str, step: float = 0.02) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        await asyncio.sleep(step)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def replica_states(he: HostElement, volume: str = "vol") -> dict[str, str]:
    return {r.name: r.state.value for r in he.volumes[volume].data.replicas.values()}


def secret_file(tmp: Path) -> Path:
    path = tmp / "secret"
    if not path.exists():
        path.write_bytes(SECRET)
        path.chmod(0o600)
    return path


async def spawn_ses(tmp: Path, names: str = "abc", log_size: int = 8 << 20) -> list[SeHandle]:
    """`ophiura se` subprocesses on free ports; the caller terminates them."""
    sf = secret_file(tmp)
    handles = [
        SeHandle(n, tmp / n, port=free_port(), secret_file=sf, log_size=log_size) for n in names
    ]
    for h in handles:
        h.spawn()
    for h in handles:
        await h.wait_listening()
    return handles


async def wait_all_up(he: HostElement, volume: str = "vol", timeout: float = 10.0) -> None:
    await wait_for(
        lambda: set(replica_states(he, volume).values()) == {"up"}, timeout, f"{volume} all up"
    )


async def assert_identical(he: HostElement, names: list[str], volume: str = "vol") -> None:
    vol = he.volumes[volume].data
    await wait_for(
        lambda: len({r.tracker.contiguous for r in vol.replicas.values()}) == 1,
        10,
        "every SE acked the last write",
    )
    digests = {n: await se_digest(he, n, volume, vol.size) for n in names}
    assert len(set(digests.values())) == 1, digests
