"""Recovery between two real SEs: replay from a peer's log, LOG_GONE, full copy under load."""

from __future__ import annotations

import asyncio
import hashlib
import random
import time
from pathlib import Path

import pytest

from ophiura.replication.wire.client import SeClient, VolumeRecovering, VolumeState

from .test_se_support import MiB, block, client_for, running_se

BS = 4096


async def digest(c: SeClient, volume: str, size: int) -> str:
    h = hashlib.sha256()
    for off in range(0, size, MiB):
        h.update(await c.read(volume, off, min(MiB, size - off)))
    return h.hexdigest()


async def wait_state(
    c: SeClient,
    volume: str,
    want: set[str],
    timeout: float = 30.0,
    seen: list[VolumeState] | None = None,
) -> VolumeState:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        st = await c.volume_state(volume)
        if seen is not None:
            seen.append(st)
        if st.state in want:
            return st
        await asyncio.sleep(0.02)
    raise AssertionError(f"{volume} never reached {want}: {st}")


class Writer:
    """The HE's role in these tests: numbered writes to a set of SEs, blocks that overlap."""

    def __init__(self, size: int, seed: int = 1) -> None:
        self.seq = 0
        self.rng = random.Random(seed)
        self.blocks = size // BS

    async def write(self, clients: list[SeClient], volume: str = "v") -> int:
        self.seq += 1
        seq = self.seq
        off = self.rng.randrange(self.blocks) * BS
        size = BS * self.rng.choice((1, 1, 2, 4))
        size = min(size, self.blocks * BS - off)
        data = block(seq, size)
        await asyncio.gather(*[c.write(volume, 1, seq, off, data) for c in clients])
        return seq


async def test_replay_recovery_from_peer_log_ends_identical(tmp_path: Path) -> None:
    size = MiB
    async with (
        running_se(tmp_path, "a") as a,
        running_se(tmp_path, "b") as b,
        client_for(a) as ca,
        client_for(b) as cb,
    ):
        for c in (ca, cb):
            await c.open_volume("v", size)
        w = Writer(size)
        for _ in range(10):
            await w.write([ca, cb])
        for _ in range(90):  # b is down for 11..100
            await w.write([ca])
        assert (await cb.volume_state("v")).applied_seq == 10
        await cb.set_epoch("v", 1, base=0)  # the owner establishes its ballot first
        await cb.recover("v", 1, "replay", ("a", "127.0.0.1", a.port), 100)
        # current writes keep flowing to both during the recovery, on the same blocks
        for _ in range(50):
            await w.write([ca, cb])
        st = await wait_state(cb, "v", {"up"})
        assert st.applied_seq == 150
        assert await digest(ca, "v", size) == await digest(cb, "v", size)
    # and it all survives a restart of b
    async with running_se(tmp_path, "b") as b, client_for(b) as cb:
        assert (await cb.volume_state("v")).applied_seq == 150


async def test_log_gone_when_peer_log_wrapped_then_full_recovery(tmp_path: Path) -> None:
    size = 2 * MiB
    async with (
        running_se(tmp_path, "a", log_size=MiB) as a,
        running_se(tmp_path, "b") as b,
        client_for(a) as ca,
        client_for(b) as cb,
    ):
        for c in (ca, cb):
            await c.open_volume("v", size)
        w = Writer(size, seed=2)
        for _ in range(10):
            await w.write([ca, cb])
        for _ in range(500):  # > 1 MiB of records: a's log wraps past seq 11
            await w.write([ca])
        await cb.set_epoch("v", 1, base=0)  # the owner establishes its ballot first
        await cb.recover("v", 1, "replay", ("a", "127.0.0.1", a.port), w.seq)
        st = await wait_state(cb, "v", {"interrupted-replay"})
        assert "log-gone" in st.detail and st.applied_seq == 10
        with pytest.raises(VolumeRecovering):
            await cb.read("v", 0, BS)  # not up to date: serves no reads
        await cb.set_epoch("v", 1, base=0)  # the owner establishes its ballot first
        await cb.recover("v", 1, "full", ("a", "127.0.0.1", a.port), w.seq)
        for _ in range(20):
            await w.write([ca, cb])
        st = await wait_state(cb, "v", {"up"})
        assert st.applied_seq == w.seq
        assert await digest(ca, "v", size) == await digest(cb, "v", size)


async def test_full_recovery_under_writes_rate_limited_with_progress(tmp_path: Path) -> None:
    size = 8 * MiB
    rate = 16 * MiB
    async with (
        running_se(tmp_path, "a") as a,
        running_se(tmp_path, "b") as b,
        client_for(a) as ca,
        client_for(b) as cb,
    ):
        await ca.open_volume("v", size)
        w = Writer(size, seed=3)
        for _ in range(2000):
            await w.write([ca])
        await cb.open_volume("v", size)  # a new, empty SE
        start = time.monotonic()
        await cb.set_epoch("v", 1, base=0)  # the owner establishes its ballot first
        await cb.recover("v", 1, "full", ("a", "127.0.0.1", a.port), w.seq, rate=rate)
        seen: list[VolumeState] = []
        writer_done = asyncio.Event()

        async def keep_writing() -> None:
            while not writer_done.is_set():
                await w.write([ca, cb])
                await asyncio.sleep(0.002)

        task = asyncio.create_task(keep_writing())
        st = await wait_state(cb, "v", {"up", "interrupted-full"}, seen=seen)
        elapsed = time.monotonic() - start
        writer_done.set()
        await task
        assert st.state == "up", st
        # 8 MiB at 16 MiB/s: about half a second (the bucket allows a 100 ms burst)
        assert 0.35 < elapsed < 3.0, elapsed
        progress = [s.recovery_done for s in seen if s.state == "recovering-full"]
        assert progress and progress == sorted(progress)
        assert any(0 < d < size for d in progress)
        assert all(s.recovery_total == size for s in seen if s.state == "recovering-full")
        assert await digest(ca, "v", size) == await digest(cb, "v", size)
        assert (await cb.volume_state("v")).applied_seq == w.seq


async def test_full_recovery_resumes_after_the_peer_goes_away(tmp_path: Path) -> None:
    size = 8 * MiB
    async with running_se(tmp_path, "b") as b, client_for(b) as cb:
        async with running_se(tmp_path, "a") as a, client_for(a) as ca:
            await ca.open_volume("v", size)
            w = Writer(size, seed=4)
            for _ in range(300):
                await w.write([ca])
            await cb.open_volume("v", size)
            await cb.set_epoch("v", 1, base=0)  # the owner establishes its ballot first
            await cb.recover("v", 1, "full", ("a", "127.0.0.1", a.port), w.seq, rate=8 * MiB)
            await asyncio.sleep(0.4)
            port = a.port
        st = await wait_state(cb, "v", {"interrupted-full"})  # the peer stopped mid-copy
        done_before = st.recovery_done
        assert 0 < done_before < size and "interrupted" in st.detail
        async with (
            running_se(
                tmp_path,
                "a",
            ) as a2,
            client_for(a2) as ca,
        ):
            await cb.set_epoch("v", 1, base=0)  # the owner establishes its ballot first
            await cb.recover("v", 1, "full", ("a", "127.0.0.1", a2.port), w.seq)
            seen: list[VolumeState] = []
            st = await wait_state(cb, "v", {"up"}, seen=seen)
            first = [s.recovery_done for s in seen if s.state == "recovering-full"]
            assert not first or first[0] >= done_before  # resumed, not restarted
            assert await digest(ca, "v", size) == await digest(cb, "v", size)
        assert port
