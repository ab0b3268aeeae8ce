"""The HE write queue (StarFish §3): recent writes, bounded in bytes, in sequence order.

It serves three purposes, all pure bookkeeping here (the waiting lives in `volume.py`):
- quick recovery: an SE that returns with applied seq A gets writes A+1.. resent from here;
- bounded data loss: the HE takes no new host write while the queue is full;
- failure detection: the oldest write may only be evicted once every live SE acknowledged it,
  so a laggard shows up as "the oldest entry cannot be evicted" and is declared failed.

`BlockSeqMap` remembers, per chunk of the volume, the highest acknowledged write still in the
queue, so reads can be routed only to SEs that hold it. Its size follows the queue's.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum

ENTRY_OVERHEAD = 64  # bytes charged per entry, so a flood of trims is bounded too


class OpKind(StrEnum):
    WRITE = "write"
    TRIM = "trim"
    ZERO = "zero"


@dataclass(frozen=True, slots=True)
class WriteOp:
    """One sequenced update; `data` only for WRITE."""

    seq: int
    kind: OpKind
    offset: int
    length: int
    data: bytes | None = None

    @property
    def cost(self) -> int:
        return (len(self.data) if self.data is not None else 0) + ENTRY_OVERHEAD


class WriteQueueError(Exception):
    """A caller broke the queue's contract (sequence gap, oversize entry)."""


class WriteQueue:
    """Circular buffer of the most recent writes of one volume, bounded by `capacity` bytes."""

    def __init__(self, capacity: int, next_seq: int = 1) -> None:
        if capacity < 4096:
            raise ValueError(f"write queue capacity {capacity} is below 4096 bytes")
        self.capacity = capacity
        self.used = 0
        self._entries: deque[WriteOp] = deque()
        self._next = next_seq  # the seq the next append must carry
        self.evicted_upto = next_seq - 1  # highest seq no longer held here

    # ---- queries -------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._entries)

    @property
    def first_seq(self) -> int:
        """Oldest seq still held (== next seq when empty)."""
        return self._entries[0].seq if self._entries else self._next

    @property
    def last_seq(self) -> int:
        return self._next - 1

    @property
    def fill(self) -> float:
        return self.used / self.capacity

    def fits(self, cost: int) -> bool:
        """Room for an entry of `cost` bytes; an oversize entry fits only an empty queue."""
        return self.used + cost <= self.capacity or not self._entries

    def oldest(self) -> WriteOp | None:
        return self._entries[0] if self._entries else None

    def covers(self, after_seq: int) -> bool:
        """Every write with seq > after_seq is still here (quick recovery is possible)."""
        return after_seq + 1 >= self.first_seq and after_seq <= self.last_seq

    def since(self, after_seq: int, upto: int | None = None) -> list[WriteOp]:
        """Writes after_seq+1 .. upto (default: the newest), in order."""
        if not self.covers(after_seq):
            raise WriteQueueError(
                f"writes after seq {after_seq} are not all queued (oldest is {self.first_seq})"
            )
        last = self.last_seq if upto is None else min(upto, self.last_seq)
        start = after_seq + 1 - self.first_seq
        return [self._entries[i] for i in range(start, start + max(0, last - after_seq))]

    def blockers(self, watermarks: Mapping[str, int]) -> list[str]:
        """Live SEs (name -> contiguous acked seq) that have not acked the oldest entry."""
        oldest = self.oldest()
        if oldest is None:
            return []
        return sorted(name for name, mark in watermarks.items() if mark < oldest.seq)

    # ---- updates -------------------------------------------------------------------------
    def append(self, op: WriteOp) -> None:
        if op.seq != self._next:
            raise WriteQueueError(f"append of seq {op.seq}, expected {self._next}")
        if not self.fits(op.cost):
            raise WriteQueueError(f"no room for {op.cost} bytes ({self.used}/{self.capacity})")
        self._entries.append(op)
        self.used += op.cost
        self._next += 1

    def evict(self, min_watermark: int) -> list[WriteOp]:
        """Drop the oldest entries that every live SE acknowledged (seq <= min_watermark)."""
        out: list[WriteOp] = []
        while self._entries and self._entries[0].seq <= min_watermark:
            op = self._entries.popleft()
            self.used -= op.cost
            self.evicted_upto = op.seq
            out.append(op)
        return out


def chunks_of(offset: int, length: int, chunk: int) -> range:
    return range(offset // chunk, (offset + max(length, 1) - 1) // chunk + 1)


class BlockSeqMap:
    """chunk index -> highest acknowledged seq still in the write queue.

    Coarse chunks (64 KiB by default) keep it cheap for large writes; coarseness only makes
    read routing more conservative, never wrong. Anything not in the map was evicted, which
    required every live SE's ack, so every up SE holds it.
    """

    def __init__(self, chunk: int = 64 * 1024) -> None:
        self.chunk = chunk
        self._seq: dict[int, int] = {}

    def __len__(self) -> int:
        return len(self._seq)

    def record(self, offset: int, length: int, seq: int) -> None:
        get = self._seq.get
        for c in chunks_of(offset, length, self.chunk):
            if get(c, 0) < seq:
                self._seq[c] = seq

    def required(self, offset: int, length: int) -> int:
        get = self._seq.get
        return max((get(c, 0) for c in chunks_of(offset, length, self.chunk)), default=0)

    def forget(self, ops: Iterable[WriteOp]) -> None:
        """Evicted entries: drop chunks whose recorded seq is no newer than the evicted one."""
        for op in ops:
            for c in chunks_of(op.offset, op.length, self.chunk):
                s = self._seq.get(c)
                if s is not None and s <= op.seq:
                    del self._seq[c]

    def clear(self) -> None:
        self._seq.clear()
