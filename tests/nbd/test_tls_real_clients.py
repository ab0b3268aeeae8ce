"""`ophiura target --nbd` (a real process, on uvloop when installed) with TLS, an allow-list and a
connection cap, against real clients: nbdinfo and nbdcopy (libnbd) and qemu-io over `nbds://`
with X.509 certificates made by openssl. Every refusal is clean (the tool fails, the target
lives), leaves a log line naming the address and the reason, and a client already connected
keeps reading and writing through it. Every tool call is bounded by a timeout."""

from __future__ import annotations

import asyncio
import hashlib
import os
import shutil
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from ophiura.nbd.client import NbdClient
from ophiura.nbd.constants import GREETING
from ophiura.nbd.tls import client_context
from ophiura.testkit.certs import Pki, make_pki
from ophiura.testkit.netns import add_address, namespace, unavailable, veth
from ophiura.testkit.ports import free_ports
from ophiura.testkit.procs import Proc, spawn
from ophiura.testkit.waiting import wait_for, wait_for_async

from .conftest import require_tools

MiB = 1 << 20
TOOL_TIMEOUT = 120
SIZE = 16 * MiB


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed (apt-get install openssl)")
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def stranger(tmp_path_factory: pytest.TempPathFactory, pki: Pki) -> Path:
    """Trusts our CA, but its own certificate comes from another CA."""
    other = make_pki(tmp_path_factory.mktemp("other"), name="someone else")
    mixed = tmp_path_factory.mktemp("stranger")
    shutil.copy(pki.client / "ca-cert.pem", mixed / "ca-cert.pem")
    for name in ("client-cert.pem", "client-key.pem"):
        shutil.copy(other.client / name, mixed / name)
    return mixed


class Target:
    def __init__(self, proc: Proc, port: int, backing: Path) -> None:
        self.proc, self.port, self.backing = proc, port, backing

    def log(self) -> str:
        assert self.proc.log is not None
        return self.proc.log.read_text(errors="replace")

    async def logged(self, *needles: str) -> str:
        def line() -> str | None:
            return next(
                (ln for ln in self.log().splitlines() if all(n in ln for n in needles)), None
            )

        await wait_for_async(lambda: line() is not None, 20, f"{needles} in the target's log",
                             details=self.log)  # fmt: skip
        return line() or ""

    def uri(self, certs: Path | None) -> str:
        if certs is None:
            return f"nbd://127.0.0.1:{self.port}/disk"
        return f"nbds://127.0.0.1:{self.port}/disk?tls-certificates={certs}"


@pytest.fixture
async def target(tmp_path: Path) -> AsyncIterator[Callable[..., Any]]:
    started: list[Proc] = []

    async def start(*options: str) -> Target:
        iscsi, nbd = free_ports(2)
        backing = tmp_path / f"disk{len(started)}.img"
        proc = spawn(
            [sys.executable, "-m", "ophiura.cli", "target", "--backing", str(backing),
             "--size", str(SIZE), "--listen", f"127.0.0.1:{iscsi}",
             "--nbd", f"127.0.0.1:{nbd}", *options],
            name="target", log=tmp_path / f"target{len(started)}.log",
            env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
        )  # fmt: skip
        started.append(proc)
        t = Target(proc, nbd, backing)
        # the log, not a probe connection: a probe would itself be refused (and logged)
        await wait_for_async(lambda: "serving NBD exports" in t.log() or not proc.alive(), 30,
                             "the target to serve NBD", details=t.log)  # fmt: skip
        assert proc.alive(), t.log()
        return t

    yield start
    for proc in started:
        code = proc.stop(15)
        assert code == 0, proc.tail()


async def run_tool(*args: str, timeout: float = TOOL_TIMEOUT) -> tuple[int, str]:
    """Run a client tool to its end (bounded): exit code and output."""
    require_tools(args[0])
    proc = await asyncio.create_subprocess_exec(
        *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        pytest.fail(f"{' '.join(args)} did not finish in {timeout} s")
    assert proc.returncode is not None
    return proc.returncode, out.decode(errors="replace")


async def tool(*args: str, ok: bool = True) -> str:
    """Run a client tool; its output. `ok=False`: it must fail (a refusal), not hang."""
    code, text = await run_tool(*args)
    assert (code == 0) == ok, f"{' '.join(args)} exited {code}:\n{text}"
    return text


async def working_client(t: Target, certs: Path) -> NbdClient:
    return await NbdClient.connect("127.0.0.1", t.port, "disk", timeout=10,
                                   tls=client_context(certs))  # fmt: skip


async def still_works(client: NbdClient, byte: int) -> None:
    data = bytes([byte]) * 65536
    await client.write(byte * 65536, data, fua=True)
    assert await client.read(byte * 65536, len(data)) == data


async def test_nbdinfo_nbdcopy_and_qemu_io_over_nbds(
    target: Callable[..., Any], pki: Pki, tmp_path: Path
) -> None:
    t = await target("--tls-certificates", str(pki.server), "--tls-verify-peer")
    out = await tool("nbdinfo", t.uri(pki.client))
    assert "with TLS" in out and f"export-size: {SIZE}" in out, out
    # nbdcopy writes 8 MiB of random data in, then reads the whole export back out
    src, back = tmp_path / "src.img", tmp_path / "back.img"
    payload = os.urandom(8 * MiB)
    src.write_bytes(payload + bytes(SIZE - len(payload)))
    await tool("nbdcopy", "--flush", str(src), t.uri(pki.client))
    await tool("nbdcopy", t.uri(pki.client), str(back))
    digest = hashlib.sha256(src.read_bytes()).hexdigest()
    assert hashlib.sha256(back.read_bytes()).hexdigest() == digest
    assert hashlib.sha256(t.backing.read_bytes()).hexdigest() == digest  # it reached the file
    # qemu's own TLS stack (tls-creds-x509 reads the same directory layout)
    qemu_opts = (
        f"driver=nbd,server.type=inet,server.host=127.0.0.1,server.port={t.port},"
        "export=disk,tls-creds=tls0"
    )
    await tool(
        "qemu-io", "--object", f"tls-creds-x509,id=tls0,dir={pki.client},endpoint=client",
        "--image-opts", qemu_opts,
        "-c", "write -P 0xc3 12M 1M", "-c", "flush", "-c", "read -P 0xc3 12M 1M",
    )  # fmt: skip
    with t.backing.open("rb") as f:
        f.seek(12 * MiB)
        assert f.read(MiB) == b"\xc3" * MiB
    await t.logged("TLS up", "client CN=ophiura test client")


async def test_refusals_by_tls_each_logged_while_a_client_keeps_working(
    target: Callable[..., Any], pki: Pki, stranger: Path
) -> None:
    t = await target("--tls-certificates", str(pki.server), "--tls", "require",
                     "--tls-verify-peer")  # fmt: skip
    working = await working_client(t, pki.client)
    # 1. no TLS at all: TLS_REQD to every option, one line
    await tool("nbdinfo", t.uri(None), ok=False)
    line = await t.logged("refused: TLS required")
    assert "127.0.0.1:" in line
    await still_works(working, 1)
    # 2. TLS, but a certificate from another CA
    await tool("nbdinfo", t.uri(stranger), ok=False)
    line = await t.logged("refused: TLS handshake failed")
    assert "127.0.0.1:" in line and "BEGIN" not in t.log()
    await still_works(working, 2)
    # 3. TLS without a client certificate (peer verification on)
    before = t.log().count("refused: TLS handshake failed")
    await tool("nbdinfo", t.uri(pki.ca_only), ok=False)
    await wait_for_async(lambda: t.log().count("refused: TLS handshake failed") > before, 20,
                         "a second handshake refusal", details=t.log)  # fmt: skip
    await still_works(working, 3)
    await working.disconnect()
    assert t.proc.alive()


async def test_allow_list(target: Callable[..., Any], pki: Pki) -> None:
    outside = await target("--nbd-allow", "10.0.0.0/8", "--nbd-allow", "198.51.100.0/24")
    await tool("nbdinfo", outside.uri(None), ok=False)
    line = await outside.logged("refused: address not in the allow-list")
    assert "127.0.0.1:" in line
    inside = await target("--nbd-allow", "10.0.0.0/8", "--nbd-allow", "127.0.0.0/8",
                          "--tls-certificates", str(pki.server))  # fmt: skip
    assert f"export-size: {SIZE}" in await tool("nbdinfo", inside.uri(pki.client))
    assert "refused" not in inside.log()


async def test_connection_flood_past_the_cap(target: Callable[..., Any], pki: Pki) -> None:
    cap, flood = 3, 30
    t = await target("--tls-certificates", str(pki.server), "--nbd-max-connections", str(cap))
    working = await working_client(t, pki.client)

    async def knock() -> tuple[asyncio.StreamWriter, int]:
        reader, writer = await asyncio.open_connection("127.0.0.1", t.port)
        try:
            got = len(await asyncio.wait_for(reader.readexactly(GREETING.size), 10))
        except asyncio.IncompleteReadError as exc:
            got = len(exc.partial)
        return writer, got

    results, _ = await asyncio.gather(
        asyncio.gather(*(knock() for _ in range(flood))), still_works(working, 4)
    )
    assert sum(got == GREETING.size for _, got in results) == cap - 1
    await t.logged("refused: connection limit (3) reached")
    assert t.log().count("refused: connection limit") == flood - (cap - 1)
    await still_works(working, 5)
    for writer, _ in results:
        writer.close()

    # the held slots free up once the flood's connections are closed: a real client gets in
    # again (polled: the server sees those closes a moment after we make them)
    async def nbdinfo_ok() -> bool:
        code, out = await run_tool("nbdinfo", t.uri(pki.client))
        return code == 0 and f"export-size: {SIZE}" in out

    deadline = asyncio.get_running_loop().time() + 20
    while not await nbdinfo_ok():
        assert asyncio.get_running_loop().time() < deadline, t.log()
    await working.disconnect()


@pytest.mark.skipif(bool(unavailable()), reason=str(unavailable()))
@pytest.mark.parametrize("guarded", [False, True])
def test_a_non_loopback_listener_without_authentication_warns(
    tmp_path: Path, guarded: bool
) -> None:
    """In a namespace of its own, on 198.51.100.1: open, the target warns at start; with an
    allow-list it does not."""
    with namespace("nbdwarn") as ns:
        veth(ns, "v0", "v1")  # (no dummy module in every kernel)
        add_address(ns, "v0", "198.51.100.1/24")
        log = tmp_path / "target.log"
        extra = ["--nbd-allow", "198.51.100.0/24"] if guarded else []
        proc = spawn(
            [sys.executable, "-m", "ophiura.cli", "target", "--backing",
             str(tmp_path / "d.img"), "--size", "4M", "--listen", "127.0.0.1:3260",
             "--nbd", "198.51.100.1:10809", *extra],
            name="target", log=log, ns=ns,
            env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
        )  # fmt: skip
        try:
            wait_for(lambda: "serving NBD exports" in log.read_text() or not proc.alive(), 30,
                     "the target to start", details=proc.tail)  # fmt: skip
            text = log.read_text()
            assert proc.alive(), text
            warned = "NBD listener on 198.51.100.1 accepts any client" in text
            assert warned is not guarded, text
        finally:
            assert proc.stop(15) == 0, proc.tail()
