"""The fault schedule: seeded (same seed, same faults), saved and replayed unchanged."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ophiura.torture.schedule import FAULT_KINDS, Schedule, default_kinds, make_schedule


def test_same_seed_same_schedule_other_seed_other() -> None:
    a = make_schedule(7, 120, default_kinds())
    assert a == make_schedule(7, 120, default_kinds())
    assert a.faults != make_schedule(8, 120, default_kinds()).faults


def test_faults_overlap_and_cover_many_kinds() -> None:
    s = make_schedule(3, 300, default_kinds(), mean_gap=1.0)
    assert len(s.counts()) >= 8
    ends = [f.at + f.duration for f in s.faults]
    assert any(s.faults[i + 1].at < ends[i] for i in range(len(s.faults) - 1)), "no overlap"
    assert all(f.target == "c" for f in s.faults if f.kind == "se-disk-full")
    assert all(f.params["mode"] in ("lose", "tear") for f in s.faults if f.kind == "se-powerloss")


def test_save_and_replay(tmp_path: Path) -> None:
    s = make_schedule(11, 60, ["se-kill", "concurrent-takeover"])
    path = tmp_path / "s.json"
    s.save(path)
    assert Schedule.load(path) == s
    run = tmp_path / "run.json"  # a run's result embeds its schedule
    run.write_text(json.dumps({"seed": 11, "schedule": s.to_json()}))
    assert Schedule.load(run) == s


def test_bad_input_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown fault kinds"):
        make_schedule(1, 10, ["se-explode"])
    bad = tmp_path / "bad.json"
    bad.write_text('{"seed": 1}')
    with pytest.raises(ValueError, match="not a torture schedule"):
        Schedule.load(bad)
    assert set(default_kinds()) == set(FAULT_KINDS)  # every kind in the table is scheduled
