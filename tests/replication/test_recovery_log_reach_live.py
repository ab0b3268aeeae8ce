"""Live: the HE chooses replay or full from the peers' reported `log_first_seq` (N=3, Q=2).

An outage longer than the HE queue *and* longer than the peers' 1 MiB replay logs: the HE must
go to full copy at once, instead of asking for a replay the peer refuses with LOG_GONE.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from ophiura.replication.he.replica_set import ReplicaSet

from .he_harness import SeHandle, spawn_ses
from .test_recovery_live import _outage


@pytest.fixture
async def small_log_ses(tmp_path: Path) -> AsyncIterator[list[SeHandle]]:
    handles = await spawn_ses(tmp_path, log_size=1 << 20)
    try:
        yield handles
    finally:
        for h in handles:
            h.terminate()


async def test_full_chosen_directly_when_no_peer_log_reaches_back(
    small_log_ses: list[SeHandle], tmp_path: Path
) -> None:
    # 800 writes of 4 KiB (~3.6 MiB of records) overflow the 1 MiB queue and the 1 MiB logs
    recoveries, _ = await _outage(
        small_log_ses, tmp_path, writes_while_down=800, wipe=False, queue=1 << 20
    )
    assert recoveries == {"full": 1}


async def test_log_gone_during_replay_falls_back_to_full(
    small_log_ses: list[SeHandle], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without the peers' log facts (an old SE, or a log that moved on after the HE asked) the
    HE tries replay; the SE reports `gap` / `log-gone` through STATUS and the HE must switch to
    a full copy then, not wait for the stall timeout and retry the same replay."""

    async def unknown(self: ReplicaSet, r: object) -> None:
        return None

    monkeypatch.setattr(ReplicaSet, "_learn_peer_logs", unknown)
    recoveries, _ = await _outage(
        small_log_ses, tmp_path, writes_while_down=800, wipe=False, queue=1 << 20
    )
    assert recoveries == {"replay": 1, "full": 1}
