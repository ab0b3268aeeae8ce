"""The paper's local/near/far links on one machine: per-direction delay and a bandwidth cap.

`tc netem` is missing here, so the HE's client delays its own frames. Each direction is a FIFO
of (release time, bytes) drained by one timer: frames keep their order (the MAC counter demands
it) and a delayed frame never blocks the event loop or other connections. Bandwidth is a
serialisation clock: a frame of n bytes occupies the link for n*8/rate seconds after the previous
one, then travels `one_way_delay`.

Timing uses `time.monotonic()`, not `loop.time()`: uvloop's clock is libuv's millisecond clock,
cached at the start of each loop iteration, so a frame checked against it when its timer fired
looked not yet due and waited for the next millisecond tick (a 1 ms link measured 1.96 ms, a 2 ms
round trip 3.5 ms). Timers themselves are millisecond-grained on both loops (uvloop rounds the
delay to whole ms, asyncio's epoll rounds the wait up), so a frame is delivered when its timer
fires within `TOLERANCE` of its release time rather than re-armed for a sub-millisecond rest:
measured with uvloop, 1 ms -> 1.09 ms and 2 ms -> 2.09 ms per direction.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

# A frame whose release time is at most this far ahead when a timer fires is delivered then:
# timers cannot wait for less than a millisecond, so re-arming would cost up to a whole one.
TOLERANCE = 0.0005


@dataclass(frozen=True)
class LinkEmulation:
    """One-way delay (seconds, each direction) and an optional bandwidth cap (bits/s)."""

    one_way_delay: float = 0.0
    rate_bits_per_s: float | None = None

    def __post_init__(self) -> None:
        if self.one_way_delay < 0:
            raise ValueError(f"one_way_delay {self.one_way_delay} is negative")
        if self.rate_bits_per_s is not None and self.rate_bits_per_s <= 0:
            raise ValueError(f"rate {self.rate_bits_per_s} bits/s must be positive")

    @property
    def active(self) -> bool:
        return self.one_way_delay > 0 or self.rate_bits_per_s is not None


class DelayLine:
    """Delivers items to `deliver` in order, each after the link's delay and serialisation."""

    def __init__(self, link: LinkEmulation, deliver: Callable[[Any], None]) -> None:
        self._link = link
        self._deliver = deliver
        self._queue: deque[tuple[float, Any]] = deque()
        self._timer: asyncio.TimerHandle | None = None
        self._link_free = 0.0
        self._loop = asyncio.get_running_loop()

    def push(self, item: Any, nbytes: int) -> None:
        now = time.monotonic()
        start = now
        if self._link.rate_bits_per_s is not None:
            start = max(now, self._link_free) + nbytes * 8 / self._link.rate_bits_per_s
            self._link_free = start
        release = start + self._link.one_way_delay
        self._queue.append((release, item))
        if self._timer is None:
            self._arm(release, now)

    def _arm(self, release: float, now: float) -> None:
        self._timer = self._loop.call_later(max(0.0, release - now), self._fire)

    def _fire(self) -> None:
        self._timer = None
        due = time.monotonic() + TOLERANCE
        while self._queue and self._queue[0][0] <= due:
            _, item = self._queue.popleft()
            self._deliver(item)
        if self._queue:
            self._arm(self._queue[0][0], time.monotonic())

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._queue.clear()
