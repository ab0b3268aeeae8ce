"""Read cache: LRU bound, write-through in sequence order, no stale fills."""

from __future__ import annotations

from ophiura.replication.he.read_cache import ReadCache


def _fill(c: ReadCache, offset: int, data: bytes, applied: int = 0) -> int:
    """A read miss with nothing racing it."""
    return c.fill(c.begin_read(offset, len(data)), offset, data, applied)


def test_disabled_cache_never_hits() -> None:
    c = ReadCache(0)
    assert _fill(c, 0, b"x" * 4096) == 0
    assert c.lookup(0, 512) is None
    assert c.stats.hits == 0 and len(c) == 0


def test_hit_after_fill_and_lru_eviction() -> None:
    c = ReadCache(2 * 4096)
    _fill(c, 0, b"a" * 4096 + b"b" * 4096)
    assert c.lookup(512, 1024) == b"a" * 1024
    assert c.lookup(4096 - 512, 1024) == b"a" * 512 + b"b" * 512
    c.lookup(0, 512)  # page 0 most recent
    _fill(c, 8192, b"c" * 4096)
    assert c.lookup(4096, 512) is None  # page 1 was the least recently used
    assert c.lookup(0, 512) == b"a" * 512
    assert len(c) == 2


def test_write_updates_full_pages_and_drops_partial() -> None:
    c = ReadCache(1 << 20)
    _fill(c, 0, bytes(8192))
    c.write(1, 0, b"z" * 4096, 4096)
    assert c.lookup(0, 4096) == b"z" * 4096
    c.write(2, 4096 + 512, b"y" * 512, 512)
    assert c.lookup(4096, 512) is None


def test_trim_zeroes_cached_pages() -> None:
    c = ReadCache(1 << 20)
    _fill(c, 0, b"q" * 4096)
    c.write(1, 0, None, 4096)
    assert c.lookup(0, 4096) == bytes(4096)


def test_huge_trim_visits_only_cached_pages() -> None:
    c = ReadCache(1 << 20)
    _fill(c, 0, b"q" * 8192)
    c.write(1, 0, None, 1 << 50)  # a petabyte: must not loop over 2**38 pages
    assert c.lookup(0, 8192) == bytes(8192)
    c.acked(1)


def test_fill_refused_when_a_write_happened_meanwhile() -> None:
    c = ReadCache(1 << 20)
    pending = c.begin_read(0, 4096)
    c.write(1, 0, b"n" * 4096, 4096)  # new data assigned while the read was at the SE
    c.failed(1, 0, 4096)
    assert c.fill(pending, 0, b"o" * 4096, 0) == 0  # the old data must not be planted
    assert c.lookup(0, 4096) is None


def test_sub_page_write_in_flight_spoils_a_neighbour_fill() -> None:
    """Failure 2 on the pure object: write sector 0, read sector 1 of the same page meanwhile;
    the SE answered before applying the write; after the ack the page must not be cached old."""
    c = ReadCache(1 << 20)
    _fill(c, 0, b"o" * 4096)
    c.write(7, 0, b"n" * 512, 512)  # drops page 0
    pending = c.begin_read(0, 4096)  # the read of sector 1 misses, fetches the page
    c.acked(7)  # the ack arrives before the read's answer
    assert c.fill(pending, 0, b"o" * 4096, 6) == 0
    assert c.lookup(0, 512) is None


def test_write_assigned_during_read_spoils_only_its_pages() -> None:
    c = ReadCache(1 << 20)
    pending = c.begin_read(0, 3 * 4096)
    c.write(1, 4096 + 512, b"n" * 512, 512)
    c.acked(1)
    assert c.fill(pending, 0, b"o" * (3 * 4096), 0) == 2
    assert c.lookup(0, 4096) == b"o" * 4096 and c.lookup(4096, 512) is None
    assert c.lookup(8192, 4096) == b"o" * 4096


def test_failed_write_leaves_no_trace_and_spoils_until_the_floor() -> None:
    c = ReadCache(1 << 20)
    c.write(5, 0, b"n" * 4096, 4096)
    assert c.lookup(0, 4096) == b"n" * 4096  # in flight: served (it overlaps the read)
    c.failed(5, 0, 4096)  # cancelled (ABORT TASK) or read-only
    assert c.lookup(0, 4096) is None
    # SEs may still apply it: a fill from one that has not is refused until the floor passes it
    assert _fill(c, 0, b"o" * 4096, applied=4) == 0
    c.settle(5)
    assert _fill(c, 0, b"o" * 4096, applied=4) == 0  # older than the floor
    assert _fill(c, 0, b"n" * 4096, applied=5) == 1
    assert c.lookup(0, 4096) == b"n" * 4096


def test_clear_spoils_reads_in_flight() -> None:
    c = ReadCache(1 << 20)
    pending = c.begin_read(0, 4096)
    c.clear()
    assert c.fill(pending, 0, b"o" * 4096, 0) == 0 and len(c) == 0


def test_unaligned_large_fill_inserts_only_whole_pages_in_place() -> None:
    """A read larger than max_op_bytes is fetched as asked, not page-aligned: its pages must be
    placed by their offset (they were shifted by one sector before)."""
    c = ReadCache(1 << 20)
    data = bytes(range(256)) * 48  # 12 KiB at offset 512: page 1 and 2 whole, 0 and 3 partial
    assert c.fill(c.begin_read(512, len(data)), 512, data, 0) == 2
    assert c.lookup(4096, 8192) == data[4096 - 512 : 4096 - 512 + 8192]
    assert c.lookup(0, 512) is None and c.lookup(12288, 512) is None


def test_page_range_and_hit_ratio() -> None:
    c = ReadCache(1 << 20)
    assert c.page_range(5120, 512, 1 << 20) == (4096, 4096)
    assert c.page_range((1 << 20) - 512, 512, (1 << 20) - 512 + 512) == ((1 << 20) - 4096, 4096)
    c.lookup(0, 512)
    _fill(c, 0, bytes(4096))
    c.lookup(0, 512)
    assert c.stats.hit_ratio == 0.5
