"""Live HE tests: real StorageElements on 127.0.0.1 (in-process, or `ophiura se` subprocesses
for kill -9), an HE in-process, and an acknowledged-writes ledger."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import random
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ophiura.block.device import BlockDeviceError
from ophiura.replication.he.config import HeConfig
from ophiura.replication.he.host_element import HostElement
from ophiura.replication.he.se_session import SeSpec
from ophiura.replication.se.storage_element import StorageElement
from ophiura.testkit.ports import free_port
from ophiura.testkit.procs import kill9, stop
from ophiura.testkit.procs import wait_port_async as wait_port
from ophiura.testkit.waiting import wait_for_async as wait_for

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
    extra_args: list[str] = field(default_factory=list)  # more `ophiura se` flags (spawn)
    env: dict[str, str] = field(default_factory=dict)  # more environment (spawn)

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
                *self.extra_args,
            ],
            stdout=subprocess.DEVNULL,
            stderr=open(self.data_dir.parent / f"se-{self.name}.log", "ab"),  # noqa: SIM115
            env={**os.environ, **self.env} if self.env else None,
        )

    async def wait_listening(self, timeout: float = 10.0) -> None:
        await wait_port(self.port, timeout, self.proc)

    def kill9(self) -> None:
        assert self.proc is not None
        kill9(self.proc)
        self.proc = None

    def terminate(self) -> None:
        if self.proc is not None:
            stop(self.proc, 5)
            self.proc = None

    def spec(self, delay_ms: float = 0.0) -> SeSpec:
        return SeSpec(self.name, "127.0.0.1", self.port, delay_ms)


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


# ---- `ophiura he` as a subprocess, real clients (fio, qemu-io), what each SE serves -------------

MiB = 1 << 20


def require_tools(*tools: str) -> None:
    """Skip with a printed reason when a Debian client is missing (CI installs them)."""
    import shutil

    import pytest

    missing = [t for t in tools if shutil.which(t) is None]
    if missing:
        print(f"skipping: {', '.join(missing)} not installed")
        pytest.skip(f"missing tool(s): {', '.join(missing)} (apt-get install fio qemu-utils)")


@dataclass
class HeProcess:
    """`ophiura he --nbd --iscsi --control` as a subprocess on free ports, stopped by PID."""

    ses: list[SeHandle]
    tmp: Path
    volumes: tuple[str, ...] = ("vol:32M",)
    quorum: int = 2
    queue: str = "64M"
    cache: str = "0"
    extra: tuple[str, ...] = ()
    nbd: int = field(default_factory=free_port)
    iscsi: int = field(default_factory=free_port)
    control: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def log_path(self) -> Path:
        return self.tmp / f"he-{self.control}.log"

    def command(self) -> list[str]:
        cmd = [sys.executable, "-m", "ophiura.cli", "he", "--quorum", str(self.quorum)]
        for s in self.ses:
            cmd += ["--se", f"{s.name}=127.0.0.1:{s.port}"]
        for v in self.volumes:
            cmd += ["--volume", v]
        return [
            *cmd,
            "--nbd",
            f"127.0.0.1:{self.nbd}",
            "--iscsi",
            f"127.0.0.1:{self.iscsi}",
            "--control",
            f"127.0.0.1:{self.control}",
            "--secret-file",
            str(secret_file(self.tmp)),
            "--queue",
            self.queue,
            "--cache",
            self.cache,
            "--state-dir",
            str(self.tmp / f"he-state-{self.control}"),
            *self.extra,
        ]

    async def start(self, timeout: float = 20.0) -> None:
        """Spawn and wait until the frontends listen (they start after activation)."""
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(self.command(), stdout=subprocess.DEVNULL, stderr=log)
        await wait_port(self.control, timeout, self.proc)
        await wait_port(self.nbd, timeout, self.proc)
        await wait_port(self.iscsi, timeout, self.proc)

    def terminate(self) -> None:
        if self.proc is not None:
            stop(self.proc, 10)
            self.proc = None

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    async def status(self, timeout: float = 10.0) -> dict[str, Any]:
        """`ophiura status --control ... --json`, the real CLI in a subprocess."""
        import json

        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "ophiura.cli",
            "status",
            "--control",
            f"127.0.0.1:{self.control}",
            "--secret-file",
            str(secret_file(self.tmp)),
            "--json",
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        try:
            out, err = await asyncio.wait_for(proc.communicate(), timeout)
        except TimeoutError:
            proc.kill()
            await proc.wait()
            raise
        if proc.returncode != 0:
            raise RuntimeError(f"ophiura status failed ({proc.returncode}): {err.decode()}")
        result: dict[str, Any] = json.loads(out)
        return result


def volume_status(status: dict[str, Any], volume: str = "vol") -> dict[str, Any]:
    return next(v for v in status["volumes"] if v["name"] == volume)


def se_status(status: dict[str, Any], se: str, volume: str = "vol") -> dict[str, Any]:
    return next(s for s in volume_status(status, volume)["ses"] if s["name"] == se)


class StatusPoller:
    """Polls `ophiura status --json` in the background; keeps every volume snapshot it saw."""

    def __init__(self, he: HeProcess, volume: str = "vol", interval: float = 0.05) -> None:
        self.he = he
        self.volume = volume
        self.interval = interval
        self.history: list[dict[str, Any]] = []
        self.errors: list[str] = []
        self._task: asyncio.Task[None] | None = None

    @property
    def last(self) -> dict[str, Any]:
        assert self.history, "no status yet"
        return self.history[-1]

    def se(self, name: str) -> dict[str, Any]:
        return next(s for s in self.last["ses"] if s["name"] == name)

    def states_seen(self, name: str) -> list[str]:
        """The SE's states in order, consecutive repeats collapsed."""
        out: list[str] = []
        for snap in self.history:
            st = next(s["state"] for s in snap["ses"] if s["name"] == name)
            if not out or out[-1] != st:
                out.append(st)
        return out

    async def poll_once(self) -> dict[str, Any]:
        snap = volume_status(await self.he.status(), self.volume)
        self.history.append(snap)
        return snap

    async def _run(self) -> None:
        while True:
            try:
                await self.poll_once()
            except (RuntimeError, TimeoutError, OSError, StopIteration, ValueError) as exc:
                self.errors.append(str(exc))
            await asyncio.sleep(self.interval)

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def wait(self, pred: Any, timeout: float, what: str) -> dict[str, Any]:
        """Until `pred(snapshot)` holds for a new snapshot; the snapshot."""
        deadline = time.monotonic() + timeout
        seen = len(self.history)
        while time.monotonic() < deadline:
            if len(self.history) > seen:
                seen = len(self.history)
                if pred(self.history[-1]):
                    return self.history[-1]
            await asyncio.sleep(0.01)
        last = self.history[-1] if self.history else None
        raise AssertionError(f"timed out after {timeout}s waiting for {what}; last status {last}")


def all_caught_up(snap: dict[str, Any]) -> bool:
    """Every SE up and acknowledged the newest write."""
    return all(s["state"] == "up" and s["acked_seq"] == snap["latest_seq"] for s in snap["ses"])


async def se_served_digest(se: SeHandle, volume: str, size: int) -> tuple[str, set[int]]:
    """sha256 of the whole volume as this SE serves it (its own READ path, over the wire, from a
    client of our own), and the set of applied seqs its answers carried."""
    from ophiura.replication.wire.client import SeClient

    client = await SeClient.connect(se.name, "127.0.0.1", se.port, SECRET, client_name="checker")
    h = hashlib.sha256()
    seqs: set[int] = set()
    try:
        for off in range(0, size, MiB):
            seq, data = await client.read_with_seq(volume, off, min(MiB, size - off))
            h.update(data)
            seqs.add(seq)
    finally:
        await client.close()
    return h.hexdigest(), seqs


def se_file_digest(se: SeHandle, volume: str, size: int) -> str:
    """sha256 of the SE's data file (after a clean stop, which syncs it), zero-padded to size."""
    path = se.data_dir / "volumes" / volume / "data"
    h = hashlib.sha256()
    done = 0
    with open(path, "rb") as f:
        while done < size:
            chunk = f.read(min(MiB, size - done))
            if not chunk:
                break
            h.update(chunk)
            done += len(chunk)
    h.update(bytes(size - done))
    return h.hexdigest()


async def run_tool(*cmd: str, timeout: float, cwd: Path | None = None) -> tuple[int, str]:
    """A real client (fio, qemu-io) bounded in time; killed by PID on timeout."""
    proc = await asyncio.create_subprocess_exec(
        *cmd,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        cwd=cwd,
    )
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise AssertionError(f"{cmd[0]} still running after {timeout}s: killed") from None
    return proc.returncode or 0, out.decode(errors="replace")
