"""The HE read cache (StarFish §3, §6.2): LRU of fixed-size pages, bounded in bytes.

Why pages rather than whole requests: host reads of different sizes overlap; a page is the unit
that writes can update or invalidate exactly. Writes update the cache in sequence order (at the
moment the HE assigns the sequence number, before any await), so the cache never holds data
older than the newest write assigned; a failed write invalidates what it had put in. A read-miss
fill is only inserted when no write was assigned while the read was in flight (`generation`),
which is what keeps a slow read from planting stale data.
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


class ReadCache:
    """Pages of `page_size` bytes; `capacity` 0 disables the cache entirely."""

    def __init__(self, capacity: int, page_size: int = 4096) -> None:
        if page_size <= 0 or page_size & (page_size - 1):
            raise ValueError(f"cache page size {page_size} is not a power of two")
        self.page_size = page_size
        self.max_pages = capacity // page_size
        self._pages: OrderedDict[int, bytes] = OrderedDict()
        self.stats = CacheStats()
        self.generation = 0  # bumped by every write/invalidate

    @property
    def enabled(self) -> bool:
        return self.max_pages > 0

    @property
    def used(self) -> int:
        return len(self._pages) * self.page_size

    def __len__(self) -> int:
        return len(self._pages)

    def _span(self, offset: int, length: int) -> range:
        ps = self.page_size
        return range(offset // ps, (offset + length + ps - 1) // ps)

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

    def page_range(self, offset: int, length: int, size: int) -> tuple[int, int]:
        """The page-aligned range to fetch on a miss (clipped to the volume size)."""
        ps = self.page_size
        start = offset // ps * ps
        end = min(size, (offset + length + ps - 1) // ps * ps)
        return start, end - start

    def fill(self, offset: int, data: bytes, generation: int) -> None:
        """Insert a read-miss result fetched starting at page-aligned `offset`."""
        if not self.enabled or generation != self.generation:
            return
        ps = self.page_size
        first = offset // ps
        for i in range(len(data) // ps):
            self._put(first + i, bytes(data[i * ps : (i + 1) * ps]))

    def write(self, offset: int, data: bytes | None, length: int) -> None:
        """A write (data) or zeroing/trim (data None: pages read back as zeros) was assigned."""
        self.generation += 1
        if not self.enabled:
            return
        ps = self.page_size
        for p in self._span(offset, length):
            start, end = p * ps, (p + 1) * ps
            if start >= offset and end <= offset + length:
                page = bytes(ps) if data is None else bytes(data[start - offset : end - offset])
                if p in self._pages or data is not None:
                    self._put(p, page)
            else:
                self._pages.pop(p, None)  # partial page: we do not know the rest

    def invalidate(self, offset: int, length: int) -> None:
        self.generation += 1
        for p in self._span(offset, length):
            self._pages.pop(p, None)

    def clear(self) -> None:
        self.generation += 1
        self._pages.clear()

    def _put(self, page: int, data: bytes) -> None:
        pages = self._pages
        pages[page] = data
        pages.move_to_end(page)
        while len(pages) > self.max_pages:
            pages.popitem(last=False)
