"""An SE whose disk returns EIO (the `disk_io` seam's failing-disk model, as the torture's
`se-eio` fault uses it): the SE stops vouching for the volume, the others keep acknowledging,
and once the disk answers again the SE re-derives the volume from its files and rejoins with
exactly the contents of the others. Nothing acknowledged is lost on the way."""

from __future__ import annotations

import asyncio
from pathlib import Path

from ophiura.replication.se.disk_io import EIO_ENV
from ophiura.testkit.ports import free_port
from ophiura.testkit.waiting import wait_for_async as wait_for

from .he_harness import (
    Ledger,
    SeHandle,
    assert_identical,
    he_config,
    replica_states,
    secret_file,
    start_he,
    wait_all_up,
    writer_loop,
)


async def test_se_disk_eio_fails_the_volume_then_it_rejoins(tmp_path: Path) -> None:
    flag = tmp_path / "eio-b"
    sf = secret_file(tmp_path)
    ses = [SeHandle(n, tmp_path / n, port=free_port(), secret_file=sf) for n in "abc"]
    ses[1].env = {EIO_ENV: str(flag)}
    for h in ses:
        h.spawn()
    he = None
    try:
        for h in ses:
            await h.wait_listening()
        he = await start_he(he_config(ses), tmp_path)
        dev = he.volumes["vol"].data
        await wait_all_up(he)
        ledger = Ledger()
        blocks = dev.size // ledger.block
        await writer_loop(dev, ledger, blocks, asyncio.Event(), seed=1, max_ops=200)

        flag.touch()
        stop = asyncio.Event()
        writer = asyncio.create_task(writer_loop(dev, ledger, blocks, stop, seed=2))
        await wait_for(lambda: replica_states(he)["b"] != "up", 10, "b fails on EIO")
        failed_acks = len(ledger.acked)
        await wait_for(lambda: len(ledger.acked) > failed_acks + 100 or stop.is_set(), 10, "acks")
        assert ledger.failed == 0  # a and c are a write quorum: the host saw no error
        # The HE re-attaches b every few seconds; while the disk still fails, b's reopen fails
        # too (closing the failed volume must not try to sync it, and a failed reopen must not
        # leave later opens waiting forever: the torture's se-eio found both).
        log = tmp_path / "se-b.log"
        await wait_for(lambda: "cannot be reopened yet" in log.read_text(), 20, "a failed reopen")

        flag.unlink()
        await wait_all_up(he, timeout=30)
        stop.set()
        await writer
        assert ledger.failed == 0
        assert await ledger.verify(dev) == []
        await assert_identical(he, ["a", "b", "c"])
        text = log.read_text()
        assert "failed on disk" in text and "injected I/O error" in text, text[-2000:]
        assert "Traceback" not in text, text[-3000:]
        assert dev.replicas["b"].failures, dev.replicas["b"].history
    finally:
        if he is not None:
            await he.stop()
        for h in ses:
            h.terminate()
