"""`ophiura target --nbd`: the same backing file over iSCSI and NBD, in a real process."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

from ophiura.nbd.client import NbdClient
from ophiura.testkit.ports import free_port
from ophiura.testkit.procs import stop, wait_port

MiB = 1 << 20


def test_target_serves_the_backing_file_over_nbd(tmp_path: Path) -> None:
    backing = tmp_path / "disk.img"
    iscsi, nbd = free_port(), free_port()
    log = (tmp_path / "target.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "ophiura.cli", "target", "--backing", str(backing),
         "--size", "16M", "--listen", f"127.0.0.1:{iscsi}", "--nbd", f"127.0.0.1:{nbd}",
         "--nbd-export", "vol"],
        stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        wait_port(nbd, 20, proc)
        wait_port(iscsi, 20, proc)

        async def io() -> None:
            client = await NbdClient.connect("127.0.0.1", nbd, "vol", timeout=10)
            assert client.size == 16 * MiB
            await client.write(MiB, b"\x42" * 65536, fua=True)
            assert await client.read(MiB, 65536) == b"\x42" * 65536
            await client.disconnect()

        asyncio.run(asyncio.wait_for(io(), 30))
        with backing.open("rb") as f:
            f.seek(MiB)
            assert f.read(65536) == b"\x42" * 65536
    finally:
        code = stop(proc, 15)
        log.close()
    assert code == 0, (tmp_path / "target.log").read_text(errors="replace")
    assert os.path.getsize(backing) == 16 * MiB


def test_nbd_option_shows_in_help() -> None:
    from click.testing import CliRunner

    from ophiura.cli import main

    out = CliRunner().invoke(main, ["target", "--help"]).output
    assert "--nbd HOST:PORT" in out and "--nbd-export" in out
