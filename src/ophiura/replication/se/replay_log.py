"""A bounded circular log of recent writes: the SE's durability point and a peer's replay source.

An SE acknowledges a write once its record is here and fdatasync'd; the data file is written
lazily and synced once per lap of the log (before a record the data file does not durably hold
is overwritten). Records are 512-byte aligned; each carries a CRC32C over header and data and
this log's random salt, and says which owner ballot `(epoch, he_id)` wrote it.

Recovery after a crash or a power cut is *forward from the last synced point*
(`open(synced)`): every write <= `synced` is durably in the data file; the log must supply the
writes after it. The scan finds every valid record, then builds the chain: the record `synced + 1`
(or `synced` itself), then `synced + 2`, ... each in the slot right after its predecessor, until
the first seq that is missing (a hole). The chain ends at the hole; every record above it is
discarded, durably (its first sector is zeroed and fdatasync'd before anything new is appended),
so it can neither be re-applied nor served to a peer, now or after a later restart. Below
`synced` the chain is extended downwards the same way, as replay material for peers only.

Why this is right (and the old "newest contiguous chain, downwards" was not):

- *A hole at seq k means nothing >= k was acknowledged.* Records are appended in seq order and a
  batch is acknowledged only after its fdatasync; the next batch is written only after that. So
  if k is missing, k's batch was never synced and no later batch was even written: everything
  above k is unacknowledged and may be dropped. Everything below k in the chain was synced.
  A disk without flush ordering may persist 106..110 and lose 105 of an unsynced batch: chaining
  *down* from the newest record (110) stopped at 106 and lost 1..104, acknowledged; chaining
  *up* from the synced point keeps 1..104 and drops 106..110.
- *Nothing after the synced point was overwritten.* A lap overwrites only records the data file
  durably holds: before an append would evict a record above `data_synced_seq`, the data file
  is fdatasync'd and a metadata slot saying so is made durable (`disk`). A batch is at most
  a quarter of the log (`store`), so a batch never overwrites itself, and the unsynced part
  of the log is at most one batch.
- *Stale records cannot join the chain.* A reset (start of a recovery) draws a new salt, so
  records from before it never validate again. Within one salt, seqs are appended strictly
  increasing and a discarded tail is destroyed before its seqs are reused, so each seq is held
  by at most one valid record: a record left over from an older lap has a seq below every record
  after it, so it can never be the `s + 1` that continues `s`. The chain also requires each
  record in the slot right after its predecessor (or at the start of the file when it would not
  have fitted before the end): a lap wrap is followed exactly, and a record of the right seq at
  the wrong place (which the above rules out) would end the chain rather than extend it.
- *A torn record* (some of its sectors persisted, some not) fails its CRC: it is a hole.

All methods block: the storage element runs them on the volume's one commit thread, which also
orders them with the data-file writes. File writes go through `disk_io` (the power-loss test
mode journals them).
"""

from __future__ import annotations

import errno
import itertools
import logging
import os
import secrets
import struct
from collections import deque
from dataclasses import dataclass
from pathlib import Path

import google_crc32c

from ophiura.replication.se import disk_io
from ophiura.replication.wire.messages import KIND_TRIM, KIND_WRITE, KIND_ZERO

log = logging.getLogger(__name__)

ALIGN = 512
FILE_HEADER = 4096
_FILE_MAGIC = b"OPHLOG02"  # 02: records carry the owner ballot (epoch, he_id)
_OLD_MAGICS = (b"OPHLOG01",)
_FHEAD = struct.Struct("<8sQQ")  # magic, salt, size
_REC_MAGIC = 0x4C52504F  # "OPRL"
_REC_MAGIC_BYTES = struct.pack("<I", _REC_MAGIC)
_SCAN_CHUNK = 8 << 20
# magic, crc, salt, seq, epoch, he_id, offset, length, kind: the ballot (epoch, he_id) says
# which owner wrote the record (deduplication of a resent seq compares it, never the seq alone)
_RHEAD = struct.Struct("<IIQQQQQIB3x")
MIN_LOG_SIZE = 1 << 20


class ReplayLogError(Exception):
    """The log file cannot be used (I/O error, too small, or a record larger than the log)."""


@dataclass(slots=True)
class LogRecord:
    seq: int
    epoch: int
    offset: int
    length: int
    kind: int
    data: bytes  # empty for trims
    he_id: int = 0  # with `epoch`, the ballot of the owner that wrote it


@dataclass(slots=True)
class _Entry:
    seq: int
    pos: int
    span: int  # aligned bytes occupied in the file
    data_len: int


def _span(data_len: int) -> int:
    n = _RHEAD.size + data_len
    return -(-n // ALIGN) * ALIGN


class ReplayLog:
    """One volume's log file. `entries` is the seq-ordered index of what the log still holds."""

    def __init__(self, path: Path, size: int) -> None:
        if size < MIN_LOG_SIZE:
            raise ReplayLogError(f"replay log size {size} is below the minimum {MIN_LOG_SIZE}")
        self.path = path
        self.size = size - size % ALIGN
        self.capacity = self.size - FILE_HEADER
        self.entries: deque[_Entry] = deque()
        self._head = FILE_HEADER  # where the next record goes
        self._fd = -1
        self._salt = 0
        self.discarded = 0  # records the last `open` destroyed beyond a hole (for tests, logs)

    # -- opening -------------------------------------------------------------------------------

    def open(self, synced: int = 0) -> list[LogRecord]:
        """Open or create the log; returns the chain recovered forward from `synced` (every
        write <= `synced` is durably elsewhere), oldest first, as headers: `data` is b"" (read
        it with `read_from`; a full log is not held in memory). Records beyond the chain's
        first hole are destroyed before this returns (see the module docstring)."""
        exists = self.path.exists()
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        if exists:
            head = os.pread(self._fd, _FHEAD.size, 0)
            if len(head) == _FHEAD.size:
                magic, salt, size = _FHEAD.unpack(head)
                if magic == _FILE_MAGIC:
                    self._salt = salt
                    if size != self.size:
                        log.warning(
                            "%s was made with size %d, keeping it (asked %d)",
                            self.path,
                            size,
                            self.size,
                        )
                        self.size = size
                        self.capacity = size - FILE_HEADER
                    return self._recover(synced)
                if magic in _OLD_MAGICS:
                    os.close(self._fd)
                    self._fd = -1
                    raise ReplayLogError(
                        f"{self.path} is a replay log of an older on-disk format "
                        f"({magic.decode()}, this SE writes {_FILE_MAGIC.decode()}): "
                        "stop the SE cleanly with the old version first, or remove the log"
                    )
            log.error("%s has no valid log header; starting an empty log", self.path)
        self.reset()
        return []

    def reset(self) -> None:
        """Forget every record (new salt: old records can never validate again)."""
        self._salt = secrets.randbits(64)
        disk_io.ftruncate(self._fd, 0)
        disk_io.ftruncate(self._fd, self.size)
        disk_io.pwrite(self._fd, _FHEAD.pack(_FILE_MAGIC, self._salt, self.size), 0)
        disk_io.fsync(self._fd)
        self.entries.clear()
        self._head = FILE_HEADER

    def _data_extents(self) -> list[tuple[int, int]]:
        """[start, end) ranges of the file that may hold records (holes of a sparse log hold
        none); the whole record area if the file system cannot tell."""
        out: list[tuple[int, int]] = []
        pos = FILE_HEADER
        try:
            while pos < self.size:
                try:
                    start = os.lseek(self._fd, pos, os.SEEK_DATA)
                except OSError as exc:
                    if exc.errno == errno.ENXIO:  # nothing but hole from here on
                        break
                    raise
                if start >= self.size:
                    break
                end = min(os.lseek(self._fd, start, os.SEEK_HOLE), self.size)
                start = max(FILE_HEADER, start - start % ALIGN)
                out.append((start, end))
                pos = end
        except (OSError, AttributeError):
            return [(FILE_HEADER, self.size)]
        return out

    def _scan(self) -> dict[int, tuple[_Entry, LogRecord]]:
        """Every valid record by seq: data extents only, read in large chunks, record magic
        found by `bytes.find` (C speed through zeroes and stale data); data is checked, not
        kept."""
        st = os.fstat(self._fd)
        if st.st_size < self.size:
            disk_io.ftruncate(self._fd, self.size)
        found: dict[int, tuple[_Entry, LogRecord]] = {}
        for ext_start, ext_end in self._data_extents():
            pos = ext_start
            while pos + _RHEAD.size <= ext_end:
                chunk = os.pread(self._fd, min(_SCAN_CHUNK, ext_end - pos), pos)
                if len(chunk) < _RHEAD.size:
                    break
                i = 0
                nxt = pos + len(chunk)
                while True:
                    i = chunk.find(_REC_MAGIC_BYTES, i)
                    if i < 0:
                        break
                    if i + _RHEAD.size > len(chunk):  # a header cut by the chunk end
                        nxt = pos + i - (pos + i) % ALIGN
                        break
                    at = pos + i
                    if at % ALIGN:
                        i += ALIGN - at % ALIGN
                        continue
                    rec = self._check(chunk, i, at)
                    if rec is None:
                        i += ALIGN
                        continue
                    entry, hdr = rec
                    prev = found.get(hdr.seq)
                    if prev is not None:
                        # Cannot happen (one record per seq per salt, see above); if it does,
                        # the chain below only takes the one in the right place.
                        log.error(
                            "%s: seq %d is held twice (at %d and %d)",
                            self.path,
                            hdr.seq,
                            prev[0].pos,
                            at,
                        )
                    found[hdr.seq] = rec
                    i += entry.span
                    if i >= len(chunk):
                        nxt = pos + i  # the record ran past the chunk: go on after it
                        break
                pos = nxt if nxt > pos else pos + ALIGN
        return found

    def _follows(self, prev: _Entry, nxt: _Entry) -> bool:
        """`nxt` sits where `append` puts the record after `prev`: right after it, or at the
        start of the file when it would not have fitted before the end."""
        end = prev.pos + prev.span
        return nxt.pos == end or (nxt.pos == FILE_HEADER and end + nxt.span > self.size)

    def _recover(self, synced: int) -> list[LogRecord]:
        """The chain forward from `synced`, the tail beyond its first hole destroyed."""
        found = self._scan()
        start = found.get(synced + 1) or found.get(synced)
        chain: list[tuple[_Entry, LogRecord]] = []
        if start is not None:
            below: list[tuple[_Entry, LogRecord]] = []
            cur = start
            while (p := found.get(cur[0].seq - 1)) is not None and self._follows(p[0], cur[0]):
                below.append(p)
                cur = p
            below.reverse()
            chain = [*below, start]
            cur = start
            while (n := found.get(cur[0].seq + 1)) is not None and self._follows(cur[0], n[0]):
                chain.append(n)
                cur = n
        end = max(synced, chain[-1][0].seq if chain else 0)
        beyond = sorted(e.seq for e, _ in found.values() if e.seq > end)
        if beyond:
            log.warning(
                "%s: seq %d is missing (a write cut by a crash before its sync): discarding "
                "%d records beyond it (seq %d..%d), none of them acknowledged",
                self.path,
                end + 1,
                len(beyond),
                beyond[0],
                beyond[-1],
            )
            self._destroy([found[s][0] for s in beyond])
        self.discarded = len(beyond)
        self.entries = deque(e for e, _ in chain)
        if chain:
            last = chain[-1][0]
            self._head = last.pos + last.span
        else:
            self._head = FILE_HEADER
        if chain:
            log.info(
                "%s: %d records (seq %d..%d) from synced seq %d, %d stale ignored",
                self.path,
                len(chain),
                chain[0][0].seq,
                chain[-1][0].seq,
                synced,
                len(found) - len(chain) - len(beyond),
            )
        return [r for _, r in chain]

    def _destroy(self, entries: list[_Entry]) -> None:
        """Make records unreadable for good: zero the sector holding each one's header (its
        CRC can no longer match), durably, before their seqs are written again."""
        zero = bytes(ALIGN)
        for e in entries:
            disk_io.pwrite(self._fd, zero, e.pos)
        disk_io.fdatasync(self._fd)

    def _check(self, chunk: bytes, i: int, at: int) -> tuple[_Entry, LogRecord] | None:
        """The record whose header is at chunk[i] (file offset `at`), checked by CRC, without
        its data (LogRecord.data is b""); None if there is none. Reads past the chunk if the
        record runs beyond it."""
        magic, crc, salt, seq, epoch, he_id, offset, length, kind = _RHEAD.unpack_from(chunk, i)
        if (
            magic != _REC_MAGIC
            or salt != self._salt
            or kind not in (KIND_WRITE, KIND_TRIM, KIND_ZERO)
        ):
            return None
        data_len = length if kind == KIND_WRITE else 0
        n = _RHEAD.size + data_len
        if at + n > self.size:
            return None
        if i + n <= len(chunk):
            covered = chunk[i + 8 : i + n]
        else:
            raw = os.pread(self._fd, n, at)
            if len(raw) != n:
                return None
            covered = raw[8:]
        if google_crc32c.value(covered) != crc:
            return None
        return _Entry(seq, at, _span(data_len), data_len), LogRecord(
            seq, epoch, offset, length, kind, b"", he_id
        )

    def _parse(self, view: memoryview, pos: int) -> LogRecord | None:
        magic, crc, salt, seq, epoch, he_id, offset, length, kind = _RHEAD.unpack_from(view, pos)
        if (
            magic != _REC_MAGIC
            or salt != self._salt
            or kind not in (KIND_WRITE, KIND_TRIM, KIND_ZERO)
        ):
            return None
        data_len = length if kind == KIND_WRITE else 0
        end = pos + _RHEAD.size + data_len
        if end > self.size:
            return None
        covered = bytes(view[pos + 8 : end])  # crc covers the header after itself, and the data
        if google_crc32c.value(covered) != crc:
            return None
        return LogRecord(seq, epoch, offset, length, kind, covered[_RHEAD.size - 8 :], he_id)

    # -- appending -----------------------------------------------------------------------------

    def oldest_seq(self) -> int:
        """0 when empty. Safe to call from the event loop while the volume thread appends:
        indexing a deque is atomic, but "non-empty, then index" is not."""
        try:
            return self.entries[0].seq
        except IndexError:
            return 0

    def newest_seq(self) -> int:
        try:
            return self.entries[-1].seq
        except IndexError:
            return 0

    def would_evict_above(self, records: list[LogRecord]) -> int:
        """The highest seq that appending `records` would overwrite (0 if none)."""
        head = self._head
        ent = iter(self.entries)
        victim = 0
        cur = next(ent, None)
        for rec in records:
            span = _span(len(rec.data))
            start = head if head + span <= self.size else FILE_HEADER
            if start != head:
                # wrapping: everything between head and the end is older than the file start
                while cur is not None and cur.pos >= head:
                    victim = cur.seq
                    cur = next(ent, None)
            while cur is not None and start <= cur.pos < start + span:
                victim = cur.seq
                cur = next(ent, None)
            head = start + span
        return victim

    def append(self, records: list[LogRecord]) -> None:
        """Write records (not yet synced; call `sync`). Evicts what they overwrite."""
        for rec in records:
            span = _span(len(rec.data))
            if span > self.capacity // 2:
                raise ReplayLogError(
                    f"a record of {len(rec.data)} bytes does not fit the "
                    f"{self.size}-byte replay log"
                )
            if self._head + span > self.size:
                while self.entries and self.entries[0].pos >= self._head:
                    self.entries.popleft()
                self._head = FILE_HEADER
            start = self._head
            while self.entries and start <= self.entries[0].pos < start + span:
                self.entries.popleft()
            head = _RHEAD.pack(
                _REC_MAGIC,
                0,
                self._salt,
                rec.seq,
                rec.epoch,
                rec.he_id,
                rec.offset,
                rec.length,
                rec.kind,
            )
            c = google_crc32c.Checksum(head[8:])
            if rec.data:
                c.update(rec.data)
            crc = int.from_bytes(c.digest(), "big")
            head = head[:4] + struct.pack("<I", crc) + head[8:]
            buffers = [head, rec.data] if rec.data else [head]
            want = _RHEAD.size + len(rec.data)
            done = disk_io.pwritev(self._fd, buffers, start)
            if done != want:  # short write: finish it the slow way
                blob = b"".join(buffers)
                while done < want:
                    done += disk_io.pwrite(self._fd, blob[done:], start + done)
            self.entries.append(_Entry(rec.seq, start, span, len(rec.data)))
            self._head = start + span

    def truncate_after(self, seq: int) -> None:
        """Drop every record above `seq`, durably, so their seqs can be written again (an owner
        dropping what its ballot did not re-issue). Their header sectors are zeroed and synced,
        as for a tail beyond a hole: a record left valid would chain after a new record of its
        seq - 1 written in the same place and come back on the next start. The next record goes
        right after `seq`'s, as `append` would have put it. The caller makes sure the data file
        does not durably hold what is dropped (`data_synced_seq <= seq`): the log cannot undo it.
        """
        gone = [e for e in self.entries if e.seq > seq]
        if not gone:
            return
        self._destroy(gone)
        while self.entries and self.entries[-1].seq > seq:
            self.entries.pop()
        if self.entries:
            last = self.entries[-1]
            self._head = last.pos + last.span
        else:
            self._head = gone[0].pos

    def sync(self) -> None:
        disk_io.fdatasync(self._fd)

    # -- reading (peer replay source) --------------------------------------------------------

    def read_from(self, from_seq: int, max_bytes: int) -> list[LogRecord] | None:
        """Records from `from_seq` on (at least one), or None if the log lost `from_seq`."""
        if not self.entries or from_seq < self.entries[0].seq:
            return None
        idx = from_seq - self.entries[0].seq
        out: list[LogRecord] = []
        total = 0
        for e in itertools.islice(self.entries, idx, None):
            if out and total + e.data_len > max_bytes:
                break
            raw = os.pread(self._fd, _RHEAD.size + e.data_len, e.pos)
            view = memoryview(raw)
            rec = self._parse(view, 0) if len(raw) == _RHEAD.size + e.data_len else None
            if rec is None or rec.seq != e.seq:
                raise ReplayLogError(f"{self.path}: record seq {e.seq} at {e.pos} is corrupt")
            out.append(rec)
            total += e.data_len
        return out

    def bytes_between(self, from_seq: int, upto_seq: int) -> int:
        if not self.entries:
            return 0
        first = self.entries[0].seq
        lo = max(0, from_seq - first)
        hi = min(len(self.entries), upto_seq - first + 1)
        return sum(e.data_len for e in itertools.islice(self.entries, lo, hi)) if hi > lo else 0

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
