"""The power-loss model: an undo journal of unsynced writes, applied after a kill."""

from __future__ import annotations

import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

from ophiura.replication.se import disk_io
from ophiura.replication.se.powerloss import PowerLossError, apply_power_loss

S = disk_io.SECTOR


def _io(journal: Path) -> dict:  # type: ignore[type-arg]
    return disk_io._journalled(disk_io.UndoJournal(journal))


def _sectors(path: Path) -> list[bytes]:
    raw = path.read_bytes()
    return [raw[i : i + S] for i in range(0, len(raw), S)]


def _fill(ch: int, n: int = 1) -> bytes:
    return bytes([ch]) * (S * n)


def test_the_os_functions_are_used_when_the_mode_is_off() -> None:
    assert os.environ.get(disk_io.ENV) is None
    assert disk_io.pwrite is os.pwrite and disk_io.fdatasync is os.fdatasync
    assert disk_io.pwritev is os.pwritev and disk_io.fsync is os.fsync


def test_synced_writes_stay_and_unsynced_ones_keep_or_revert_per_sector(tmp_path: Path) -> None:
    io = _io(tmp_path / "j")
    path = tmp_path / "f"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    io["pwrite"](fd, _fill(1, 8), 0)
    io["fdatasync"](fd)  # sectors 0..7 = 1, durable
    io["pwritev"](fd, [_fill(2, 2), _fill(2, 2)], 0)  # sectors 0..3 = 2, unsynced
    io["pwrite"](fd, _fill(3, 2), 2 * S)  # sectors 2..3 = 3, unsynced
    io["pwrite"](fd, b"x" * 10, 8 * S + 5)  # past EOF, unaligned: sector 8
    os.close(fd)
    outcomes: set[tuple[bytes, ...]] = set()
    for seed in range(60):
        copy = tmp_path / f"c{seed}"
        copy.write_bytes(path.read_bytes())
        jdir = tmp_path / f"j{seed}"
        jdir.mkdir()
        for f in (tmp_path / "j").iterdir():
            text = f.read_bytes()
            if f.suffix == ".path":
                text = str(copy).encode()
            (jdir / f.name).write_bytes(text)
        report = apply_power_loss(jdir, random.Random(seed), "tear")
        assert report.writes == 3
        got = _sectors(copy)
        for i in (0, 1):
            assert got[i] in (_fill(1), _fill(2)), (seed, i)
        for i in (2, 3):
            assert got[i] in (_fill(1), _fill(2), _fill(3)), (seed, i)
        for i in range(4, 8):
            assert got[i] == _fill(1)  # synced: never touched
        assert got[8] in (bytes(15), bytes(5) + b"x" * 10)  # the file ends inside it
        outcomes.add(tuple(got))
        # the journal is consumed: applying it again changes nothing
        assert apply_power_loss(jdir, random.Random(seed + 1), "tear").writes == 0
    # every sector was seen both ways: a subset, not all-or-nothing
    for i in (0, 1, 2, 3, 8):
        assert len({o[i] for o in outcomes}) >= 2, i


def test_lose_mode_loses_whole_writes(tmp_path: Path) -> None:
    io = _io(tmp_path / "j")
    path = tmp_path / "f"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    io["pwrite"](fd, bytes(16 * S), 0)
    io["fsync"](fd)
    for w in range(4):  # four unsynced 4-sector writes
        io["pwrite"](fd, _fill(w + 1, 4), w * 4 * S)
    os.close(fd)
    apply_power_loss(tmp_path / "j", random.Random(5), "lose")
    got = _sectors(path)
    for w in range(4):
        run = set(got[w * 4 : w * 4 + 4])
        assert run in ({bytes(S)}, {_fill(w + 1)}), w  # all of a write, or none


def test_cli_applies_and_reports_and_rejects_bad_input(tmp_path: Path) -> None:
    io = _io(tmp_path / "j")
    fd = os.open(tmp_path / "f", os.O_RDWR | os.O_CREAT, 0o600)
    io["pwrite"](fd, _fill(7, 4), 0)
    os.close(fd)
    cmd = [sys.executable, "-m", "ophiura.replication.se.powerloss"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    out = subprocess.run(
        [*cmd, str(tmp_path / "j"), "--seed", "3", "--mode", "lose"],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    )
    assert "powerloss seed 3 mode lose: 1 unsynced writes" in out.stdout
    bad = subprocess.run(
        [*cmd, str(tmp_path / "nothere"), "--seed", "3"], capture_output=True, text=True, env=env
    )
    assert bad.returncode == 1
    assert bad.stderr.strip().endswith("is not a power-loss journal directory")
    assert "Traceback" not in bad.stderr
    with pytest.raises(PowerLossError, match="mode 'melt'"):
        apply_power_loss(tmp_path / "j", random.Random(0), "melt")
