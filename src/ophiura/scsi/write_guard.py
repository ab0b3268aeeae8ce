"""Atomic read-modify-write ranges (COMPARE AND WRITE, ORWRITE) against concurrent writers.

SBC-3 makes COMPARE AND WRITE atomic with respect to every other command to those blocks, from
any I_T nexus: a plain WRITE must not land between its read and its write. Plain writes register
their block range (two dict operations, no await) so an atomic operation can wait for the
overlapping ones to drain; while an atomic range is held, overlapping new writes wait for it.
Non-overlapping I/O never waits, and with no atomic operation running nothing ever waits.
"""

from __future__ import annotations

import asyncio


class WriteGuard:
    __slots__ = ("_next", "_waiters", "atomics", "writers")

    def __init__(self) -> None:
        self.writers: dict[int, tuple[int, int]] = {}  # id -> [start, end) in blocks
        self.atomics: list[tuple[int, int]] = []
        self._waiters: list[asyncio.Future[None]] = []
        self._next = 0

    @staticmethod
    def _overlap(ranges: list[tuple[int, int]], start: int, end: int) -> bool:
        return any(s < end and start < e for s, e in ranges)

    async def _wait(self) -> None:
        fut = asyncio.get_running_loop().create_future()
        self._waiters.append(fut)
        try:
            await fut
        finally:
            if fut in self._waiters:
                self._waiters.remove(fut)

    def _wake(self) -> None:
        waiters, self._waiters = self._waiters, []
        for fut in waiters:
            if not fut.done():
                fut.set_result(None)

    async def begin_write(self, start: int, end: int) -> int:
        """Register a plain write of blocks [start, end); returns its id for end_write."""
        while self.atomics and self._overlap(self.atomics, start, end):
            await self._wait()
        self._next += 1
        self.writers[self._next] = (start, end)
        return self._next

    def end_write(self, wid: int) -> None:
        del self.writers[wid]
        if self._waiters:
            self._wake()

    async def begin_atomic(self, start: int, end: int) -> tuple[int, int]:
        """Own blocks [start, end) exclusively: no other write or atomic operation overlaps."""
        while self._overlap(self.atomics, start, end):
            await self._wait()
        rng = (start, end)
        self.atomics.append(rng)  # from here on, overlapping writers queue behind us
        try:
            while self._overlap(list(self.writers.values()), start, end):
                await self._wait()
        except BaseException:
            self.end_atomic(rng)
            raise
        return rng

    def end_atomic(self, rng: tuple[int, int]) -> None:
        self.atomics.remove(rng)
        self._wake()
