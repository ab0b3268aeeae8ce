"""Standby HE takeover: the epoch fences the old HE; no acknowledged write is lost."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest

from ophiura.replication.he.control import control_call
from ophiura.replication.he.quorum import Fenced

from .he_harness import (
    SECRET,
    Ledger,
    SeHandle,
    free_port,
    he_config,
    secret_file,
    start_he,
    wait_all_up,
    wait_for,
    wait_port,
    writer_loop,
)


async def test_standby_takeover_fences_the_old_he(ses: list[SeHandle], tmp_path: Path) -> None:
    cfg = he_config(ses)
    old = await start_he(cfg, tmp_path / "old")
    standby = await start_he(replace(cfg, standby=True, state_dir=tmp_path / "new"), tmp_path)
    try:
        assert standby.role == "standby" and not standby.volumes
        old_vol = old.volumes["vol"].data
        await wait_all_up(old)
        ledger = Ledger()
        stop = asyncio.Event()
        writer = asyncio.create_task(writer_loop(old_vol, ledger, 1024, stop))
        await asyncio.sleep(0.3)
        t0 = time.monotonic()
        info = await control_call("127.0.0.1", standby.control.port, SECRET, "takeover")
        new_vol = standby.volumes["vol"].data
        await new_vol.read(0, 4096)
        first_io = time.monotonic() - t0
        assert info["volumes"]["vol"]["epoch"] == old_vol.epoch + 1
        # the old HE's writes now get StaleEpoch: it is fenced and acknowledges nothing more
        await wait_for(lambda: old_vol.fenced, 5, "old HE fenced")
        stop.set()
        await writer
        assert ledger.failed >= 1
        with pytest.raises(Fenced):
            await old_vol.write(0, b"z" * 4096)
        assert old_vol.read_only
        assert await ledger.verify(new_vol) == []
        assert await ledger.write(new_vol, 7, 99999)
        st = standby.status()
        assert st["role"] == "active" and st["takeover"]["first_io_s"] is not None
        assert first_io < 1.0, f"takeover to first I/O took {first_io:.3f}s"
    finally:
        await old.stop()
        await standby.stop()


async def test_idle_old_he_is_fenced_without_writing(ses: list[SeHandle], tmp_path: Path) -> None:
    """The old HE writes nothing after the takeover: its sessions' periodic volume poll sees
    the newer epoch and fences it within about one ping interval (0.5 s), so its status (what
    the cluster agent judges ownership by) says fenced before any write is refused."""
    cfg = he_config(ses)
    old = await start_he(cfg, tmp_path / "old")
    standby = await start_he(replace(cfg, standby=True, state_dir=tmp_path / "new"), tmp_path)
    try:
        old_vol = old.volumes["vol"].data
        await wait_all_up(old)
        ledger = Ledger()
        for i in range(8):
            assert await ledger.write(old_vol, i, i)
        writes, seq = old_vol.writes, old_vol.latest_seq
        assert not old_vol.fenced and not old.status()["volumes"][0]["fenced"]
        await control_call("127.0.0.1", standby.control.port, SECRET, "takeover")
        t0 = time.monotonic()
        await wait_for(lambda: old_vol.fenced, 3, "idle old HE fenced")
        noticed = time.monotonic() - t0
        assert noticed < 1.5, f"the idle old HE noticed the takeover after {noticed:.2f}s"
        # nothing was written meanwhile: the poll, not a refused write, fenced it
        assert (old_vol.writes, old_vol.latest_seq) == (writes, seq)
        st = old.status()["volumes"][0]
        new_epoch = standby.volumes["vol"].data.epoch
        assert st["fenced"] and st["read_only"] and f"({new_epoch}, " in st["fence_reason"]
        assert old.volumes["vol"].meta.fenced  # the SCSI-state companion too
        with pytest.raises(Fenced):  # nor reads: the new owner may have written (failure 7)
            await old_vol.read(0, 4096)
        assert await ledger.verify(standby.volumes["vol"].data) == []
        with pytest.raises(Fenced):
            await old_vol.write(0, b"z" * 4096)
        assert old_vol.latest_seq == seq  # refused before taking a sequence number
        # the new owner is not disturbed by its own polls
        new_vol = standby.volumes["vol"].data
        await asyncio.sleep(0.6)
        assert not new_vol.fenced and await ledger.write(new_vol, 9, 1)
    finally:
        await old.stop()
        await standby.stop()


def _he_cmd(ses: list[SeHandle], tmp: Path, nbd: int, control: int, *extra: str) -> list[str]:
    cmd = [sys.executable, "-m", "ophiura.cli", "he", "--quorum", "2", "--volume", "vol:8M"]
    for s in ses:
        cmd += ["--se", f"{s.name}=127.0.0.1:{s.port}"]
    cmd += [
        "--nbd",
        f"127.0.0.1:{nbd}",
        "--control",
        f"127.0.0.1:{control}",
        "--secret-file",
        str(secret_file(tmp)),
        "--queue",
        "4M",
        "--cache",
        "1M",
        *extra,
    ]
    return cmd


async def test_kill9_active_he_then_takeover_loses_no_ack(
    ses: list[SeHandle], tmp_path: Path
) -> None:
    from ophiura.nbd.client import NbdClient, NbdClientError

    nbd1, ctl1, nbd2, ctl2 = (free_port() for _ in range(4))
    log1 = open(tmp_path / "he1.log", "wb")  # noqa: SIM115
    log2 = open(tmp_path / "he2.log", "wb")  # noqa: SIM115
    he1 = subprocess.Popen(_he_cmd(ses, tmp_path, nbd1, ctl1), stderr=log1)
    he2 = subprocess.Popen(_he_cmd(ses, tmp_path, nbd2, ctl2, "--standby"), stderr=log2)
    try:
        await wait_port(ctl2)
        await wait_port(nbd1)
        client = await NbdClient.connect("127.0.0.1", nbd1, "vol")
        ledger = Ledger(errors=(NbdClientError, OSError, ConnectionError))
        stop = asyncio.Event()
        writer = asyncio.create_task(writer_loop(client, ledger, 1024, stop, max_ops=100000))
        await wait_for(lambda: len(ledger.acked) >= 200, 20, "writes through NBD")
        os.kill(he1.pid, signal.SIGKILL)  # the active HE dies mid-write
        he1.wait(5)
        await wait_for(lambda: ledger.failed >= 1 or writer.done(), 10, "client saw the HE die")
        stop.set()
        await writer
        t0 = time.monotonic()
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "ophiura.cli",
            "takeover",
            "--control",
            f"127.0.0.1:{ctl2}",
            "--secret-file",
            str(secret_file(tmp_path)),
            "--json",
            stdout=asyncio.subprocess.PIPE,
        )
        out, _ = await asyncio.wait_for(proc.communicate(), 30)
        assert proc.returncode == 0, out
        client2 = await NbdClient.connect("127.0.0.1", nbd2, "vol")
        await client2.read(0, 4096)
        elapsed = time.monotonic() - t0  # includes two Python process starts for the CLI
        bad = await ledger.verify(client2)
        assert bad == [], f"{len(bad)} acknowledged blocks lost: {bad[:10]}"
        assert len(ledger.acked) >= 200
        await client2.write(0, b"n" * 4096)
        await client2.disconnect()
        status = await control_call("127.0.0.1", ctl2, SECRET, "status")
        assert status["role"] == "active"
        print(
            f"takeover command to first I/O (incl. CLI start): {elapsed:.3f}s; "
            f"activation {status['takeover']['activated_s']:.3f}s"
        )
    finally:
        for proc in (he1, he2):
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(5)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(5)
        log1.close()
        log2.close()
