"""Test hook: step this process's wall clock, as `date -s` or an NTP step does to one node.

Membership, deadlines and heartbeats read no wall-clock time (see cluster/heartbeat.py): deadlines
use `time.monotonic()`, incarnations are random ids, replay protection is a challenge echo. The
wall clock only stamps events for people to read. A fault-injection harness proves this by
stepping a live node's clock and checking that nothing changes: the daemon's `step-clock` admin
request (only with `test_hooks = true`) calls `step()`, which makes `time.time()` and
`time.time_ns()` in this process return the real value plus an offset, exactly what code that
reads the clock would see after a real step, without touching the machine's clock (which other
nodes on the same host share). In-process tests step one node only by patching those two
functions per thread (tests/cluster/test_heartbeat_clock.py, `SteppedClock`).
"""

from __future__ import annotations

import time

_REAL_TIME = time.time
_REAL_TIME_NS = time.time_ns
_offset_ns = 0


def _time() -> float:
    return _REAL_TIME() + _offset_ns / 1e9


def _time_ns() -> int:
    return _REAL_TIME_NS() + _offset_ns


def step(seconds: float) -> float:
    """Move this process's wall clock by `seconds` (either way); returns the total offset."""
    global _offset_ns
    _offset_ns += round(seconds * 1e9)
    time.time = _time
    time.time_ns = _time_ns
    return _offset_ns / 1e9


def offset() -> float:
    """How far this process's wall clock has been stepped, in seconds."""
    return _offset_ns / 1e9
