"""The harness-side planted bugs, applied to a hand-made history: the checker must catch each."""

from __future__ import annotations

from pathlib import Path

from ophiura.torture import stamp
from ophiura.torture.checker import Read, Write, check, diverged_sectors
from ophiura.torture.clients import History
from ophiura.torture.runner import PLANTS, _plant_after, save_history

W1 = stamp.write_id(1, 1)


def _history() -> tuple[History, dict[str, bytes]]:
    hist = History()
    hist.writes.append(Write(W1, 2, 2, 0.0, 1.0))
    hist.reads.append(Read("r1", 2.0, 3.0, ((2, 2, W1),)))
    image = bytes(2 * 512) + stamp.payload(1, 1, 2, 2) + bytes(4 * 512)
    return hist, {n: image for n in "abc"}


def _disk_reads(hist: History, images: dict[str, bytes]) -> None:
    for name, image in images.items():
        hist.reads.append(Read(f"disk-{name}", 9, 9, tuple(stamp.decode_runs(image, 0)), True))


def test_unplanted_history_is_clean() -> None:
    hist, images = _history()
    assert _plant_after("", hist, images) == ""
    _disk_reads(hist, images)
    assert check(hist.writes, hist.reads).ok and diverged_sectors(images)[0] == 0


def test_plant_lost_write() -> None:
    hist, images = _history()
    assert _plant_after("lost-write", hist, images).startswith("lost-write: lba 2")
    _disk_reads(hist, images)
    v = check(hist.writes, hist.reads)
    assert v.lost == 1 and v.lost_by == {"disk-a": 1, "disk-b": 1, "disk-c": 1}


def test_plant_diverge() -> None:
    hist, images = _history()
    _plant_after("diverge", hist, images)
    _disk_reads(hist, images)
    assert diverged_sectors(images)[0] == 1
    assert check(hist.writes, hist.reads).corrupt == 1  # SE b's sector fails its checksum


def test_plant_stale_read() -> None:
    hist, images = _history()
    assert "r1 lba 2+2" in _plant_after("stale-read", hist, images)
    assert check(hist.writes, hist.reads).stale == 2


def test_he_plants_are_only_an_environment_hook() -> None:
    hist, images = _history()
    assert {k for k, (where, _) in PLANTS.items() if where == "he"} == {
        "he-ack-without-send",
        "he-skip-cache-update",
    }
    assert _plant_after("he-ack-without-send", hist, images) == ""


def test_history_is_saved_readably(tmp_path: Path) -> None:
    import gzip
    import json

    hist, _ = _history()
    save_history(tmp_path / "h.jsonl.gz", hist)
    with gzip.open(tmp_path / "h.jsonl.gz", "rt") as f:
        lines = [json.loads(x) for x in f]
    assert lines[0] == {"write": "w1:1", "lba": 2, "count": 2, "start": 0.0, "end": 1.0}
    assert lines[1]["read"] == "r1" and lines[1]["runs"] == [[2, 2, "w1:1"]]
