"""The HE read cache (StarFish §3, §6.2): LRU of fixed-size pages, bounded in bytes.

Why pages rather than whole requests: host reads of different sizes overlap; a page is the unit
that writes can update or invalidate exactly.

The invariant (DESIGN.md): a cached page never holds data older than an acknowledged write to
it, whatever the write's size or alignment, and a write that failed or was cancelled leaves no
trace here. Three rules keep it:

- Writes update the cache when the HE assigns their sequence number, in sequence order, before
  any await (`write`): a page the write covers whole gets the new bytes, a page it covers only
  in part is dropped (we do not know the rest). A write that fails or is cancelled drops its
  pages again (`failed`).
- A read miss is registered before it goes to an SE (`begin_read`) and its result inserted only
  for the pages that no write touched while the read was in flight: a write still unacknowledged
  when the read began, or assigned before the read came back, spoils the pages it touches. The
  SE that served the read may not have applied such a write yet (an SE answers a read from its
  data file at once, ahead of a write it admitted just before), and nothing would refresh the
  page when the write is acknowledged.
- A write that failed or was cancelled may still be applied by the SEs it was sent to (or resent
  to on recovery); until every SE that can serve reads holds it (`settle`: the floor), it spoils
  reads of its pages like an unacknowledged one, and a fill whose data is older than the floor
  (the SE's applied seq, sent with the data) is refused.

A write acknowledged before a read began needs no rule here: the read path only asks an SE that
acknowledged it (`BlockSeqMap`) and checks the applied seq the SE returns.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass


@dataclass
class CacheStats:
    hits: int = 0
    misses: int = 0

    @property
    def hit_ratio(self) -> float:
        total = self.hits + self.misses
        return self.hits / total if total else 0.0


class PendingFill:
    """One read miss on its way from an SE: the whole pages it may fill, minus the spoiled ones.

    Spoiled parts are kept as page ranges (clipped to this fill), so a trim of a terabyte costs
    one entry, not one per page."""

    __slots__ = ("end", "first", "spoiled")

    def __init__(self, first: int, end: int) -> None:
        self.first = first
        self.end = end
        self.spoiled: list[tuple[int, int]] = []

    def spoil(self, first: int, end: int) -> None:
        lo, hi = max(first, self.first), min(end, self.end)
        if lo < hi:
            self.spoiled.append((lo, hi))

    def usable(self, page: int) -> bool:
        return all(not lo <= page < hi for lo, hi in self.spoiled)


class ReadCache:
    """Pages of `page_size` bytes; `capacity` 0 disables the cache entirely."""

    def __init__(self, capacity: int, page_size: int = 4096) -> None:
        if page_size <= 0 or page_size & (page_size - 1):
            raise ValueError(f"cache page size {page_size} is not a power of two")
        self.page_size = page_size
        self.max_pages = capacity // page_size
        self._pages: OrderedDict[int, bytes] = OrderedDict()
        self.stats = CacheStats()
        # seq -> pages [first, end) touched, of writes assigned and not yet acknowledged
        self._writing: dict[int, tuple[int, int]] = {}
        # the same for writes that failed or were cancelled and that SEs may still apply
        self._doubtful: dict[int, tuple[int, int]] = {}
        self._reads: set[PendingFill] = set()
        self.floor = 0  # every SE that serves reads holds every write <= floor

    @property
    def enabled(self) -> bool:
        return self.max_pages > 0

    @property
    def used(self) -> int:
        return len(self._pages) * self.page_size

    def __len__(self) -> int:
        return len(self._pages)

    def _span(self, offset: int, length: int) -> range:
        """Pages touched by the byte range (whole or in part)."""
        ps = self.page_size
        return range(offset // ps, (offset + length + ps - 1) // ps)

    # ---- reads ---------------------------------------------------------------------------
    def lookup(self, offset: int, length: int) -> bytes | None:
        """The bytes if every page is cached (a hit), else None (a miss); counts both."""
        if not self.enabled:
            return None
        pages = self._span(offset, length)
        got = []
        for p in pages:
            page = self._pages.get(p)
            if page is None:
                self.stats.misses += 1
                return None
            got.append(page)
        for p in pages:
            self._pages.move_to_end(p)
        self.stats.hits += 1
        start = offset - pages.start * self.page_size
        return b"".join(got)[start : start + length]

    def holds(self, offset: int, length: int) -> bool:
        """Whether any page of the range is cached (no counting, no LRU move)."""
        return any(p in self._pages for p in self._span(offset, length))

    def page_range(self, offset: int, length: int, size: int) -> tuple[int, int]:
        """The page-aligned range to fetch on a miss (clipped to the volume size)."""
        ps = self.page_size
        start = offset // ps * ps
        end = min(size, (offset + length + ps - 1) // ps * ps)
        return start, end - start

    def begin_read(self, offset: int, length: int) -> PendingFill | None:
        """Register a read miss about to fetch `offset`+`length` from an SE (None: nothing it
        could fill). Pages of writes not yet acknowledged (or doubtful) are spoiled at once."""
        if not self.enabled:
            return None
        ps = self.page_size
        first, end = -(-offset // ps), (offset + length) // ps  # whole pages inside the range
        if first >= end:
            return None
        fill = PendingFill(first, end)
        for lo, hi in self._writing.values():
            fill.spoil(lo, hi)
        for lo, hi in self._doubtful.values():
            fill.spoil(lo, hi)
        self._reads.add(fill)
        return fill

    def fill(self, pending: PendingFill | None, offset: int, data: bytes, applied: int) -> int:
        """Insert the result of a registered miss: `data` read at `offset` from an SE that had
        applied every write <= `applied`. Only whole, unspoiled pages go in; the count."""
        if pending is None:
            return 0
        self._reads.discard(pending)
        if not self.enabled or applied < self.floor:
            return 0
        ps = self.page_size
        end = min(pending.end, (offset + len(data)) // ps)
        done = 0
        for p in range(max(pending.first, -(-offset // ps)), end):
            if pending.usable(p):
                start = p * ps - offset
                self._put(p, bytes(data[start : start + ps]))
                done += 1
        return done

    def abandon(self, pending: PendingFill | None) -> None:
        """The registered read failed: it fills nothing."""
        if pending is not None:
            self._reads.discard(pending)

    # ---- writes --------------------------------------------------------------------------
    def write(self, seq: int, offset: int, data: bytes | None, length: int) -> None:
        """Write `seq` (data) or a zeroing/trim (data None: reads back as zeros) was assigned."""
        if not self.enabled:
            return
        span = self._span(offset, length)
        self._writing[seq] = (span.start, span.stop)
        for fill in self._reads:
            fill.spoil(span.start, span.stop)
        ps = self.page_size
        pages = self._pages
        # a trim of the whole volume visits the cached pages, not every page it covers
        touched = (
            span
            if data is not None or len(span) <= len(pages)
            else sorted(p for p in pages if p in span)
        )
        for p in touched:
            start, end = p * ps, (p + 1) * ps
            if start >= offset and end <= offset + length:
                if data is not None:
                    self._put(p, bytes(data[start - offset : end - offset]))
                elif p in pages:
                    self._put(p, bytes(ps))
            else:
                pages.pop(p, None)  # partial page: we do not know the rest

    def acked(self, seq: int) -> None:
        """Write `seq` is acknowledged to the host: its pages may be filled again."""
        self._writing.pop(seq, None)

    def failed(self, seq: int, offset: int, length: int) -> None:
        """Write `seq` failed or was cancelled: drop what it put in; until the floor passes it
        (SEs may still apply it), reads of its pages fill nothing."""
        span = self._writing.pop(seq, None)
        if span is None:
            if not self.enabled:
                return
            s = self._span(offset, length)
            span = (s.start, s.stop)
        if seq > self.floor:
            self._doubtful[seq] = span  # reads in flight were spoiled when it was assigned
        pages = self._pages
        lo, hi = span
        for p in range(lo, hi) if hi - lo <= len(pages) else [p for p in pages if lo <= p < hi]:
            pages.pop(p, None)

    def settle(self, floor: int) -> None:
        """Every SE that serves reads now holds every write <= `floor` (never lowered): failed
        writes up to it stop spoiling fills, and fills of older data are refused."""
        if floor <= self.floor:
            return
        self.floor = floor
        if self._doubtful:
            self._doubtful = {s: r for s, r in self._doubtful.items() if s > floor}

    def clear(self) -> None:
        """Drop every page; reads in flight fill nothing (resize, fencing, close)."""
        self._pages.clear()
        for fill in self._reads:
            fill.spoil(fill.first, fill.end)

    def _put(self, page: int, data: bytes) -> None:
        pages = self._pages
        pages[page] = data
        pages.move_to_end(page)
        while len(pages) > self.max_pages:
            pages.popitem(last=False)
