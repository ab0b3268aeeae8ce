"""The paper's local/near/far links on one machine: per-direction delay and a bandwidth cap.

`tc netem` is missing here, so the HE's client delays its own frames. Each direction is a FIFO
of (release time, bytes) drained by one timer: frames keep their order (the MAC counter demands
it) and a delayed frame never blocks the event loop or other connections. Bandwidth is a
serialisation clock: a frame of n bytes occupies the link for n*8/rate seconds after the previous
one, then travels `one_way_delay`.

Timing uses `time.monotonic()` (CLOCK_MONOTONIC), not `loop.time()`: uvloop's clock is libuv's
millisecond clock, cached at the start of each loop iteration. The event loops' own timers are
millisecond-grained (uvloop rounds the delay to whole ms, asyncio's epoll rounds the wait up), so
on Linux each delay line arms a `timerfd` (CLOCK_MONOTONIC, absolute, nanosecond resolution)
watched by the loop (`add_reader`): a frame is handed on when the kernel's timer fires at its
release time, plus the loop's wake-up. Measured per direction with uvloop on the 2-core VM (300
frames each, `tests/replication/test_link_emulation.py` checks the bounds): 1 ms -> +0.05-0.07 ms
median (the millisecond timers gave +0.11 ms, and up to +1 ms when a tick was missed), never
early. Elsewhere (no timerfd) the loop's timer is used, delivering a frame whose timer fires
within `TOLERANCE` of its release time.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

# A frame whose release time is at most this far ahead when a timer fires is delivered then:
# timers cannot wait for less than a millisecond, so re-arming would cost up to a whole one.
TOLERANCE = 0.0005


class _TimerFd:
    """A CLOCK_MONOTONIC timerfd (Linux), armed at absolute `time.monotonic()` values."""

    _libc: ctypes.CDLL | None = None
    _CLOCK_MONOTONIC = 1
    _TFD_FLAGS = os.O_NONBLOCK | os.O_CLOEXEC  # TFD_NONBLOCK | TFD_CLOEXEC
    _TFD_TIMER_ABSTIME = 1

    class _Spec(ctypes.Structure):  # struct itimerspec: interval (0: one-shot), value
        _fields_ = [(n, ctypes.c_long) for n in ("i_sec", "i_nsec", "v_sec", "v_nsec")]

    @classmethod
    def create(cls) -> _TimerFd | None:
        if cls._libc is None:
            try:
                libc = ctypes.CDLL(None, use_errno=True)
                libc.timerfd_create  # noqa: B018 - AttributeError where there is none
            except (OSError, AttributeError):
                return None
            cls._libc = libc
        fd = cls._libc.timerfd_create(cls._CLOCK_MONOTONIC, cls._TFD_FLAGS)
        return None if fd < 0 else cls(fd)

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self._spec = self._Spec()
        self._ref = ctypes.byref(self._spec)
        self._settime = self._libc.timerfd_settime  # type: ignore[union-attr]

    def arm(self, at: float) -> None:
        """Fire once at monotonic time `at` (at once if it has passed)."""
        sec = int(at)
        nsec = int((at - sec) * 1e9)
        if sec <= 0 and nsec <= 0:  # all zero would disarm
            nsec = 1
        spec = self._spec
        spec.v_sec, spec.v_nsec = sec, nsec
        if self._settime(self.fd, self._TFD_TIMER_ABSTIME, self._ref, None) != 0:
            raise OSError(ctypes.get_errno(), "timerfd_settime")

    def clear(self) -> None:
        with contextlib.suppress(BlockingIOError, InterruptedError):
            os.read(self.fd, 8)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


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
        self._tfd = _TimerFd.create()
        self._armed = False  # the timerfd is armed
        if self._tfd is not None:
            try:
                self._loop.add_reader(self._tfd.fd, self._fire_fd)
            except (NotImplementedError, RuntimeError, OSError):
                self._tfd.close()
                self._tfd = None

    def push(self, item: Any, nbytes: int) -> None:
        now = time.monotonic()
        start = now
        if self._link.rate_bits_per_s is not None:
            start = max(now, self._link_free) + nbytes * 8 / self._link.rate_bits_per_s
            self._link_free = start
        release = start + self._link.one_way_delay
        self._queue.append((release, item))
        if self._tfd is not None:
            if not self._armed:
                self._armed = True
                self._tfd.arm(release)
        elif self._timer is None:
            self._arm(release, now)

    def _arm(self, release: float, now: float) -> None:
        self._timer = self._loop.call_later(max(0.0, release - now), self._fire)

    def _fire_fd(self) -> None:
        tfd = self._tfd
        if tfd is None:
            return
        tfd.clear()
        self._armed = False
        queue = self._queue
        now = time.monotonic()
        while queue and queue[0][0] <= now:
            _, item = queue.popleft()
            self._deliver(item)
        if queue and self._tfd is not None:  # `_deliver` may have closed the line
            self._armed = True
            self._tfd.arm(queue[0][0])

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
        tfd, self._tfd = self._tfd, None
        if tfd is not None:
            with contextlib.suppress(Exception):  # the loop may be closed already
                self._loop.remove_reader(tfd.fd)
            tfd.close()
        self._queue.clear()
