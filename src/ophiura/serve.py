"""How every ophiura daemon runs: on uvloop when installed, until SIGTERM or SIGINT.

Kept apart from the daemons so that a storage element or host element importing it pulls in
nothing else (the SE's start-up time is part of its recovery time)."""

from __future__ import annotations

import asyncio
import signal


def stop_on_signals() -> asyncio.Event:
    """An event SIGTERM or SIGINT sets: what every ophiura daemon serves until before it stops
    cleanly (call it before starting, so a signal during start-up is not lost)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    return stop


def run_event_loop(main) -> None:  # type: ignore[no-untyped-def]
    """Run `main()` on uvloop when installed (measurably faster here), else asyncio."""
    try:
        import uvloop
    except ImportError:
        asyncio.run(main())
        return
    uvloop.run(main())
