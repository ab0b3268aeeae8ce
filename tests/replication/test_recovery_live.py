"""Live recovery kinds (StarFish §3) against `ophiura se` subprocesses, N=3 Q=2.

quick: short kill -9; replay: an outage longer than the HE write queue; full: a wiped SE.
After each, all three SEs serve byte-identical volumes and every acknowledged write reads back.
"""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from .he_harness import (
    Ledger,
    SeHandle,
    assert_identical,
    he_config,
    replica_states,
    spawn_ses,
    start_he,
    wait_all_up,
    wait_for,
    writer_loop,
)


@pytest.fixture
async def ses(tmp_path: Path) -> AsyncIterator[list[SeHandle]]:
    handles = await spawn_ses(tmp_path, log_size=16 << 20)
    try:
        yield handles
    finally:
        for h in handles:
            h.terminate()


async def _outage(
    ses: list[SeHandle], tmp_path: Path, writes_while_down: int, wipe: bool, queue: int
) -> tuple[dict[str, int], Ledger]:
    he = await start_he(he_config(ses, queue_bytes=queue), tmp_path)
    try:
        vol = he.volumes["vol"].data
        await wait_all_up(he)
        ledger = Ledger()
        stop = asyncio.Event()
        task = asyncio.create_task(writer_loop(vol, ledger, 1024, stop))
        await asyncio.sleep(0.1)
        ses[2].kill9()
        await wait_for(lambda: replica_states(he)["c"] == "failed", 5, "c failed")
        start = vol.latest_seq
        await wait_for(lambda: vol.latest_seq - start >= writes_while_down, 30, "writes")
        stop.set()
        await task  # the outage is exactly as long as the test wants; then writes resume
        if wipe:
            shutil.rmtree(ses[2].data_dir)
        ses[2].spawn()
        await ses[2].wait_listening()
        stop = asyncio.Event()
        task = asyncio.create_task(writer_loop(vol, ledger, 1024, stop, seed=2))
        await wait_for(lambda: replica_states(he)["c"] == "up", 30, "c recovered")
        await asyncio.sleep(0.1)
        stop.set()
        await task
        assert ledger.failed == 0
        vol.cache.clear()
        assert await ledger.verify(vol) == []
        await assert_identical(he, ["a", "b", "c"])
        return dict(vol.replicas["c"].recoveries), ledger
    finally:
        await he.stop()


async def test_quick_recovery_after_kill9(ses: list[SeHandle], tmp_path: Path) -> None:
    recoveries, _ = await _outage(ses, tmp_path, writes_while_down=20, wipe=False, queue=32 << 20)
    assert recoveries == {"quick": 1}


async def test_replay_recovery_when_outage_overflows_queue(
    ses: list[SeHandle], tmp_path: Path
) -> None:
    # 1 MiB queue holds ~250 writes of 4 KiB; 800 writes overflow it, the 16 MiB SE log keeps them
    recoveries, _ = await _outage(ses, tmp_path, writes_while_down=800, wipe=False, queue=1 << 20)
    assert recoveries == {"replay": 1}


async def test_full_recovery_of_wiped_se(ses: list[SeHandle], tmp_path: Path) -> None:
    recoveries, _ = await _outage(ses, tmp_path, writes_while_down=50, wipe=True, queue=32 << 20)
    assert recoveries == {"full": 1}
