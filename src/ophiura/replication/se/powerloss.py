"""Apply a power cut to a killed storage element's files, from its undo journal (test only).

An SE run with `OPHIURA_POWERLOSS_JOURNAL=DIR` journals, before every write to its data file,
metadata slots and replay log, the old contents of the sectors it overwrites; a completed
fdatasync/fsync of a file discards that file's entries (`disk_io`). After the SE was killed
(SIGKILL: its files hold every write, synced or not), `apply_power_loss` makes the files look
like the disk after losing power: every journalled sector holds either its contents before the
first unsynced write to it, or after one of those writes. A disk without FUA or flush ordering
may persist any subset of its unsynced sector writes, in any order, so each choice is
independent of the others:

- `lose`: each unsynced write as a whole survives or is lost (an independent coin per write);
  a sector shows the newest surviving write to it, or its old contents if none survived.
- `tear`: each sector of each write independently: the writes themselves may be torn.

The choice is made by the caller's `random.Random`, so a seed replays the same cut. The journal
is consumed (emptied) so a restarted SE journals afresh into the same directory.

    python -m ophiura.replication.se.powerloss DIR --seed N --mode lose|tear
"""

from __future__ import annotations

import argparse
import os
import random
import sys
from dataclasses import dataclass, field
from pathlib import Path

from ophiura.replication.se.disk_io import ENTRY, PATH_SUFFIX, SECTOR, UNDO_SUFFIX

MODES = ("lose", "tear")


class PowerLossError(Exception):
    """The journal cannot be read or applied."""


@dataclass
class FileReport:
    path: str
    writes: int = 0  # unsynced writes found in the journal
    sectors: int = 0  # distinct sectors they touched
    reverted: int = 0  # sectors that no longer hold their newest contents


@dataclass
class Report:
    files: list[FileReport] = field(default_factory=list)

    @property
    def writes(self) -> int:
        return sum(f.writes for f in self.files)

    @property
    def reverted(self) -> int:
        return sum(f.reverted for f in self.files)

    def line(self) -> str:
        parts = [f"{f.path}: {f.reverted}/{f.sectors} sectors reverted" for f in self.files]
        head = f"{self.writes} unsynced writes, {self.reverted} sectors reverted"
        return "; ".join([head, *parts])


def _entries(raw: bytes, name: str) -> list[tuple[int, bytes]]:
    out: list[tuple[int, bytes]] = []
    pos = 0
    while pos < len(raw):
        if pos + ENTRY.size > len(raw):
            raise PowerLossError(f"{name}: truncated entry header at byte {pos}")
        offset, length = ENTRY.unpack_from(raw, pos)
        pos += ENTRY.size
        if length % SECTOR or offset % SECTOR or pos + length > len(raw):
            raise PowerLossError(f"{name}: bad entry at byte {pos - ENTRY.size}")
        out.append((offset, raw[pos : pos + length]))
        pos += length
    return out


def _apply_file(
    path: Path, entries: list[tuple[int, bytes]], rng: random.Random, mode: str
) -> FileReport:
    report = FileReport(str(path), writes=len(entries))
    # versions[s]: (write index, contents of sector s just before that write), oldest first
    versions: dict[int, list[tuple[int, bytes]]] = {}
    for i, (offset, old) in enumerate(entries):
        for k in range(len(old) // SECTOR):
            versions.setdefault(offset // SECTOR + k, []).append(
                (i, old[k * SECTOR : (k + 1) * SECTOR])
            )
    report.sectors = len(versions)
    survived = [rng.random() < 0.5 for _ in entries] if mode == "lose" else []
    fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
    try:
        size = os.fstat(fd).st_size
        for sector in sorted(versions):
            if sector * SECTOR >= size:
                continue  # the file was shrunk since: nothing there to revert
            vs = versions[sector]
            current = os.pread(fd, SECTOR, sector * SECTOR)
            # the contents after write j: what the next write to this sector found, or now
            after = [vs[j + 1][1] if j + 1 < len(vs) else current for j in range(len(vs))]
            if mode == "tear":
                pick = rng.randrange(len(vs) + 1)  # 0: before every write; j+1: after write j
            else:
                kept = [j for j in range(len(vs)) if survived[vs[j][0]]]
                pick = kept[-1] + 1 if kept else 0
            want = vs[0][1] if pick == 0 else after[pick - 1]
            want = want[: len(current)]
            if want != current:
                os.pwrite(fd, want, sector * SECTOR)
                report.reverted += 1
        os.fsync(fd)
    finally:
        os.close(fd)
    return report


def apply_power_loss(journal_dir: Path | str, rng: random.Random, mode: str = "tear") -> Report:
    """Revert a random subset of the unsynced writes journalled in `journal_dir` (see above).
    Call it only once the SE process is dead."""
    if mode not in MODES:
        raise PowerLossError(f"mode {mode!r} is not one of {', '.join(MODES)}")
    root = Path(journal_dir)
    if not root.is_dir():
        raise PowerLossError(f"{root} is not a power-loss journal directory")
    report = Report()
    for undo in sorted(root.glob(f"*{UNDO_SUFFIX}")):
        entries = _entries(undo.read_bytes(), str(undo))
        target = undo.with_suffix(PATH_SUFFIX)
        if entries:
            try:
                path = Path(target.read_text())
            except OSError as exc:
                raise PowerLossError(f"{target}: {exc.strerror or exc}") from exc
            if path.exists():
                report.files.append(_apply_file(path, entries, rng, mode))
        os.truncate(undo, 0)
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m ophiura.replication.se.powerloss",
        description="Apply a power cut to a killed SE's files from its undo journal (test only).",
    )
    parser.add_argument("journal_dir", type=Path)
    parser.add_argument("--seed", type=int, required=True)
    parser.add_argument("--mode", choices=MODES, default="tear")
    args = parser.parse_args(argv)
    try:
        report = apply_power_loss(args.journal_dir, random.Random(args.seed), args.mode)
    except (PowerLossError, OSError) as exc:
        print(f"powerloss: {exc}", file=sys.stderr)
        return 1
    print(f"powerloss seed {args.seed} mode {args.mode}: {report.line()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
