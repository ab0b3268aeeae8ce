"""Wait for a condition, never for a fixed time: poll it until it holds or a deadline passes.

A fixed sleep is either too short on a loaded machine (a flaky test) or too long everywhere (a
slow one); polling a condition is neither. A condition that raises counts as "not yet" (a
server still starting refuses connections; a status is not there yet) and the last error is
reported with the timeout, with whatever `details()` adds (e.g. the tails of the logs).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

STEP = 0.02


class WaitTimeout(AssertionError):
    """The condition did not hold in time (an AssertionError: in a test it is a failure)."""


def _timeout(
    what: str, timeout: float, last: BaseException | None, details: Callable[[], str] | None
) -> WaitTimeout:
    msg = f"timed out after {timeout} s waiting for {what or 'the condition'}"
    if last is not None:
        msg += f" (last error: {last!r})"
    if details is not None:
        msg += "\n" + details()
    return WaitTimeout(msg)


def wait_for(
    condition: Callable[[], Any],
    timeout: float = 10.0,
    what: str = "",
    *,
    step: float = STEP,
    details: Callable[[], str] | None = None,
    ignore: tuple[type[BaseException], ...] = (Exception,),
) -> float:
    """Poll `condition()` every `step` seconds until it is true; the seconds it took.

    Exceptions of the `ignore` types count as "not yet" (pass `ignore=()` to let them out at
    once). Raises `WaitTimeout` after `timeout` seconds."""
    t0 = time.monotonic()
    last: BaseException | None = None
    while True:
        try:
            if condition():
                return time.monotonic() - t0
        except ignore as exc:
            last = exc
        if time.monotonic() - t0 >= timeout:
            raise _timeout(what, timeout, last, details)
        time.sleep(step)


async def wait_for_async(
    condition: Callable[[], Any],
    timeout: float = 10.0,
    what: str = "",
    *,
    step: float = STEP,
    details: Callable[[], str] | None = None,
    ignore: tuple[type[BaseException], ...] = (Exception,),
) -> float:
    """`wait_for` for a coroutine: `condition` is a plain callable (it reads state the event
    loop updates) and the loop runs between polls."""
    t0 = time.monotonic()
    last: BaseException | None = None
    while True:
        try:
            if condition():
                return time.monotonic() - t0
        except ignore as exc:
            last = exc
        if time.monotonic() - t0 >= timeout:
            raise _timeout(what, timeout, last, details)
        await asyncio.sleep(step)
