"""The replay log's on-disk format: the owner ballot in every record, old formats refused."""

from __future__ import annotations

from pathlib import Path

import pytest

from ophiura.replication.se.replay_log import ALIGN, LogRecord, ReplayLog, ReplayLogError, _span
from ophiura.replication.wire.messages import KIND_TRIM, KIND_WRITE

from .test_se_support import MiB, block


def test_records_carry_the_owner_ballot_across_a_restart(tmp_path: Path) -> None:
    rl = ReplayLog(tmp_path / "l", MiB)
    rl.open()
    rl.append(
        [
            LogRecord(1, 7, 0, 4096, KIND_WRITE, block(1), he_id=(1 << 64) - 1),
            LogRecord(2, 7, 4096, 8192, KIND_TRIM, b"", he_id=42),
            LogRecord(3, 8, 0, 4096, KIND_WRITE, block(3)),  # he_id defaults to 0
        ]
    )
    rl.sync()
    rl.close()
    again = ReplayLog(tmp_path / "l", MiB)
    headers = again.open(0)
    assert [(h.seq, h.epoch, h.he_id) for h in headers] == [
        (1, 7, (1 << 64) - 1),
        (2, 7, 42),
        (3, 8, 0),
    ]
    got = again.read_from(1, 1 << 20)
    assert got is not None
    assert [(r.epoch, r.he_id) for r in got] == [(7, (1 << 64) - 1), (7, 42), (8, 0)]
    assert got[0].data == block(1) and got[1].data == b""
    again.close()
    assert _span(4096) % ALIGN == 0 and _span(0) == ALIGN


def test_an_old_format_log_is_refused_with_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "l"
    rl = ReplayLog(path, MiB)
    rl.open()
    rl.append([LogRecord(1, 1, 0, 4096, KIND_WRITE, block(1))])
    rl.sync()
    rl.close()
    raw = bytearray(path.read_bytes())
    raw[:8] = b"OPHLOG01"  # what the previous version wrote
    path.write_bytes(bytes(raw))
    with pytest.raises(ReplayLogError, match=r"older on-disk format \(OPHLOG01"):
        ReplayLog(path, MiB).open(0)
    assert path.read_bytes()[:8] == b"OPHLOG01"  # refused, not reset
