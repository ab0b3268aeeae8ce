"""Live: N=3 Q=2 over real StorageElements on 127.0.0.1 (in-process)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from ophiura.block.device import BlockDevice, ReadOnlyError

from .he_harness import (
    SECRET,
    Ledger,
    SeHandle,
    free_port,
    he_config,
    replica_states,
    se_digest,
    start_he,
    wait_for,
    writer_loop,
)

VOL = 8 << 20


@pytest.fixture
async def ses(tmp_path: Path) -> AsyncIterator[list[SeHandle]]:
    """Three `ophiura se` subprocesses (so tests can kill -9 and restart them)."""
    secret = tmp_path / "secret"
    secret.write_bytes(SECRET)
    secret.chmod(0o600)
    handles = [SeHandle(n, tmp_path / n, port=free_port(), secret_file=secret) for n in "abc"]
    try:
        for h in handles:
            h.spawn()
        for h in handles:
            await h.wait_listening()
        yield handles
    finally:
        for h in handles:
            h.terminate()


async def test_write_read_n3_q2(ses: list[SeHandle], tmp_path: Path) -> None:
    he = await start_he(he_config(ses), tmp_path)
    try:
        vol = he.volumes["vol"].data
        assert isinstance(vol, BlockDevice)
        assert not vol.read_only and vol.thin
        await wait_for(lambda: set(replica_states(he).values()) == {"up"}, 5, "all up")
        ledger = Ledger()
        for i in range(64):
            assert await ledger.write(vol, i * 3, i)
        assert await ledger.verify(vol) == []
        vol.cache.clear()
        assert await ledger.verify(vol) == []
        await vol.write_zeroes(0, 4096)
        assert await vol.read(0, 4096) == bytes(4096)
        await vol.discard(4096 * 3, 4096)
        assert await vol.read(4096 * 3, 4096) == bytes(4096)
        status = vol.status()
        assert status["latest_seq"] == status["acked_seq"] == 66
        await wait_for(
            lambda: all(r.tracker.contiguous == 66 for r in vol.replicas.values()), 5, "acks"
        )
        digests = {s.name: await se_digest(he, s.name, "vol", VOL) for s in ses}
        assert len(set(digests.values())) == 1, digests
    finally:
        await he.stop()


async def test_one_se_down_then_quick_recovery(ses: list[SeHandle], tmp_path: Path) -> None:
    # Quick recovery needs every missed write still in the HE queue: 64 MiB holds ~16k 4 KiB
    # writes, far more than the writer does while c is down (the 4 MiB default of he_config
    # held ~1k, which a fast run overflowed, correctly turning it into a replay).
    he = await start_he(he_config(ses, queue_bytes=64 << 20), tmp_path)
    try:
        vol = he.volumes["vol"].data
        await wait_for(lambda: set(replica_states(he).values()) == {"up"}, 5, "all up")
        ledger = Ledger()
        stop = asyncio.Event()
        task = asyncio.create_task(writer_loop(vol, ledger, 512, stop))
        await asyncio.sleep(0.2)
        ses[2].kill9()
        await wait_for(lambda: replica_states(he)["c"] == "failed", 5, "c failed")
        await asyncio.sleep(0.2)
        assert not vol.read_only
        ses[2].spawn()
        try:
            await wait_for(lambda: replica_states(he)["c"] == "up", 10, "c recovered")
        except AssertionError:
            import json

            print(json.dumps(he.status(), indent=1))
            raise
        stop.set()
        await task
        assert ledger.failed == 0
        assert vol.replicas["c"].recoveries.get("quick", 0) >= 1
        assert await ledger.verify(vol) == []
        await wait_for(
            lambda: len({r.tracker.contiguous for r in vol.replicas.values()}) == 1, 5, "acks"
        )
        digests = {s.name: await se_digest(he, s.name, "vol", VOL) for s in ses}
        assert len(set(digests.values())) == 1, digests
    finally:
        await he.stop()


async def test_two_down_read_only_then_writes_resume(ses: list[SeHandle], tmp_path: Path) -> None:
    he = await start_he(he_config(ses), tmp_path)
    try:
        vol = he.volumes["vol"].data
        await wait_for(lambda: set(replica_states(he).values()) == {"up"}, 5, "all up")
        ledger = Ledger()
        for i in range(16):
            assert await ledger.write(vol, i, i)
        ses[1].kill9()
        ses[2].kill9()
        await wait_for(lambda: vol.read_only, 5, "read-only")
        with pytest.raises(ReadOnlyError):
            await vol.write(0, b"x" * 4096)
        vol.cache.clear()
        assert await ledger.verify(vol) == []  # reads keep working
        assert he.status()["volumes"][0]["read_only"] is True
        ses[1].spawn()
        await wait_for(lambda: not vol.read_only, 10, "writable again")
        assert await ledger.write(vol, 100, 1)
        assert await ledger.verify(vol) == []
    finally:
        await he.stop()


async def test_laggard_declared_failed_when_queue_full(ses: list[SeHandle], tmp_path: Path) -> None:
    """StarFish §3: eviction needs every live SE's ack; an SE that stops acking (SIGSTOP: its
    TCP connection stays open) blocks the full queue, and after evict_wait it is declared
    failed; once it runs again it is re-attached and recovered."""
    import os
    import signal

    cfg = he_config(ses, queue_bytes=1 << 20, evict_wait=0.2)
    he = await start_he(cfg, tmp_path)
    # The session's ping (2 s timeout) also notices a stopped SE, and on a loaded machine it
    # won the race against the writer filling the queue (failures == {"lost": 1}): this test
    # is about the queue's detector, so the ping must not fire during it.
    for session in he.sessions:
        session.ping_interval = 60.0
    proc = ses[2].proc
    assert proc is not None
    try:
        vol = he.volumes["vol"].data
        await wait_for(lambda: set(replica_states(he).values()) == {"up"}, 5, "all up")
        ledger = Ledger()
        stop = asyncio.Event()
        task = asyncio.create_task(writer_loop(vol, ledger, 512, stop))
        await asyncio.sleep(0.1)
        os.kill(proc.pid, signal.SIGSTOP)
        c = vol.replicas["c"]
        try:
            await wait_for(lambda: c.failures.get("lagging", 0) >= 1, 10, "c declared lagging")
        finally:
            os.kill(proc.pid, signal.SIGCONT)
        await wait_for(lambda: c.state.value == "up", 20, "c back up")
        stop.set()
        await task
        assert ledger.failed == 0  # a and b carried every write meanwhile
        assert vol.queue.used <= vol.queue.capacity
        vol.cache.clear()
        assert await ledger.verify(vol) == []
    finally:
        await he.stop()
