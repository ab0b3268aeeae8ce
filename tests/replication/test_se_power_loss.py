"""Failure 3 end to end: a real `ophiura se` process, killed mid-batch, then a power cut.

The SE runs with the power-loss journal on (`disk_io`); after SIGKILL, `apply_power_loss`
reverts a seeded random subset of every write no completed fdatasync covered, at 512-byte
granularity (whole writes lost, or sectors torn). On restart the SE must report at least every
acknowledged seq and return its data, and no block may hold a write beyond what it reports
(a write the log lost must not survive in the data file either). Many seeds, one SE dir.
"""

from __future__ import annotations

import asyncio
import random
import shutil
import time
from pathlib import Path

import pytest

from ophiura.replication.se.disk_io import ENV
from ophiura.replication.se.metadata import MetadataFile
from ophiura.replication.se.powerloss import apply_power_loss
from ophiura.replication.se.replay_log import ReplayLog
from ophiura.replication.wire.client import SeClient, SeError

from .test_se_support import SECRET, MiB, SeProcess, block

SIZE = 16 * MiB
BS = 4096
BLOCKS = SIZE // BS  # every seq writes its own block: seq < BLOCKS
MIN_CYCLES = 6  # seeds 0..5 at least, 0..9 when the machine is fast enough (BUDGET seconds),
WANT_CYCLES = 10  # and on until a cut made a hole, all bounded by BUDGET and by the blocks
BUDGET = 16.0
PER_CYCLE = 150  # acknowledged writes before the cut

# Run in the SE before its CLI: SIGKILL itself inside the log sync of the first batch that
# holds at least 3 records and reaches seq TARGET (the batch's records are written, not synced,
# none of them acknowledged), so every cycle cuts power with an unacknowledged batch in flight.
_PRELUDE = """
import os, signal
os.environ[{env!r}] = {journal!r}
from ophiura.replication.se import replay_log as _rl
_sync, _synced = _rl.ReplayLog.sync, [0]
def _cut(self):
    if self.newest_seq() >= {target} and self.newest_seq() - _synced[0] >= 3:
        os.kill(os.getpid(), signal.SIGKILL)
    _sync(self)
    _synced[0] = self.newest_seq()
_rl.ReplayLog.sync = _cut
"""


async def _check_image(c: SeClient, applied: int) -> None:
    """Blocks of seq <= applied hold their write; every other block holds nothing."""
    step = 256 << 10
    for off in range(0, SIZE, step):
        got = await c.read("v", off, step)
        for i in range(step // BS):
            seq = (off + i * BS) // BS
            want = block(seq) if 0 < seq <= applied else bytes(BS)
            assert got[i * BS : (i + 1) * BS] == want, (seq, applied)


async def _write_until_killed(se: SeProcess, c: SeClient, first: int, acked: list[int]) -> None:
    """Pipelined writes from `first` until the SE killed itself (or, if it never saw a batch
    large enough, the test kills it once every write was answered)."""
    window = asyncio.Semaphore(128)
    failed = asyncio.Event()

    async def one(seq: int) -> None:
        try:
            await c.write("v", 1, seq, seq * BS, block(seq))
            acked.append(seq)
        except (SeError, ConnectionError):
            failed.set()  # in flight at the kill: may or may not survive
        finally:
            window.release()

    tasks = []
    for seq in range(first, min(BLOCKS, first + 2 * PER_CYCLE)):
        await window.acquire()
        if failed.is_set():
            window.release()
            break
        tasks.append(asyncio.ensure_future(one(seq)))
    await asyncio.gather(*tasks)
    se.kill9()  # reaps it (it is most likely dead already)


def _holes_cut(tmp: Path) -> int:
    """Records the restarting SE will find beyond a hole (scanned on a copy of the log)."""
    meta = MetadataFile.load(tmp / "se1" / "volumes" / "v" / "meta")
    synced = meta.current.data_synced_seq
    meta.close()
    copy = tmp / "log-copy"
    shutil.copyfile(tmp / "se1" / "logs" / "v.log", copy)
    rl = ReplayLog(copy, MiB)
    rl.open(synced)
    rl.close()
    copy.unlink()
    return rl.discarded


@pytest.mark.timeout(30)
async def test_acknowledged_writes_survive_power_cuts_mid_batch(tmp_path: Path) -> None:
    journal = tmp_path / "journal"
    # a 1 MiB log laps every ~220 writes: the cuts land across wraps too
    se = SeProcess(tmp_path, extra=("--log-size", "1M"))
    acked: list[int] = []
    applied = 0
    cut_records = 0
    start = time.monotonic()
    cycle = 0
    try:
        while cycle < MIN_CYCLES or (
            time.monotonic() - start < BUDGET and (cycle < WANT_CYCLES or cut_records == 0)
        ):
            se.prelude = _PRELUDE.format(env=ENV, journal=str(journal), target=applied + PER_CYCLE)
            se.start()
            c = await SeClient.connect("se1", "127.0.0.1", se.port, SECRET)
            try:
                if cycle == 0:
                    await c.open_volume("v", SIZE)
                    await c.set_epoch("v", 1)
                else:
                    st = await c.volume_state("v")
                    assert (st.state, st.epoch) == ("up", 1), st
                    assert st.applied_seq >= max(acked), (cycle, st.applied_seq, max(acked))
                    applied = st.applied_seq
                    await _check_image(c, applied)
                if applied + 2 * PER_CYCLE >= BLOCKS:
                    break
                await _write_until_killed(se, c, applied + 1, acked)
            finally:
                await c.close()
            mode = "tear" if cycle % 3 == 2 else "lose"
            apply_power_loss(journal, random.Random(cycle), mode)
            cut_records += _holes_cut(tmp_path)
            cycle += 1
        se.prelude = ""
        se.start()
        async with asyncio.timeout(10):
            c = await SeClient.connect("se1", "127.0.0.1", se.port, SECRET)
            st = await c.volume_state("v")
            assert st.applied_seq >= max(acked)
            await _check_image(c, st.applied_seq)
            await c.close()
    finally:
        if se.proc is not None:
            se.terminate()
    assert cycle >= MIN_CYCLES
    # the cuts did make holes with valid records beyond them (what the old scan tripped on)
    assert cut_records > 0
