"""Read balancing (StarFish §4): which SE serves a read, through the real `HostElementVolume`.

The fake SEs acknowledge writes when the test says so and hold every read until the test
answers it, so the test sees exactly which SE each read was sent to and how many are in flight.
The rule under test (`read_route`): only an `up` SE that acknowledged every acknowledged write
to the range is ever asked; among those, the reads are divided by outstanding reads weighted by
RTT. The live counterparts are test_he_read_cache_live.py and test_he_live.py.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field

import pytest

from ophiura.replication.he import read_route
from ophiura.replication.he.se_session import ReplicaState, SeSession, SeSpec, SessionState
from ophiura.replication.he.volume import HostElementVolume, VolumeConfig

CHUNK = 64 * 1024  # BlockSeqMap's chunk: a write to chunk 0 says nothing of chunk 1
SIZE = 4 * CHUNK


@dataclass
class FakeSe:
    """Acknowledges writes on `ack_all`; reads wait in `reads` until `serve_all`."""

    name: str
    rtt: float
    data: bytearray = field(default_factory=lambda: bytearray(SIZE))
    writes: list[tuple[int, int, bytes, asyncio.Future[int]]] = field(default_factory=list)
    durable: int = 0
    reads: list[tuple[int, int, asyncio.Future[tuple[int, bytes]]]] = field(default_factory=list)

    async def write(
        self, volume: str, epoch: int, seq: int, offset: int, data: bytes, **ballot: int
    ) -> int:
        fut: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self.writes.append((seq, offset, data, fut))
        return await fut

    async def read_with_seq(
        self, volume: str, offset: int, length: int, ballot: tuple[int, int] = (0, 0)
    ) -> tuple[int, bytes]:
        fut: asyncio.Future[tuple[int, bytes]] = asyncio.get_running_loop().create_future()
        self.reads.append((offset, length, fut))
        return await fut

    async def close(self) -> None:
        pass

    def ack_all(self) -> None:
        for seq, offset, data, fut in self.writes:
            self.data[offset : offset + len(data)] = data
            self.durable = max(self.durable, seq)
            if not fut.done():
                fut.set_result(seq)
        self.writes.clear()

    def serve_all(self) -> None:
        reads, self.reads = self.reads, []
        for offset, length, fut in reads:
            if not fut.done():
                fut.set_result((self.durable, bytes(self.data[offset : offset + length])))


def _volume(ses: list[FakeSe], quorum: int = 2) -> HostElementVolume:
    sessions = [SeSession(SeSpec(se.name, "127.0.0.1", 1), b"k" * 32) for se in ses]
    vol = HostElementVolume(VolumeConfig("vol", SIZE, quorum, cache_bytes=0), sessions, epoch=1)
    for se, s in zip(ses, sessions, strict=True):
        s.client, s.state = se, SessionState.CONNECTED
        r = vol.replicas[se.name]
        r.client, r.state = se, ReplicaState.UP
    return vol


async def _settle() -> None:
    for _ in range(10):
        await asyncio.sleep(0)


async def _close(vol: HostElementVolume, tasks: list[asyncio.Task[object]]) -> None:
    for t in tasks:
        t.cancel()
    await vol.close()
    for t in tasks:
        with contextlib.suppress(BaseException):
            await t


def test_a_lagging_se_is_never_asked_for_a_block_it_has_not_acked() -> None:
    async def run() -> None:
        a, b, c = FakeSe("a", 0.0001), FakeSe("b", 0.0002), FakeSe("c", 0.00005)
        vol = _volume([a, b, c])
        tasks: list[asyncio.Task[object]] = []
        try:
            w = asyncio.ensure_future(vol.write(0, b"N" * 4096))
            await _settle()
            a.ack_all()
            b.ack_all()  # Q=2 reached; c (the nearest SE) has not acked it
            await w
            assert vol.replicas["c"].tracker.contiguous == 0
            tasks = [asyncio.ensure_future(vol.read(0, 4096)) for _ in range(12)]
            await _settle()
            assert not c.reads, "the lagging SE was asked for a block it has not acked"
            assert len(a.reads) + len(b.reads) == 12
            assert abs(len(a.reads) - len(b.reads)) <= 6  # divided, RTT-weighted
            assert len(a.reads) >= 1 and len(b.reads) >= 1
            # a chunk the write did not touch: the lagging SE may serve it (and, nearest, does)
            other = asyncio.ensure_future(vol.read(CHUNK, 4096))
            tasks.append(other)
            await _settle()
            assert len(c.reads) == 1
            a.serve_all()
            b.serve_all()
            c.serve_all()
            assert await tasks[0] == b"N" * 4096
            assert await other == bytes(4096)
            # once c acks, it is eligible for the block again and, idle and nearest, chosen
            c.ack_all()
            await _settle()
            again = asyncio.ensure_future(vol.read(0, 4096))
            tasks.append(again)
            await _settle()
            assert len(c.reads) == 1
            c.serve_all()
            assert await again == b"N" * 4096
        finally:
            await _close(vol, tasks)

    asyncio.run(run())


def test_reads_spread_over_every_eligible_se_by_outstanding_reads() -> None:
    async def run() -> None:
        ses = [FakeSe(n, 0.0001) for n in "abc"]
        vol = _volume(ses)
        tasks = [asyncio.ensure_future(vol.read(i * 4096, 4096)) for i in range(9)]
        try:
            await _settle()
            assert [len(se.reads) for se in ses] == [3, 3, 3]
            assert [vol.replicas[se.name].reading for se in ses] == [3, 3, 3]
            for se in ses:
                se.serve_all()
            await asyncio.gather(*tasks)
            assert [vol.replicas[se.name].reading for se in ses] == [0, 0, 0]
            assert [vol.replicas[se.name].reads for se in ses] == [3, 3, 3]
            assert [s["reads"] for s in vol.status()["ses"]] == [3, 3, 3]
        finally:
            await _close(vol, tasks)

    asyncio.run(run())


def test_a_distant_se_takes_reads_only_when_the_near_ones_are_far_busier() -> None:
    async def run() -> None:
        near, far = FakeSe("near", 0.0001), FakeSe("far", 0.008)  # 0.1 ms vs 8 ms
        vol = _volume([near, far], quorum=1)
        tasks = [asyncio.ensure_future(vol.read(0, 4096)) for _ in range(16)]
        try:
            await _settle()
            assert len(near.reads) == 16 and not far.reads  # QD16 is not 80 reads deep
        finally:
            await _close(vol, tasks)

    asyncio.run(run())


@pytest.mark.parametrize(
    "state",
    [
        ReplicaState.CONNECTING,
        ReplicaState.RECOVERING_QUICK,
        ReplicaState.RECOVERING_REPLAY,
        ReplicaState.RECOVERING_FULL,
        ReplicaState.FAILED,
        ReplicaState.FENCED,
        ReplicaState.CLOSED,
    ],
)
def test_only_up_attached_ses_are_eligible(state: ReplicaState) -> None:
    async def run() -> None:
        a, b = FakeSe("a", 0.0001), FakeSe("b", 0.0001)
        vol = _volume([a, b], quorum=1)
        try:
            ra, rb = vol.replicas["a"], vol.replicas["b"]
            assert read_route.eligible(vol.replicas.values(), 0) == [ra, rb]
            ra.state = state  # e.g. a quick recovery: its acks may be ahead, its data is not
            assert read_route.eligible(vol.replicas.values(), 0) == [rb]
            ra.state = ReplicaState.UP
            rb.client = None  # up but detached
            assert read_route.eligible(vol.replicas.values(), 0) == [ra]
            ra.tracker.raise_to(5)
            assert read_route.eligible(vol.replicas.values(), 6) == []
            assert read_route.eligible(vol.replicas.values(), 5) == [ra]
        finally:
            await vol.close()

    asyncio.run(run())
