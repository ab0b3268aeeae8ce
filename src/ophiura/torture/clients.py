"""The workload: concurrent writers and readers over NBD and iSCSI, and the history they record.

Writers send stamped writes (`stamp`) of 512 B to 1 MiB at any 512-byte offset (sub-page and
unaligned to pages), a third of them to a hot 64 KiB region, some with FUA, with FLUSHes in
between. Readers read 512 B to 128 KiB, often at unaligned byte offsets, mostly where writers
write (the hot region, or the range a writer is writing right now), so reads race writes to the
same pages. Each client holds its own connection to an HE that says it is active (NBD for most,
an iSCSI session for some: READ/WRITE(16) with FUA, SYNCHRONIZE CACHE, so the SCSI path with its
task handling and sense errors is under the same faults); on a lost connection it reconnects to
whichever HE is active then (several, if several say so).

Every operation is timed with one monotonic clock (all clients live in this process), which is
what the checker's real-time order needs.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from ophiura.causes import describe
from ophiura.iscsi.initiator import IscsiError, IscsiInitiator, ScsiCommandError
from ophiura.nbd.client import NbdClient, NbdClientError, NbdError
from ophiura.replication.he.config import DEFAULT_IQN_PREFIX
from ophiura.torture import stamp
from ophiura.torture.checker import Read, Write

SECTOR = stamp.SECTOR
HOT_SECTORS = 128  # 64 KiB
OP_TIMEOUT = 20.0  # a client gives up on one request after this (the HE's own is 10 s per SE)


@dataclass
class History:
    t0: float = field(default_factory=time.monotonic)
    writes: list[Write] = field(default_factory=list)
    reads: list[Read] = field(default_factory=list)
    acks_by_he: dict[str, list[float]] = field(default_factory=dict)
    flushes: int = 0
    flush_errors: int = 0
    read_errors: int = 0
    reconnects: int = 0
    by_protocol: dict[str, int] = field(default_factory=dict)  # "nbd acks", "iscsi reads", ...
    in_flight: dict[int, tuple[int, int]] = field(default_factory=dict)  # writer -> (lba, count)

    def now(self) -> float:
        return time.monotonic() - self.t0

    def count(self, what: str) -> None:
        self.by_protocol[what] = self.by_protocol.get(what, 0) + 1


@dataclass
class Target:
    """An HE for clients to use: its name (for the history), NBD and iSCSI ports."""

    name: str
    port: int
    iscsi: int = 0


class BlockClient(Protocol):
    """What a workload client does, whatever the protocol (NbdClient has these calls)."""

    async def write(self, offset: int, data: bytes, fua: bool = False) -> None: ...
    async def read(self, offset: int, length: int) -> bytes: ...
    async def flush(self) -> None: ...
    async def close(self) -> None: ...


class IscsiClient:
    """The same calls over an iSCSI session to the volume's target on one HE."""

    def __init__(self, session: IscsiInitiator) -> None:
        self.session = session

    @classmethod
    async def connect(cls, port: int, volume: str, initiator: str) -> IscsiClient:
        target = f"{DEFAULT_IQN_PREFIX}{volume}"
        return cls(await IscsiInitiator.connect("127.0.0.1", port, target, initiator, timeout=5))

    async def write(self, offset: int, data: bytes, fua: bool = False) -> None:
        await self.session.write(offset // SECTOR, data, fua=fua)

    async def read(self, offset: int, length: int) -> bytes:
        """Whole sectors over the wire; the bytes asked for (at any offset) back."""
        first, end = offset // SECTOR, -(-(offset + length) // SECTOR)
        data = await self.session.read(first, end - first)
        skip = offset - first * SECTOR
        return data[skip : skip + length]

    async def flush(self) -> None:
        r = await self.session.scsi(0, bytes([0x35]) + bytes(9))  # SYNCHRONIZE CACHE(10)
        if not r.ok:
            raise ScsiCommandError("SYNCHRONIZE CACHE(10)", r)

    async def close(self) -> None:
        try:
            await asyncio.wait_for(self.session.logout(), 2)
        finally:
            await self.session.close()


# A refused request (fenced, read-only, quorum lost): the connection is fine, try again.
REFUSED = (NbdError, ScsiCommandError)
# The connection itself failed: make a new one (to whichever HE is active now).
BROKEN = (NbdClientError, IscsiError, OSError, TimeoutError, asyncio.IncompleteReadError)


class Connection:
    """One client's connection (NBD, or iSCSI when `iscsi`), re-made on failure to an active
    HE."""

    def __init__(
        self,
        pick: Callable[[], list[Target]],
        volume: str,
        rng: random.Random,
        hist: History,
        iscsi: bool = False,
        name: str = "",
    ) -> None:
        self.pick = pick
        self.hist = hist
        self.connects = 0
        self.volume = volume
        self.rng = rng
        self.iscsi = iscsi
        self.initiator = f"iqn.2026-11.org.ophiura.torture:{name or id(self)}"
        self.client: BlockClient | None = None
        self.target: Target | None = None

    @property
    def protocol(self) -> str:
        return "iscsi" if self.iscsi else "nbd"

    async def _open(self, target: Target) -> BlockClient:
        if self.iscsi:
            return await IscsiClient.connect(target.iscsi, self.volume, self.initiator)
        return await NbdClient.connect("127.0.0.1", target.port, self.volume, timeout=5)

    async def get(self, stop: asyncio.Event) -> BlockClient | None:
        delay = 0.05
        while self.client is None and not stop.is_set():
            targets = [t for t in self.pick() if t.iscsi or not self.iscsi]
            if targets:
                target = self.rng.choice(targets)
                try:
                    self.client = await self._open(target)
                    self.target = target
                    self.connects += 1
                    if self.connects > 1:
                        self.hist.reconnects += 1
                    break
                except BROKEN:
                    pass
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), delay)
            delay = min(0.5, delay * 2)
        return self.client

    async def drop(self) -> None:
        if self.client is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.client.close(), 5)
        self.client = None


def _write_size(rng: random.Random) -> int:
    """Sectors: mostly sub-page, some large, a few up to 1 MiB."""
    r = rng.random()
    if r < 0.35:
        return 1
    if r < 0.65:
        return rng.randint(2, 7)
    if r < 0.9:
        return rng.randint(8, 64)
    return rng.randint(65, 2048)


async def writer(
    wid: int,
    hist: History,
    pick: Callable[[], list[Target]],
    volume: str,
    sectors: int,
    stop: asyncio.Event,
    seed: int,
    iscsi: bool = False,
) -> None:
    rng = random.Random(seed * 1000 + wid)
    conn = Connection(pick, volume, rng, hist, iscsi, f"w{wid}")
    op = 0
    while not stop.is_set():
        client = await conn.get(stop)
        if client is None:
            break
        op += 1
        count = min(_write_size(rng), sectors)
        if rng.random() < 0.33:
            lba = rng.randrange(HOT_SECTORS)
            count = min(count, HOT_SECTORS * 2)
        else:
            lba = rng.randrange(sectors - count + 1)
        count = min(count, sectors - lba)
        data = stamp.payload(wid, op, lba, count)
        fua = rng.random() < 0.2
        he = conn.target.name if conn.target else "?"
        hist.in_flight[wid] = (lba, count)
        start = hist.now()
        end: float | None = None
        try:
            await asyncio.wait_for(client.write(lba * SECTOR, data, fua=fua), OP_TIMEOUT)
            end = hist.now()
            hist.acks_by_he.setdefault(he, []).append(end)
            hist.count(f"{conn.protocol} acked writes")
        except REFUSED:
            await asyncio.sleep(0.05)  # read-only (quorum lost, fenced): try again, same HE
            if rng.random() < 0.3:
                await conn.drop()  # now and then look for another active HE
        except BROKEN:
            await conn.drop()
        hist.in_flight.pop(wid, None)
        hist.writes.append(Write(stamp.write_id(wid, op), lba, count, start, end))
        if rng.random() < 0.1 and conn.client is not None:
            try:
                await asyncio.wait_for(conn.client.flush(), OP_TIMEOUT)
                hist.flushes += 1
                hist.count(f"{conn.protocol} flushes")
            except REFUSED + BROKEN:
                hist.flush_errors += 1
        await asyncio.sleep(rng.uniform(0.0, 0.02))  # keep the CPU for the processes under test
    await conn.drop()


async def reader(
    rid: int,
    hist: History,
    pick: Callable[[], list[Target]],
    volume: str,
    sectors: int,
    stop: asyncio.Event,
    seed: int,
    iscsi: bool = False,
) -> None:
    rng = random.Random(seed * 1000 + 500 + rid)
    conn = Connection(pick, volume, rng, hist, iscsi, f"r{rid}")
    n = 0
    while not stop.is_set():
        client = await conn.get(stop)
        if client is None:
            break
        n += 1
        busy = list(hist.in_flight.values())
        r = rng.random()
        if busy and r < 0.4:
            lba, count = rng.choice(busy)  # race the write in flight
            lba = max(0, lba + rng.randint(-4, 4))
            count = min(max(1, count + rng.randint(-4, 8)), 256)
        elif r < 0.8:
            lba, count = rng.randrange(HOT_SECTORS), rng.randint(1, 16)
        else:
            lba, count = rng.randrange(sectors), rng.randint(1, 256)
        count = max(1, min(count, sectors - lba))
        skew = rng.randrange(1, SECTOR) if rng.random() < 0.3 else 0  # unaligned byte offset
        offset, length = lba * SECTOR + skew, count * SECTOR - skew
        start = hist.now()
        try:
            data = await asyncio.wait_for(client.read(offset, length), OP_TIMEOUT)
        except REFUSED:
            hist.read_errors += 1
            await asyncio.sleep(0.05)
            continue
        except BROKEN:
            hist.read_errors += 1
            await conn.drop()
            continue
        end = hist.now()
        hist.count(f"{conn.protocol} reads")
        first = lba + (1 if skew else 0)  # only the sectors read whole
        whole = data[SECTOR - skew :] if skew else data
        runs = stamp.decode_runs(whole, first)
        hist.reads.append(Read(f"r{rid}:{n}", start, end, tuple(runs)))
        await asyncio.sleep(rng.uniform(0.0, 0.02))
    await conn.drop()


async def full_read(
    target: Target, volume: str, sectors: int, hist: History, label: str
) -> str | None:
    """Read every sector through one HE (after healing); None, or why it failed."""
    try:
        client = await NbdClient.connect("127.0.0.1", target.port, volume, timeout=10)
    except (NbdClientError, OSError, TimeoutError, asyncio.IncompleteReadError) as exc:
        return f"connect: {describe(exc, 10)}"
    try:
        step = 2048
        for first in range(0, sectors, step):
            count = min(step, sectors - first)
            start = hist.now()
            data = await asyncio.wait_for(client.read(first * SECTOR, count * SECTOR), 30)
            runs = stamp.decode_runs(data, first)
            hist.reads.append(Read(f"{label}@{first}", start, hist.now(), tuple(runs), True))
    except (NbdClientError, OSError, TimeoutError, asyncio.IncompleteReadError) as exc:
        return f"read: {describe(exc, 30)}"
    finally:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(client.disconnect(), 5)
    return None
