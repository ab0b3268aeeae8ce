"""Read cache: LRU bound, write-through in sequence order, no stale fills."""

from __future__ import annotations

from ophiura.replication.read_cache import ReadCache


def test_disabled_cache_never_hits() -> None:
    c = ReadCache(0)
    c.fill(0, b"x" * 4096, c.generation)
    assert c.lookup(0, 512) is None
    assert c.stats.hits == 0 and len(c) == 0


def test_hit_after_fill_and_lru_eviction() -> None:
    c = ReadCache(2 * 4096)
    c.fill(0, b"a" * 4096 + b"b" * 4096, c.generation)
    assert c.lookup(512, 1024) == b"a" * 1024
    assert c.lookup(4096 - 512, 1024) == b"a" * 512 + b"b" * 512
    c.lookup(0, 512)  # page 0 most recent
    c.fill(8192, b"c" * 4096, c.generation)
    assert c.lookup(4096, 512) is None  # page 1 was the least recently used
    assert c.lookup(0, 512) == b"a" * 512
    assert len(c) == 2


def test_write_updates_full_pages_and_drops_partial() -> None:
    c = ReadCache(1 << 20)
    c.fill(0, bytes(8192), c.generation)
    c.write(0, b"z" * 4096, 4096)
    assert c.lookup(0, 4096) == b"z" * 4096
    c.write(4096 + 512, b"y" * 512, 512)
    assert c.lookup(4096, 512) is None


def test_trim_zeroes_cached_pages() -> None:
    c = ReadCache(1 << 20)
    c.fill(0, b"q" * 4096, c.generation)
    c.write(0, None, 4096)
    assert c.lookup(0, 4096) == bytes(4096)


def test_fill_refused_when_a_write_happened_meanwhile() -> None:
    c = ReadCache(1 << 20)
    gen = c.generation
    c.write(0, b"n" * 4096, 4096)  # new data assigned while the read was at the SE
    c.invalidate(0, 4096)
    c.fill(0, b"o" * 4096, gen)  # the old data must not be planted
    assert c.lookup(0, 4096) is None


def test_page_range_and_hit_ratio() -> None:
    c = ReadCache(1 << 20)
    assert c.page_range(5120, 512, 1 << 20) == (4096, 4096)
    assert c.page_range((1 << 20) - 512, 512, (1 << 20) - 512 + 512) == ((1 << 20) - 4096, 4096)
    c.lookup(0, 512)
    c.fill(0, bytes(4096), c.generation)
    c.lookup(0, 512)
    assert c.stats.hit_ratio == 0.5
