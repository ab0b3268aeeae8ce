"""The checker: a history in, a verdict out (pure: no I/O, no clock).

Model. Every 512-byte sector is a register. A value is INITIAL (never written) or the id of the
write that produced it; each value has the real-time interval of its write: [start, end] for an
acknowledged write, [start, +inf) for one that failed or whose answer never came (it may have
taken effect, at any time after it began), (-inf, -inf] for INITIAL.

An *observation* of a sector is an acknowledged write (it observes its own value) or a read.
Value u *precedes* value v when u's write ended before v's began (u.end < v.start): then v is
certainly newer. The one rule:

    if observation o1 ended before observation o2 began, o2's value must not precede o1's.

A read that returns a value older than a write acknowledged before it began breaks it (stale:
issue 9's definition, a failure). A read that goes back to an older value only because an
earlier read saw a newer value whose write had not been acknowledged when that read ended is
counted apart as "dirty", not a failure: a block device may show a write in flight (an SE
serves its data file before the write is durable, as a disk serves its volatile cache) and then
lose it (the HE died before Q SEs had it), and issue 9's register allows any write that
overlapped the read. Linearizable reads would need every read to wait for the quorum. A
value from a write that began after the read ended, an unknown write id, or a sector failing its
checksum is "corrupt". Violations by a read made after healing (the final full read through the
HE, and the SEs' data files after a clean stop) are "lost": an acknowledged write is gone.
Separately, SEs whose data files differ in any sector are "diverged".

Per sector the rule is checked in O(n log n): sweep the observations by start, adding those that
ended before it, keeping the largest start of their values' writes.
"""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass, field
from typing import Any

from ophiura.torture.stamp import GARBLED, INITIAL, SECTOR, describe

NEG_INF = -math.inf


@dataclass(frozen=True)
class Write:
    id: int
    lba: int
    count: int
    start: float
    end: float | None  # None: not acknowledged (failed, or its answer never came)


@dataclass(frozen=True)
class Read:
    label: str
    start: float
    end: float
    runs: tuple[tuple[int, int, int], ...]  # (first lba, sector count, value)
    final: bool = False  # made after healing: a violation means an acknowledged write was lost


@dataclass
class Verdict:
    stale: int = 0  # sector-reads older than a write acknowledged before they began
    dirty: int = 0  # sector-reads older only than an unacknowledged value a read saw (allowed)
    lost: int = 0  # sectors whose final value is older than an acknowledged write
    corrupt: int = 0  # garbled sectors, unknown or future write ids
    diverged: int = 0  # sectors on which the SEs' data files differ
    observations: int = 0
    lost_by: dict[str, int] = field(default_factory=dict)  # final reader -> sectors it lacked
    examples: list[str] = field(default_factory=list)
    _per_kind: dict[str, int] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not (self.stale or self.lost or self.corrupt or self.diverged)

    def note(self, text: str) -> None:
        """Keep a few examples of each kind (the text starts with it)."""
        kind = text.split(":", 1)[0]
        if self._per_kind.get(kind, 0) < 5:
            self._per_kind[kind] = self._per_kind.get(kind, 0) + 1
            self.examples.append(text)

    def to_json(self) -> dict[str, Any]:
        return {
            "stale": self.stale,
            "dirty": self.dirty,
            "lost": self.lost,
            "corrupt": self.corrupt,
            "diverged": self.diverged,
            "observations": self.observations,
            "lost_by": self.lost_by,
            "examples": self.examples,
        }


@dataclass(frozen=True)
class _Obs:
    start: float
    end: float
    value: int
    read: Read | None  # None: an acknowledged write observing itself


def check(writes: list[Write], reads: list[Read]) -> Verdict:
    """Stale, lost and corrupt over the whole history."""
    verdict = Verdict()
    span: dict[int, tuple[float, float]] = {INITIAL: (NEG_INF, NEG_INF)}
    covers: dict[int, tuple[int, int]] = {}
    per_sector: dict[int, list[_Obs]] = {}
    for w in writes:
        span[w.id] = (w.start, math.inf if w.end is None else w.end)
        covers[w.id] = (w.lba, w.lba + w.count)
        if w.end is not None:
            for lba in range(w.lba, w.lba + w.count):
                per_sector.setdefault(lba, []).append(_Obs(w.start, w.end, w.id, None))
    for r in reads:
        for first, count, value in r.runs:
            bad = _corrupt_reason(value, first, count, r, span, covers)
            if bad:
                verdict.corrupt += count
                verdict.note(f"corrupt: {r.label} lba {first}+{count}: {bad}")
                continue
            for lba in range(first, first + count):
                per_sector.setdefault(lba, []).append(_Obs(r.start, r.end, value, r))
    lost_sectors: set[tuple[str, int]] = set()
    for lba, obs in per_sector.items():
        verdict.observations += len(obs)
        _check_sector(lba, obs, span, verdict, lost_sectors)
    verdict.lost = len({lba for _, lba in lost_sectors})
    return verdict


def _corrupt_reason(
    value: int,
    first: int,
    count: int,
    read: Read,
    span: dict[int, tuple[float, float]],
    covers: dict[int, tuple[int, int]],
) -> str:
    if value == GARBLED:
        return "checksum or address mismatch (torn, misplaced or foreign data)"
    if value == INITIAL:
        return ""
    if value not in span:
        return f"{describe(value)} was never issued"
    lo, hi = covers[value]
    if first < lo or first + count > hi:
        return f"{describe(value)} did not write these sectors"
    if span[value][0] > read.end:
        return f"{describe(value)} began after the read ended"
    return ""


def _check_sector(
    lba: int,
    obs: list[_Obs],
    span: dict[int, tuple[float, float]],
    verdict: Verdict,
    lost_sectors: set[tuple[str, int]],
) -> None:
    """Two running maxima over the observations ended before each read began: over all of
    them (a read older than that is stale) and over acknowledged writes only (a final read
    older than that lost an acknowledged write; one older only than a value some read saw,
    of a write never acknowledged, is a stale final read, not a loss)."""
    by_end = sorted(obs, key=lambda o: o.end)
    ends = [o.end for o in by_end]
    newest: _Obs | None = None  # the ended observation whose value's write began last
    acked: _Obs | None = None  # the same among acknowledged writes
    done = 0
    for o2 in sorted(obs, key=lambda o: o.start):
        upto = bisect.bisect_left(ends, o2.start)  # observations with end < o2.start
        while done < upto:
            o1 = by_end[done]
            vs = span[o1.value][0]
            if newest is None or vs > span[newest.value][0]:
                newest = o1
            if o1.read is None and (acked is None or vs > span[acked.value][0]):
                acked = o1
            done += 1
        if o2.read is None or newest is None:
            continue
        v2_end = span[o2.value][1]
        if not v2_end < span[newest.value][0]:
            continue
        older_than_ack = acked is not None and v2_end < span[acked.value][0]
        is_lost = o2.read.final and older_than_ack
        witness = acked if older_than_ack else newest
        assert witness is not None
        seen = "acknowledged" if witness.read is None else f"seen by {witness.read.label}"
        what = (
            f"lba {lba} ({lba * SECTOR}): {o2.read.label} returned {describe(o2.value)}, "
            f"older than {describe(witness.value)} ({seen}, before the read began)"
        )
        if is_lost:
            source = o2.read.label.split("@", 1)[0]
            if (source, lba) not in lost_sectors:
                lost_sectors.add((source, lba))
                verdict.lost_by[source] = verdict.lost_by.get(source, 0) + 1
                verdict.note("lost: " + what)
        elif older_than_ack:
            verdict.stale += 1
            verdict.note("stale: " + what)
        else:
            verdict.dirty += 1
            verdict.note("dirty: " + what)


def diverged_sectors(images: dict[str, bytes]) -> tuple[int, list[str]]:
    """Sectors on which the SEs' data files differ (shorter files padded with zeros)."""
    if len(images) < 2:
        return 0, []
    size = max(len(b) for b in images.values())
    padded = {n: b.ljust(size, b"\0") for n, b in images.items()}
    names = sorted(padded)
    ref = padded[names[0]]
    bad = 0
    examples: list[str] = []
    step = 1 << 16
    for off in range(0, size, step):
        chunks = {n: padded[n][off : off + step] for n in names}
        if len(set(chunks.values())) == 1:
            continue
        for s in range(off, min(off + step, size), SECTOR):
            vals = {n: padded[n][s : s + SECTOR] for n in names}
            if len(set(vals.values())) > 1:
                bad += 1
                if len(examples) < 5:
                    differ = [n for n in names if vals[n] != ref[s : s + SECTOR]]
                    who = ",".join(differ)
                    examples.append(f"diverged: lba {s // SECTOR}: {who} != {names[0]}")
    return bad, examples


def write_availability(writes: list[Write], start: float, end: float, bucket: float = 0.5) -> float:
    """Fraction of `bucket`-long slices of [start, end) in which at least one write was
    acknowledged: the time the volume was writable as the clients saw it."""
    n = max(1, math.ceil((end - start) / bucket))
    ok = set()
    for w in writes:
        if w.end is not None and start <= w.end < end:
            ok.add(int((w.end - start) / bucket))
    return round(len(ok) / n, 4)
