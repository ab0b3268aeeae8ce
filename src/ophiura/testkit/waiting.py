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
from typing import Any, TypeVar

T = TypeVar("T")

STEP = 0.02


class WaitTimeout(AssertionError):
    """The condition did not hold in time (an AssertionError: in a test it is a failure)."""


Ignored = tuple[type[BaseException], ...]


def _timeout(
    what: str,
    timeout: float,
    last: BaseException | None,
    details: Callable[[], str] | None,
    error: Callable[[str], Exception],
) -> Exception:
    msg = f"timed out after {timeout:g} s waiting for {what or 'the condition'}"
    if last is not None:
        msg += f" (last error: {last!r})"
    if details is not None:
        msg += "\n" + details()
    return error(msg)


def poll(
    condition: Callable[[], T],
    timeout: float = 10.0,
    what: str = "",
    *,
    step: float = STEP,
    details: Callable[[], str] | None = None,
    ignore: Ignored = (Exception,),
    error: Callable[[str], Exception] = WaitTimeout,
) -> T:
    """Call `condition()` every `step` seconds until it returns something true; return that.

    Exceptions of the `ignore` types count as "not yet" (pass `ignore=()` to let them out at
    once). After `timeout` seconds raises `error(message)` (`WaitTimeout` by default; a caller
    with its own error type passes it), the message naming `what`, the last error and
    `details()`."""
    t0 = time.monotonic()
    last: BaseException | None = None
    while True:
        try:
            value = condition()
            if value:
                return value
        except ignore as exc:
            last = exc
        if time.monotonic() - t0 >= timeout:
            raise _timeout(what, timeout, last, details, error)
        time.sleep(step)


def wait_for(
    condition: Callable[[], Any],
    timeout: float = 10.0,
    what: str = "",
    *,
    step: float = STEP,
    details: Callable[[], str] | None = None,
    ignore: Ignored = (Exception,),
    error: Callable[[str], Exception] = WaitTimeout,
) -> float:
    """`poll` that returns the seconds the condition took to hold."""
    t0 = time.monotonic()
    poll(condition, timeout, what, step=step, details=details, ignore=ignore, error=error)
    return time.monotonic() - t0


async def wait_for_async(
    condition: Callable[[], Any],
    timeout: float = 10.0,
    what: str = "",
    *,
    step: float = STEP,
    details: Callable[[], str] | None = None,
    ignore: Ignored = (Exception,),
    error: Callable[[str], Exception] = WaitTimeout,
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
            raise _timeout(what, timeout, last, details, error)
        await asyncio.sleep(step)
