"""Planted bugs, for testing the tester only (`ophiura torture --plant he-...`).

Issue 9 asks that the torture harness be shown to catch a bug in the HE itself, not only the
bugs it was written against. With `OPHIURA_TORTURE_PLANT` set in its environment (the harness
sets it; nothing else should), an HE plants one of these, once, in its data volumes:

- `he-ack-without-send`: the 100th host write is acknowledged but its data never reaches an SE
  (the SEs get a WRITE ZEROES of the same range under the same seq, so the stream stays whole):
  an acknowledged write is lost.
- `he-skip-cache-update`: the first sub-page write after the 50th whose page is cached leaves
  the read cache untouched: the cache serves the old bytes after the ack (stale reads).

The HE logs a loud warning at start when a plant is armed. Unset, this costs one attribute test
per write.
"""

from __future__ import annotations

import logging
import os

log = logging.getLogger(__name__)

PLANT_ENV = "OPHIURA_TORTURE_PLANT"
KINDS = ("he-ack-without-send", "he-skip-cache-update")
DROP_AT = 100  # the host write whose data is dropped
SKIP_AFTER = 50  # writes before the cache update may be skipped


class Plant:
    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.writes = 0
        self.fired = False

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
        if self.kind != "he-ack-without-send" or self.fired or self.writes < DROP_AT:
            return False
        self.fired = True
        log.warning("planted bug: write %d acknowledged without its data", self.writes)
        return True

    def skip_cache(self, sub_page: bool, cached: bool) -> bool:
        """True if this write must leave the read cache as it is."""
        if self.kind != "he-skip-cache-update" or self.fired or self.writes < SKIP_AFTER:
            return False
        if not (sub_page and cached):
            return False
        self.fired = True
        log.warning("planted bug: write %d left the read cache stale", self.writes)
        return True
