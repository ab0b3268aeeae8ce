"""The emulated link's delay line: in order, never early, and close to the asked delay.

Its per-direction error is what `docs/benchmarks.md` reports for the StarFish benchmarks; the
bounds here are loose (a shared CI machine) but catch a regression to millisecond timer ticks,
which added up to a whole millisecond per direction.
"""

from __future__ import annotations

import asyncio
import statistics
import time

import pytest

from ophiura.replication.wire import link as link_emulation
from ophiura.replication.wire.link import DelayLine, LinkEmulation


async def _errors(delay: float, n: int, line_factory=DelayLine) -> list[float]:  # type: ignore[no-untyped-def]
    got: list[tuple[int, float]] = []
    line = line_factory(LinkEmulation(delay), lambda item: got.append((item, time.monotonic())))
    sent: list[float] = []
    try:
        for i in range(n):
            sent.append(time.monotonic())
            line.push(i, 100)
            await asyncio.sleep(delay + 0.0013 * (i % 3))
        await asyncio.sleep(delay + 0.01)
    finally:
        line.close()
    assert [i for i, _ in got] == list(range(n))  # every frame, in order
    return [at - sent[i] - delay for i, at in got]


@pytest.mark.parametrize("delay", [0.001, 0.004])
async def test_delay_is_never_early_and_close(delay: float) -> None:
    errs = await _errors(delay, 60)
    assert min(errs) >= -1e-4, min(errs)  # timerfd: never early (clock read granularity)
    if link_emulation._TimerFd.create() is not None:
        assert statistics.median(errs) < 0.0006, statistics.median(errs)


async def test_burst_keeps_order_and_serialises_at_the_rate() -> None:
    got: list[tuple[int, float]] = []
    link = LinkEmulation(0.002, rate_bits_per_s=8 * 1_000_000)  # 1 MB/s: 10 ms per 10 kB
    line = DelayLine(link, lambda item: got.append((item, time.monotonic())))
    start = time.monotonic()
    for i in range(5):
        line.push(i, 10_000)
    await asyncio.sleep(0.08)
    line.close()
    assert [i for i, _ in got] == list(range(5))
    last = got[-1][1] - start
    assert last >= 0.05 + 0.002 - 1e-4, last  # 5 x 10 ms serialised, then 2 ms


async def test_close_stops_delivery() -> None:
    got: list[int] = []
    line = DelayLine(LinkEmulation(0.005), got.append)
    line.push(1, 10)
    line.close()
    await asyncio.sleep(0.02)
    assert got == []
    line.close()  # twice is fine
