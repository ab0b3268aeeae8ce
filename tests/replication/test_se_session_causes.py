"""An SE that misses a liveness check is logged with the cause (issue 12): a real `ophiura se`
process stopped with SIGSTOP keeps its connection open and stops answering, and the HE's
session must say that the ping timed out and after how long, not `ping: ` with nothing."""

from __future__ import annotations

import logging
import os
import signal
from pathlib import Path

import pytest

from ophiura.replication.he.se_session import SeSession, SessionState
from ophiura.testkit.waiting import wait_for_async

from .he_harness import SECRET, spawn_ses


async def test_a_missed_ping_is_logged_with_its_timeout(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (se,) = await spawn_ses(tmp_path, names="a")
    session = SeSession(se.spec(), SECRET, ping_interval=0.1)
    try:
        session.start()
        await wait_for_async(lambda: session.connected, 10, "session connected")
        assert se.proc is not None
        caplog.set_level(logging.WARNING, logger="ophiura")
        os.kill(se.proc.pid, signal.SIGSTOP)
        try:
            await wait_for_async(
                lambda: session.state is not SessionState.CONNECTED, 15, "session lost"
            )
        finally:
            os.kill(se.proc.pid, signal.SIGCONT)
        # ping_interval 0.1 s: the check waits max(2 s, 4 x interval) for an answer
        assert session.last_error == "ping: TimeoutError (no answer within 2 s)"
        lines = [r.getMessage() for r in caplog.records if "connection lost" in r.getMessage()]
        assert lines == ["SE a: connection lost: ping: TimeoutError (no answer within 2 s)"]
    finally:
        await session.close()
        se.terminate()
