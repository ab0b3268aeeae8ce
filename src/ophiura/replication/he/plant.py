"""Planted bugs, for testing the tester only (`ophiura torture --plant he-...`).

Issue 9 asks that the torture harness be shown to catch a bug in the HE itself, not only the
bugs it was written against. With `OPHIURA_TORTURE_PLANT` set in its environment (the harness
sets it; nothing else should), an HE plants one of these in its data volumes, rarely enough
that the volume keeps working and often enough that a short run meets it (a single one is often
overwritten before anyone looks):

- `he-ack-without-send`: every 100th host write is acknowledged but its data never reaches an
  SE (the SEs get a WRITE ZEROES of the same range under the same seq, so the stream stays
  whole): acknowledged writes are lost.
- `he-skip-cache-update`: every 20th sub-page write whose page is cached leaves the read cache
  untouched: the cache serves the old bytes after the ack (stale reads).

The HE logs a loud warning at start when a plant is armed. Unset, this costs one attribute test
per write.
"""

from __future__ import annotations

import logging
import os

log = logging.getLogger(__name__)

PLANT_ENV = "OPHIURA_TORTURE_PLANT"
KINDS = ("he-ack-without-send", "he-skip-cache-update")
DROP_EVERY = 100  # every this many host writes, one loses its data
SKIP_EVERY = 20  # every this many cached sub-page writes, one skips the cache update


class Plant:
    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.writes = 0
        self.eligible = 0  # cached sub-page writes seen (he-skip-cache-update)
        self.fired = 0

    @classmethod
    def from_env(cls, volume: str) -> Plant | None:
        kind = os.environ.get(PLANT_ENV, "")
        if not kind:
            return None
        if kind not in KINDS:
            log.warning("%s=%r is not an HE plant (%s): ignored", PLANT_ENV, kind, ", ".join(KINDS))
            return None
        log.warning("!!! %s: TEST-ONLY planted bug %s armed (%s) !!!", volume, kind, PLANT_ENV)
        return cls(kind)

    def drop_data(self) -> bool:
        """A host write is being sequenced: True if its data must not reach the SEs."""
        self.writes += 1
        if self.kind != "he-ack-without-send" or self.writes % DROP_EVERY:
            return False
        self.fired += 1
        log.warning("planted bug: write %d acknowledged without its data", self.writes)
        return True

    def skip_cache(self, sub_page: bool, cached: bool) -> bool:
        """True if this write must leave the read cache as it is."""
        if self.kind != "he-skip-cache-update" or not (sub_page and cached):
            return False
        self.eligible += 1
        if self.eligible % SKIP_EVERY:
            return False
        self.fired += 1
        log.warning("planted bug: a cached sub-page write left the read cache stale")
        return True
