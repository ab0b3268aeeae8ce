"""The HE read cache against real SEs (issue 9, failures 2 and 7).

Failure 2: with 512-byte blocks and 4 KiB cache pages, a sub-page write drops its page; a read of
a neighbouring sector of the same page, issued while the write is in flight, misses and is served
by an SE that has not applied the write yet. Its fill must not plant the old bytes, or every
read after the write's acknowledgement hits the stale page.

Failure 7: once an HE knows another one took over (its epoch poll or a refused write), its reads
fail like its writes (`Fenced`) and its cache is gone.
"""

from __future__ import annotations

import asyncio
from dataclasses import replace
from pathlib import Path

import pytest

from ophiura.nbd.commands import error_for
from ophiura.nbd.constants import Errno
from ophiura.replication.he.control import control_call
from ophiura.replication.he.host_element import HostElement
from ophiura.replication.he.quorum import Fenced
from ophiura.replication.he.volume import HostElementVolume
from ophiura.scsi.logical_unit import backend_error
from ophiura.scsi.sense import SenseKey

from .he_harness import SECRET, SeHandle, he_config, start_he, wait_all_up, wait_for

PAGE = 4096
SECTOR = 512


def _sector(page: int, sector: int, gen: int) -> bytes:
    head = f"p{page} s{sector} g{gen} ".encode()
    return (head * (SECTOR // len(head) + 1))[:SECTOR]


async def test_sub_page_writes_racing_neighbour_reads_never_leave_stale_cache(
    ses: list[SeHandle], tmp_path: Path
) -> None:
    """Four concurrent workers, each over its own pages: write one sector and, while the write is
    in flight, read a neighbouring sector of the same page (a miss: the write dropped the page).
    The closest SE (a; b and c are slowed by link emulation) answers the read from its data
    file at once, before it made the write durable. After the write's ack, the written sector
    and the whole page must read back new, from the cache or not; before the fix about half of
    these reads returned the old bytes."""
    specs = (ses[0].spec(), ses[1].spec(delay_ms=1.0), ses[2].spec(delay_ms=3.0))
    cfg = replace(he_config(ses, cache_bytes=4 << 20), ses=specs)
    he = await start_he(cfg, tmp_path)
    try:
        vol = he.volumes["vol"].data
        assert vol.block_size == SECTOR and vol.cache.page_size == PAGE and vol.cache.enabled
        await wait_all_up(he)
        workers, per_worker = 4, 60
        pages = workers * per_worker
        for p in range(pages):  # every page starts with known contents (cached by the write)
            await vol.write(p * PAGE, b"".join(_sector(p, s, 0) for s in range(8)))
        current = {p: [_sector(p, s, 0) for s in range(8)] for p in range(pages)}
        stale: list[str] = []
        races = 0

        async def race(p: int, gen: int) -> None:
            nonlocal races
            w = (p + gen) % 8
            new = _sector(p, w, gen)
            neighbour = (w + 1 + gen % 7) % 8
            write = asyncio.ensure_future(vol.write(p * PAGE + w * SECTOR, new))
            await asyncio.sleep(0)  # the write took its seq and dropped the page from the cache
            got = await vol.read(p * PAGE + neighbour * SECTOR, SECTOR)
            assert got == current[p][neighbour], f"page {p} sector {neighbour} corrupted"
            await write
            current[p][w] = new
            races += 1
            if await vol.read(p * PAGE + w * SECTOR, SECTOR) != new:
                stale.append(f"page {p} sector {w} gen {gen}")
            if await vol.read(p * PAGE, PAGE) != b"".join(current[p]):
                stale.append(f"page {p} (whole) gen {gen}")

        async def worker(k: int) -> None:
            for gen in (1, 2):
                for p in range(k * per_worker, (k + 1) * per_worker):
                    await race(p, gen)

        await asyncio.gather(*(worker(k) for k in range(workers)))
        assert races == 2 * pages
        assert vol.cache.stats.hits > 0, "the cache was never used: the test proves nothing"
        assert not stale, f"{len(stale)} stale reads after {races} acks, e.g. {stale[:5]}"
    finally:
        await he.stop()


async def _cached_old_he(
    ses: list[SeHandle], tmp_path: Path
) -> tuple[HostElement, HostElement, HostElementVolume]:
    """An active HE with pages in its cache (reads hit) and a standby on the same SEs."""
    cfg = he_config(ses, cache_bytes=4 << 20)
    old = await start_he(cfg, tmp_path / "old")
    standby = await start_he(replace(cfg, standby=True, state_dir=tmp_path / "new"), tmp_path)
    vol = old.volumes["vol"].data
    await wait_all_up(old)
    for p in range(8):
        await vol.write(p * PAGE, b"o" * PAGE)
        assert await vol.read(p * PAGE, PAGE) == b"o" * PAGE
    assert len(vol.cache) == 8 and vol.cache.stats.hits >= 8
    return old, standby, vol


async def _takeover_and_overwrite(standby: HostElement) -> None:
    await control_call("127.0.0.1", standby.control.port, SECRET, "takeover")
    new_vol = standby.volumes["vol"].data
    for p in range(8):
        await new_vol.write(p * PAGE, b"N" * PAGE)


async def _assert_reads_refused(vol: HostElementVolume) -> None:
    for p in range(8):
        with pytest.raises(Fenced) as info:
            await vol.read(p * PAGE, SECTOR)
        assert "fenced" in str(info.value)
    assert len(vol.cache) == 0, "a fenced HE still holds cached pages"
    # the frontends turn it into a clear error, as for a refused write
    assert error_for(info.value) is Errno.EPERM
    sense = backend_error(info.value, writing=False)
    assert sense.key == SenseKey.DATA_PROTECT


async def test_fenced_by_its_poll_the_old_he_refuses_reads_and_drops_its_cache(
    ses: list[SeHandle], tmp_path: Path
) -> None:
    """Failure 7: the old HE, idle, learns of the takeover from its epoch poll; from then on it
    serves no read, cached or not (before the fix it kept serving its cached, now stale
    pages until the cluster stopped it)."""
    old, standby, vol = await _cached_old_he(ses, tmp_path)
    try:
        await _takeover_and_overwrite(standby)
        await wait_for(lambda: vol.fenced, 5, "the old HE's poll fenced it")
        await _assert_reads_refused(vol)
    finally:
        await old.stop()
        await standby.stop()


async def test_fenced_by_a_refused_write_the_old_he_refuses_reads(
    ses: list[SeHandle], tmp_path: Path
) -> None:
    """The same when a write of the old HE is what tells it (StaleEpoch from an SE)."""
    old, standby, vol = await _cached_old_he(ses, tmp_path)
    try:
        await _takeover_and_overwrite(standby)
        with pytest.raises(Fenced):
            await vol.write(8 * PAGE, b"x" * PAGE)
        assert vol.fenced
        await _assert_reads_refused(vol)
    finally:
        await old.stop()
        await standby.stop()
